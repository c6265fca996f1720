// The backend a standalone bench tool runs on, from its --device flag: "cpu", or "cuda" when
// the tool was built with the CUDA backend (STATELM_WITH_CUDA). The statelm CLI has its own,
// richer parser (cli_util.h: cuda:N, threads); the bench tools need only these two.
#pragma once

#include <memory>
#include <string>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#ifdef STATELM_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace statelm::bench {

inline std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return std::make_unique<CpuBackend>();
#ifdef STATELM_WITH_CUDA
  if (device == "cuda") return std::make_unique<CudaBackend>();
#endif
  fail(ErrorKind::InvalidArgument, "--device ", device, ": not available in this build");
}

}  // namespace statelm::bench
