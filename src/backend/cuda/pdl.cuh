// Programmatic dependent launch (sm_90): lets a decode step's weight-streaming GEMM start before
// the small kernel ahead of it has finished.
//
// A kernel launched with launch_programmatic() may begin while the previous kernel on its stream
// still runs: once every block of that kernel has called pdl_allow_dependents() (or exited). The
// dependent kernel may, before pdl_wait(), only read memory no earlier kernel writes (weights);
// pdl_wait() returns when the previous kernel has completed and its writes are visible. Kernels
// launched the ordinary way wait for everything before them as usual, and pdl_wait() returns at
// once in them, so both instructions are harmless where no dependent launch is involved.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace statelm::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Called early by the small row kernels (norms, activations) that precede linear layers.
__device__ __forceinline__ void pdl_allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, 0, stream>>>(args...) as a programmatic dependent launch.
template <typename... Params, typename... Args>
cudaError_t launch_programmatic(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                                Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace statelm::cuda
