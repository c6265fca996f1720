// Typed errors for everything a user can get wrong.
//
// Every user-facing failure names what is at fault: the file, the tensor, the config key or
// the request field. Callers build the message with str_cat so that no formatting library is
// needed on the host compilers we support (g++ 12 lacks <format>).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace statelm {

enum class ErrorKind {
  InvalidArgument,  // a flag, a request field or an API argument is wrong
  Io,               // a file cannot be opened / read / mapped
  Format,           // a file is malformed (safetensors, config.json, tokenizer.json, blob)
  Unsupported,      // well-formed but not something statelm implements (model_type, dtype)
  OutOfMemory,      // a budget or planner refused an allocation (now: it may fit later)
  TooLarge,         // a request that can never fit this engine's memory, however idle it is
  Internal,         // a bug: an invariant statelm itself broke
};

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

template <typename... Parts>
std::string str_cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

template <typename... Parts>
[[noreturn]] void fail(ErrorKind kind, Parts&&... parts) {
  throw Error(kind, str_cat(std::forward<Parts>(parts)...));
}

// Checks an invariant of statelm itself (not of user input): failure is a bug.
#define STATELM_CHECK(cond, ...)                                                        \
  do {                                                                                  \
    if (!(cond))                                                                        \
      ::statelm::fail(::statelm::ErrorKind::Internal, __FILE__, ":", __LINE__, ": ",    \
                      "check failed: " #cond " ", ##__VA_ARGS__);                      \
  } while (0)

}  // namespace statelm
