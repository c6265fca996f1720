// Warp specialisation on Hopper (sm_90): shared-memory barriers (mbarrier) between the warps
// that copy a ring of tiles and the warps that compute on them, and the register hand-over
// between warpgroups (setmaxnreg). attention_prefill.cu's copying warpgroup signals a stage's
// "full" barrier when its cp.async copies have landed; the computing warps signal "empty" when no
// product reads the stage any more. A barrier counts arrivals per phase; use k of a barrier
// completes phase k, and a waiter names the phase by its parity (k % 2).
#pragma once

#include <cstdint>

#include "backend/cuda/mma.cuh"

namespace statelm::cuda::mbar {

using mma::smem_addr;

// One thread, before the block synchronises: a barrier whose phases end after `arrivals` arrivals.
__device__ __forceinline__ void init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
}
// The same thread, after its inits: they are visible to the other threads (and to the copy
// units' arrivals) once the block has synchronised.
__device__ __forceinline__ void publish_inits() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Arrives once all of this thread's earlier cp.async copies have landed (counted in the init).
__device__ __forceinline__ void arrive_copies(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Waits until the barrier's phase of this parity (use k of the barrier completes phase k) is over.
__device__ __forceinline__ void wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
}
// Hands registers between warpgroups: the copying one needs few, the computing ones many.
template <int N>
__device__ __forceinline__ void shrink_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void grow_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

}  // namespace statelm::cuda::mbar
