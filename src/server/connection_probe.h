// Whether the client of a request still holds its connection, for a non-streamed request that
// waits on the model with nothing to write yet. cpp-httplib 0.11 gives a handler neither the
// socket nor an is_connection_closed(), so the probe finds the accepted socket by the
// request's TCP four-tuple (local and remote address and port, unique among open sockets),
// once, among this process's descriptors. The socket stays open while the handler runs, so the
// descriptor cannot be reused under it.
#pragma once

#include <string>

namespace statelm::server {

class ConnectionProbe {
 public:
  ConnectionProbe() = default;  // knows no socket: never reports a hang-up
  static ConnectionProbe find(const std::string& local_addr, int local_port, const std::string& remote_addr,
                              int remote_port);

  bool found() const { return fd_ >= 0; }
  // True once the peer closed or reset the connection. Bytes the client sent meanwhile (a
  // pipelined request) are left unread.
  bool peer_gone() const;

 private:
  int fd_ = -1;
};

}  // namespace statelm::server
