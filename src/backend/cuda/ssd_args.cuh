// What the Mamba-2 SSD kernels share (ssd.cu: the launcher, cumsum, state passing and decode;
// ssd_chunks_f32.cu and ssd_chunks_mma.cu: the chunk products on fp32 CUDA cores and on bf16
// tensor cores): the argument block, dt, and a chunk's place in the flat batch. The algorithm is
// described at the top of ssd.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda::ssd_detail {

template <typename T>
struct SsdArgs {
  const T *x, *dt, *B, *C;
  T* out;
  Param dt_bias, A, D;
  int64_t xs0, xs1, dts, Bs0, Bs1, Cs0, Cs1, os0, os1;
  int H, P, G, N, Q;
  float dt_min, dt_max;
  bool dt_limited;
  // Whether rows of x, B, C (every token, head and group) start on 16 bytes: the tensor-core
  // kernels then stage them with 16-byte loads.
  bool x_vec16, B_vec16, C_vec16;
  // Scratch of the chunked path, per chunk c: dtc[c][h][Q], cs[c][h][Q] (double), cs2 and w [c][h][Q],
  // cb[c][g][Q][Q], st[c][h][P][N] (S_loc after stage 3; S_in after stage 4 on the fp32 path).
  float* dtc;
  double* cs;
  // Per chunk and head, for the tensor-core path: cs in float and base-2 units (cs · log2 e: a
  // decay is one exp2f of a difference; float is ample next to bf16 operands), and the weight of
  // token j in the chunk's own state, w_j = e^{cs_{L−1} − cs_j} dt_j (from the double cs).
  float* cs2;
  float* w;
  // C Bᵀ in the activation type: fp32 on the fp32 path (float activations), bf16 on the
  // tensor-core path (bf16 activations), where it is only ever an operand.
  T* cb;
  float* st;
  // Tensor-core path: stage 4 writes S_in here in bf16 (the operand stage 5 multiplies), and st
  // keeps S_loc. Null on the fp32 path.
  bf16* st_in16;
  // SsdGate (null z: none): out = y · silu(z) · gate_w; the decode kernel writes the sum of
  // squares of y · silu(z) over its rows into sumsq[t · sumsq_ld + h · gridDim.z + blockIdx.z].
  const T* z;
  int64_t zs;
  const float* gate_w;
  float* sumsq;
  int64_t sumsq_ld;
};

// dt from its raw input and the head's bias (split from dt_of for kernels that batch the loads).
template <typename T>
__device__ __forceinline__ float dt_from_raw(const SsdArgs<T>& a, float raw, float bias) {
  float v = softplus(raw + bias);
  if (a.dt_limited) v = fminf(fmaxf(v, a.dt_min), a.dt_max);
  return v;
}

template <typename T>
__device__ __forceinline__ float dt_of(const SsdArgs<T>& a, int64_t t, int h) {
  return dt_from_raw(a, to_f32(a.dt[t * a.dts + h]), a.dt_bias.get(h, 0.0f));
}

// A chunk's place: tokens [t0, t0 + L) of the flat batch, of span `span`.
struct Chunk {
  int span;
  int64_t t0;
  int L;
};

__device__ __forceinline__ Chunk chunk_of(const SpanItems& items, int chunk) {
  const ItemRef it = find_item(items, chunk);
  const SeqSpan sp = items.spans[it.span];
  const int off = it.piece * items.per_item;
  return {it.span, int64_t(sp.start) + off, min(items.per_item, sp.len - off)};
}

// Stages 2 + 3 (C Bᵀ per chunk and group, S_loc per chunk and head) and stage 5 (the outputs),
// on fp32 CUDA cores (float activations: the exact path) ...
void chunk_states_f32(const SsdArgs<float>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream);
void chunk_outputs_f32(const SsdArgs<float>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream);
// ... and on bf16 tensor cores with fp32 accumulation (bf16 activations).
void chunk_states_mma(const SsdArgs<bf16>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream);
void chunk_outputs_mma(const SsdArgs<bf16>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream);

}  // namespace statelm::cuda::ssd_detail
