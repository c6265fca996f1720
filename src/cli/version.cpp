#include "cli/version.h"

#include "core/error.h"

namespace statelm::cli {

std::string version_string() {
#ifdef STATELM_WITH_CUDA
  const char* cuda = "yes (sm_90a)";
#else
  const char* cuda = "no";
#endif
  return str_cat("statelm ", STATELM_VERSION, " (CUDA backend: ", cuda, ")");
}

}  // namespace statelm::cli
