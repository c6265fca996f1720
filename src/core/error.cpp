#include "core/error.h"

namespace statelm {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return "invalid argument";
    case ErrorKind::Io: return "i/o error";
    case ErrorKind::Format: return "format error";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::OutOfMemory: return "out of memory";
    case ErrorKind::TooLarge: return "too large";
    case ErrorKind::Internal: return "internal error";
  }
  return "error";
}

}  // namespace statelm
