// Minimal leveled logging to stderr: "statelm: warning: ...". The server adds request ids in
// its own messages; this is for the engine's few notices (settings clamped to fit, etc.).
#pragma once

#include <cstdio>
#include <string>

#include "core/error.h"

namespace statelm {

enum class LogLevel { Debug, Info, Warning, Error };

// Messages below this level are dropped (default Info; STATELM_LOG=debug|info|warning|error).
LogLevel log_threshold();
void log_message(LogLevel level, const std::string& message);

template <typename... Parts>
void log_warning(Parts&&... parts) {
  log_message(LogLevel::Warning, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_error(Parts&&... parts) {
  log_message(LogLevel::Error, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_info(Parts&&... parts) {
  log_message(LogLevel::Info, str_cat(std::forward<Parts>(parts)...));
}

}  // namespace statelm
