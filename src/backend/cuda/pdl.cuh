// Programmatic dependent launch (sm_90): lets a decode step's weight-streaming GEMM start before
// the small kernel ahead of it has finished.
//
// A kernel launched with launch_programmatic() may begin while the previous kernel on its stream
// still runs: once every block of that kernel has called pdl_allow_dependents() (or exited). The
// dependent kernel may, before pdl_wait(), only read memory that no kernel of the current chain
// writes: weights, or what an earlier decode step wrote (the KV cache rows before the new
// position, which attention decode streams early: every step starts with a kernel launched the
// ordinary way, the embedding, so earlier steps have completed). pdl_wait() returns when the
// previous kernel has completed and its writes are visible. Kernels launched the ordinary way
// wait for everything before them as usual, and pdl_wait() returns at once in them, so both
// instructions are harmless where no dependent launch is involved.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
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

// The launch attribute of thread-block clusters of `cluster` blocks.
inline cudaLaunchAttribute cluster_dims(dim3 cluster) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = cluster.x;
  attr.val.clusterDim.y = cluster.y;
  attr.val.clusterDim.z = cluster.z;
  return attr;
}
// kernel<<<grid, block, smem, stream>>>(args...) in thread-block clusters of `cluster` blocks
// (1 × 1 × 1: none), as a programmatic dependent launch when `allow`.
template <typename... Params, typename... Args>
cudaError_t launch_clusters_pdl_if(dim3 cluster, bool allow, void (*kernel)(Params...), dim3 grid, dim3 block,
                                   size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attrs[2]{};
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = allow ? 1 : 0;
  attrs[1] = cluster_dims(cluster);
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = cluster.x * cluster.y * cluster.z > 1 ? 2 : 1;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when `allow`.
template <typename... Params, typename... Args>
cudaError_t launch_pdl_if_smem(bool allow, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                               cudaStream_t stream, Args&&... args) {
  return launch_clusters_pdl_if(dim3(1, 1, 1), allow, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

// The same without dynamic shared memory.
template <typename... Params, typename... Args>
cudaError_t launch_pdl_if(bool allow, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                          Args&&... args) {
  return launch_pdl_if_smem(allow, kernel, grid, block, 0, stream, std::forward<Args>(args)...);
}

// kernel<<<grid, block, 0, stream>>>(args...) as a programmatic dependent launch.
template <typename... Params, typename... Args>
cudaError_t launch_programmatic(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                                Args&&... args) {
  return launch_pdl_if(true, kernel, grid, block, stream, std::forward<Args>(args)...);
}

// A switch that is on unless the environment sets it to a value starting with '0'.
inline bool env_switch(const char* name) {
  const char* v = std::getenv(name);
  return !(v && v[0] == '0');
}

// Whether the small kernels between a decode step's linear layers (conv1d, the SSD decode kernel,
// add_rms_norm, rope, swiglu, the attention decode merge) launch as programmatic dependents too:
// each is then resident and waiting when the kernel ahead ends, and what it may read early (the
// SSD's state, the conv window) is in flight before that. The attention decode kernel itself
// launches the ordinary way (attention_decode.cu says why). STATELM_PDL_CHAIN=0 turns it
// off (read once; for A/B measurements).
inline bool pdl_chain() {
  static const bool on = env_switch("STATELM_PDL_CHAIN");
  return on;
}

// Whether the weight-streaming GEMM lets the next kernel launch as soon as its blocks have
// started, rather than when its last block exits: the kernel after it is then resident and has
// its own early loads in flight when the GEMM ends. Measured on the H200 with pdl_chain: Mamba-2
// 2.7B decode b1 2.31 → 2.20 ms; Llama 2.5B at 2K context 2.33 → 2.35 (its rope and swiglu were
// not chained then). STATELM_PDL_GEMM_TRIGGER=0 turns it off.
inline bool pdl_gemm_trigger() {
  static const bool on = env_switch("STATELM_PDL_GEMM_TRIGGER");
  return on;
}

}  // namespace statelm::cuda
