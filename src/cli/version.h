#pragma once
#include <string>

namespace statelm::cli {
// "statelm 0.1.0 (CUDA backend: yes, sm_90a)" — what this binary was built with.
std::string version_string();
}  // namespace statelm::cli
