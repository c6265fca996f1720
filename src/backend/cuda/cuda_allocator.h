// A caching allocator for device memory: plain cudaMalloc (never managed memory), with freed
// blocks kept on per-size-class free lists and handed out again without a cudaMalloc/cudaFree
// (both synchronise the whole device). Forward scratch, MoE intermediates and launcher scratch
// are allocated and freed at every step, so this is what keeps a step free of host syncs.
//
// Size classes: requests up to 1 MiB round up to a power of two (at least 512 B); larger ones to
// a multiple of 2 MiB. A block is reused only for its own class, so no block is split and a
// freed block is whole again at once. When cudaMalloc fails, the cached free blocks are released
// and the allocation is tried once more before Error(OutOfMemory).
//
// Reuse is stream-ordered: a block freed while kernels that use it are still queued is handed
// to the next allocation at once, which is safe because statelm queues all device work of a
// device on one stream (CudaBackend's); work on another stream must synchronise first.
//
// One allocator per process, shared by every CudaBackend: Buffer's deleter is a plain function,
// so it finds the allocator through this global. It is never destroyed (buffers may outlive
// static destruction order).
#pragma once

#include <cstddef>

#include "core/tensor.h"

namespace statelm::cuda {

struct AllocatorStats {
  size_t in_use = 0;       // bytes of live blocks (rounded to their size class)
  size_t peak_in_use = 0;  // the most in_use ever was
  size_t cached = 0;       // bytes of free blocks kept for reuse
  size_t device_allocs = 0, device_frees = 0;  // cudaMalloc / cudaFree calls so far
};

// Uninitialised device memory of at least `bytes` bytes on `device`, in a Buffer whose deleter
// returns it to the cache. Callers that need zeros clear it on their stream.
Buffer device_alloc(int device, size_t bytes);
// The bytes device_alloc(device, bytes) takes: its size class (what the memory planner counts
// per allocation on CUDA, runtime/memory_plan.h).
size_t allocation_size(size_t bytes);

AllocatorStats allocator_stats(int device);
// Gives every cached free block of `device` back to the driver (cudaFree).
void release_cached(int device);

}  // namespace statelm::cuda
