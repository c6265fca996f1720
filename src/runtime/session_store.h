// SessionStore: conversations persisted as snapshot blobs (runtime/snapshot.h), so that the next
// turn of a conversation only prefills its new tokens. One SQLite file in WAL mode (readers do
// not block the writer: a server and a CLI can share it); the blobs are already zstd frames.
//
//   sessions(id TEXT PRIMARY KEY, model TEXT, n_tokens INTEGER, blob BLOB,
//            created_ms INTEGER, updated_ms INTEGER)     -- unix milliseconds
//
// Thread-safe (calls are serialised). All SQL runs as prepared statements with bound parameters: a session id is data, never SQL.
// Every error names the database file and, where there is one, the session.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace statelm {

struct SessionInfo {
  std::string id;
  std::string model;      // fingerprint of the model whose state the blob holds
  int64_t n_tokens = 0;   // positions in the stored state
  int64_t blob_bytes = 0;
  int64_t created_ms = 0, updated_ms = 0;
};

class SessionStore {
 public:
  // Opens (creating it and its folder if needed) the database at `path`. Error(Io) when it
  // cannot be opened or is not a statelm session database.
  explicit SessionStore(const std::string& path);
  ~SessionStore();
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  const std::string& path() const { return path_; }

  // Creates or replaces session `id` with a snapshot blob (model and n_tokens are read from
  // its header; Error(Format) when it is not a snapshot). Keeps created_ms on replace.
  void put(const std::string& id, std::string_view blob);
  // The session's blob, or nullopt when there is no such session.
  std::optional<std::string> get(const std::string& id);
  // Copies session `src` to a new session `dst`: two independent continuations of one state.
  // Error(InvalidArgument) when src does not exist or dst does.
  void fork(const std::string& src, const std::string& dst);
  // Deletes the session; false when there was none.
  bool remove(const std::string& id);
  std::optional<SessionInfo> info(const std::string& id);
  // Every session, most recently updated first.
  std::vector<SessionInfo> list();

  // SQLite's journal mode ("wal"), for checks.
  std::string journal_mode();

 private:
  class Statement;  // a prepared statement whose errors name this database and a session
  void exec(const char* sql);

  std::string path_;
  sqlite3* db_ = nullptr;
  std::mutex mutex_;  // one statement at a time: sqlite3_changes() must be our statement's
};

// The default database: $XDG_DATA_HOME/statelm/sessions.db, else ~/.local/share/statelm/sessions.db.
// Error(InvalidArgument) when neither XDG_DATA_HOME nor HOME is set.
std::string default_sessions_db_path();

}  // namespace statelm
