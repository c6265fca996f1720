// SessionStore over the sqlite3 C API (schema and guarantees in session_store.h).
#include "runtime/session_store.h"

#include <sqlite3.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "core/error.h"
#include "runtime/snapshot.h"

namespace statelm {

namespace {

constexpr int kSchemaVersion = 1;       // PRAGMA user_version of a statelm session database
constexpr size_t kMaxIdBytes = 256;
constexpr int kBusyTimeoutMs = 5000;    // another process writing: wait, do not fail at once

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

class SessionStore::Statement {
 public:
  // `id` is the session the statement is about (empty: none), for error messages.
  Statement(SessionStore& store, const char* sql, std::string_view id = {}) : store_(store), id_(id) {
    check(sqlite3_prepare_v2(store.db_, sql, -1, &stmt_, nullptr), "prepare");
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Values are bound SQLITE_STATIC: the caller's strings outlive the statement's steps.
  Statement& text(int i, std::string_view v) {
    check(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8), "bind");
    return *this;
  }
  Statement& integer(int i, int64_t v) {
    check(sqlite3_bind_int64(stmt_, i, v), "bind");
    return *this;
  }
  Statement& blob(int i, std::string_view v) {
    check(sqlite3_bind_blob64(stmt_, i, v.data(), v.size(), SQLITE_STATIC), "bind");
    return *this;
  }

  // One step: SQLITE_ROW or SQLITE_DONE; other codes are returned for the caller to judge.
  int step_rc() { return sqlite3_step(stmt_); }
  // true when a row is ready, false when done; any error throws.
  bool step() {
    const int rc = step_rc();
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) check(rc, "step");
    return rc == SQLITE_ROW;
  }

  int64_t column_int(int i) { return sqlite3_column_int64(stmt_, i); }
  std::string column_text(int i) {
    const auto* p = sqlite3_column_text(stmt_, i);
    return p ? std::string(reinterpret_cast<const char*>(p), size_t(sqlite3_column_bytes(stmt_, i))) : std::string();
  }
  std::string column_blob(int i) {
    const void* p = sqlite3_column_blob(stmt_, i);  // before column_bytes, as SQLite asks
    return p ? std::string(static_cast<const char*>(p), size_t(sqlite3_column_bytes(stmt_, i))) : std::string();
  }

  [[noreturn]] void fail_with(ErrorKind kind, const std::string& what) {
    fail(kind, store_.path_, id_.empty() ? std::string() : str_cat(": session \"", id_, "\""), ": ", what);
  }

 private:
  void check(int rc, const char* what) {
    if (rc == SQLITE_OK) return;
    fail_with(ErrorKind::Io, str_cat(what, ": ", sqlite3_errmsg(store_.db_)));
  }

  SessionStore& store_;
  std::string id_;
  sqlite3_stmt* stmt_ = nullptr;
};

namespace {

void check_id(const std::string& path, const std::string& id) {
  if (id.empty() || id.size() > kMaxIdBytes)
    fail(ErrorKind::InvalidArgument, path, ": session id \"", id, "\" must be 1 to ", kMaxIdBytes, " bytes");
}

}  // namespace

SessionStore::SessionStore(const std::string& path) : path_(path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) fail(ErrorKind::Io, path, ": cannot create the folder ", parent.string(), ": ", ec.message());
  const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    const std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close(db_);
    db_ = nullptr;
    fail(ErrorKind::Io, path, ": cannot open the session database: ", why);
  }
  try {
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
    const int64_t schema = [&] {  // each statement finalised at once: an open one is a transaction
      Statement version(*this, "PRAGMA user_version");
      version.step();
      return version.column_int(0);
    }();
    if (schema > kSchemaVersion)
      fail(ErrorKind::Unsupported, path, ": session database of schema ", schema, ", newer than this statelm's ",
           kSchemaVersion);
    // WAL: one writer and many readers at once; NORMAL sync is durable except for the last
    // commits on power loss, which costs a conversation turn at worst.
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=NORMAL");
    exec("CREATE TABLE IF NOT EXISTS sessions ("
         " id TEXT PRIMARY KEY NOT NULL, model TEXT NOT NULL, n_tokens INTEGER NOT NULL, blob BLOB NOT NULL,"
         " created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)");
    if (schema == 0) exec("PRAGMA user_version=1");
  } catch (...) {
    sqlite3_close(db_);
    throw;
  }
}

SessionStore::~SessionStore() { sqlite3_close(db_); }

void SessionStore::exec(const char* sql) {
  Statement st(*this, sql);
  while (st.step()) {
  }
}

std::string SessionStore::journal_mode() {
  std::lock_guard lock(mutex_);
  Statement st(*this, "PRAGMA journal_mode");
  st.step();
  return st.column_text(0);
}

void SessionStore::put(const std::string& id, std::string_view blob) {
  std::lock_guard lock(mutex_);
  check_id(path_, id);
  SnapshotHeader h;
  try {
    h = read_snapshot_header(blob);
  } catch (const Error& e) {
    fail(e.kind(), path_, ": session \"", id, "\": ", e.what());
  }
  const int64_t now = now_ms();
  Statement st(*this,
               "INSERT INTO sessions (id, model, n_tokens, blob, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)"
               " ON CONFLICT (id) DO UPDATE SET model = excluded.model, n_tokens = excluded.n_tokens,"
               " blob = excluded.blob, updated_ms = excluded.updated_ms",
               id);
  st.text(1, id).text(2, h.fingerprint).integer(3, h.n_tokens).blob(4, blob).integer(5, now);
  st.step();
}

std::optional<std::string> SessionStore::get(const std::string& id) {
  std::lock_guard lock(mutex_);
  check_id(path_, id);
  Statement st(*this, "SELECT blob FROM sessions WHERE id = ?1", id);
  st.text(1, id);
  if (!st.step()) return std::nullopt;
  return st.column_blob(0);
}

void SessionStore::fork(const std::string& src, const std::string& dst) {
  std::lock_guard lock(mutex_);
  check_id(path_, src);
  check_id(path_, dst);
  Statement st(*this,
               "INSERT INTO sessions (id, model, n_tokens, blob, created_ms, updated_ms)"
               " SELECT ?1, model, n_tokens, blob, ?2, ?2 FROM sessions WHERE id = ?3",
               src);
  st.text(1, dst).integer(2, now_ms()).text(3, src);
  const int rc = st.step_rc();
  if ((rc & 0xff) == SQLITE_CONSTRAINT)
    st.fail_with(ErrorKind::InvalidArgument, str_cat("cannot fork to \"", dst, "\": that session already exists"));
  if (rc != SQLITE_DONE) st.step();  // reports the error
  if (sqlite3_changes(db_) == 0) st.fail_with(ErrorKind::InvalidArgument, "cannot fork: no such session");
}

bool SessionStore::remove(const std::string& id) {
  std::lock_guard lock(mutex_);
  check_id(path_, id);
  Statement st(*this, "DELETE FROM sessions WHERE id = ?1", id);
  st.text(1, id);
  st.step();
  return sqlite3_changes(db_) > 0;
}

namespace {
constexpr const char* kInfoColumns = "SELECT id, model, n_tokens, length(blob), created_ms, updated_ms FROM sessions";
}  // namespace

std::optional<SessionInfo> SessionStore::info(const std::string& id) {
  std::lock_guard lock(mutex_);
  check_id(path_, id);
  Statement st(*this, str_cat(kInfoColumns, " WHERE id = ?1").c_str(), id);
  st.text(1, id);
  if (!st.step()) return std::nullopt;
  return SessionInfo{st.column_text(0), st.column_text(1), st.column_int(2), st.column_int(3), st.column_int(4),
                     st.column_int(5)};
}

std::vector<SessionInfo> SessionStore::list() {
  std::lock_guard lock(mutex_);
  Statement st(*this, str_cat(kInfoColumns, " ORDER BY updated_ms DESC, id").c_str());
  std::vector<SessionInfo> out;
  while (st.step())
    out.push_back(SessionInfo{st.column_text(0), st.column_text(1), st.column_int(2), st.column_int(3),
                              st.column_int(4), st.column_int(5)});
  return out;
}

std::string default_sessions_db_path() {
  const char* xdg = std::getenv("XDG_DATA_HOME");
  // The XDG spec ignores relative paths here.
  if (xdg && xdg[0] == '/') return (std::filesystem::path(xdg) / "statelm" / "sessions.db").string();
  const char* home = std::getenv("HOME");
  if (!home || !home[0])
    fail(ErrorKind::InvalidArgument, "no session database: set XDG_DATA_HOME or HOME, or pass --sessions-db PATH");
  return (std::filesystem::path(home) / ".local" / "share" / "statelm" / "sessions.db").string();
}

}  // namespace statelm
