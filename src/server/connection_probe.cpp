#include "server/connection_probe.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>

namespace statelm::server {

namespace {

// "ip", port of a socket address (IPv4 or IPv6, as httplib prints them).
bool address(const sockaddr_storage& a, std::string& ip, int& port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &in.sin_addr, buf, sizeof buf);
    port = ntohs(in.sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    inet_ntop(AF_INET6, &in6.sin6_addr, buf, sizeof buf);
    port = ntohs(in6.sin6_port);
  } else {
    return false;
  }
  ip = buf;
  return true;
}

}  // namespace

ConnectionProbe ConnectionProbe::find(const std::string& local_addr, int local_port, const std::string& remote_addr,
                                      int remote_port) {
  ConnectionProbe p;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return p;
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    sockaddr_storage peer{}, self{};
    socklen_t peer_len = sizeof peer, self_len = sizeof self;
    if (getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&self), &self_len) != 0) continue;
    std::string pip, sip;
    int pport = 0, sport = 0;
    if (address(peer, pip, pport) && address(self, sip, sport) && pport == remote_port && sport == local_port &&
        pip == remote_addr && sip == local_addr) {
      p.fd_ = int(fd);
      break;
    }
  }
  closedir(dir);
  return p;
}

bool ConnectionProbe::peer_gone() const {
  if (fd_ < 0) return false;
  // POLLRDHUP: the peer closed (or shut down its sending side) even if bytes it sent before are
  // still unread. An HTTP client that half-closes and still waits for its answer is treated as
  // gone; none of the common ones do.
  pollfd pfd{fd_, POLLIN | POLLRDHUP, 0};
  if (poll(&pfd, 1, 0) <= 0) return false;
  if (pfd.revents & (POLLRDHUP | POLLERR | POLLHUP | POLLNVAL)) return true;
  char byte;
  // Readable: either data (a pipelined request: still there) or the end of the stream.
  return recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

}  // namespace statelm::server
