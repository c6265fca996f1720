#include "core/log.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace statelm {

LogLevel log_threshold() {
  static const LogLevel level = [] {
    const char* e = std::getenv("STATELM_LOG");
    if (!e) return LogLevel::Info;
    if (!std::strcmp(e, "debug")) return LogLevel::Debug;
    if (!std::strcmp(e, "warning")) return LogLevel::Warning;
    if (!std::strcmp(e, "error")) return LogLevel::Error;
    return LogLevel::Info;
  }();
  return level;
}

void log_message(LogLevel level, const std::string& message) {
  if (level < log_threshold()) return;
  static std::mutex mu;  // whole lines, even from several threads
  static const char* names[] = {"debug", "info", "warning", "error"};
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "statelm: %s: %s\n", names[int(level)], message.c_str());
}

}  // namespace statelm
