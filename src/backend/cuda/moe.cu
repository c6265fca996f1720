// Mixture of SwiGLU experts on CUDA (Jamba; Mixtral with renormalize), as the CPU backend and
// transformers compute it:
//   p[t, :] = softmax(x[t] Rᵀ)                          (fp32 logits straight from the GEMM)
//   S_t     = the top_k experts by p[t, e], ties to the lower index (torch.topk)
//   w[t, e] = p[t, e]  (or p[t, e] / Σ_{e' in S_t} p[t, e'] when renormalize)
//   out[t]  = Σ_{e in S_t} w[t, e] · down_e(silu(gate_e x[t]) ⊙ up_e x[t])
//
// Grouped by expert, so each expert runs one GEMM over all of its tokens (not one per token):
//   1. route     one thread per token: softmax + top-k; counts[e] += 1 per pick (atomics)
//   2. scan      offsets[e] = Σ_{e' < e} counts[e']
//   3. permute   pick a = (t, j) goes to row pos[a] = offsets[e] + (its rank among e's picks);
//                x[t] is gathered into Xp[pos[a]]: each expert's tokens are now contiguous rows
//   4. read back the E counts (the one host sync of the call: cuBLASLt takes sizes on the host)
//   5. experts   per expert with tokens: H = Xp_e gate_upᵀ_e; A = swiglu(H) (one launch for all
//                rows); Y_e = A_e downᵀ_e, Y in fp32
//   6. combine   one block per token: out[t] = Σ_j w[t, j] · Y[pos[t, j]], the picks summed in
//                expert order (as the CPU does), no atomics: deterministic given the rows.
// The rank inside an expert's group comes from an atomic counter, so which row a pick lands in
// varies between runs; its values do not (each GEMM row is computed on its own).
// A grouped GEMM (one launch for all experts, sizes read on the device) would remove step 4's
// sync and the per-expert launches; this is the straightforward first version.
#include <vector>

#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_common.h"

namespace statelm::cuda {

namespace {

constexpr int kMaxTopK = 16;

__global__ void route_kernel(const float* __restrict__ logits, int64_t T, int E, int k, bool renormalize,
                             int32_t* __restrict__ expert, float* __restrict__ weight, int32_t* counts) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  const float* l = logits + t * E;
  float mx = l[0];
  for (int e = 1; e < E; ++e) mx = fmaxf(mx, l[e]);
  float sum = 0.0f;
  for (int e = 0; e < E; ++e) sum += expf(l[e] - mx);
  // Top-k by repeated arg-max over the (monotone) exponentials; `taken` is a bit set of experts.
  uint32_t taken[8] = {};  // E <= 256
  int ids[kMaxTopK];
  float ps[kMaxTopK];
  float picked = 0.0f;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    float best_v = 0.0f;
    for (int e = 0; e < E; ++e) {
      if (taken[e >> 5] >> (e & 31) & 1u) continue;
      const float v = l[e];
      if (best < 0 || v > best_v) best = e, best_v = v;  // strict: ties keep the lower index
    }
    taken[best >> 5] |= 1u << (best & 31);
    ids[j] = best;
    ps[j] = expf(best_v - mx) / sum;
    picked += ps[j];
  }
  for (int j = 0; j < k; ++j) {
    expert[t * k + j] = ids[j];
    weight[t * k + j] = renormalize ? ps[j] / picked : ps[j];
    atomicAdd(&counts[ids[j]], 1);
  }
}

// offsets[e] = Σ counts[<e]; cursor[e] = 0. E is small (≤ 256): one thread is enough.
__global__ void scan_kernel(const int32_t* counts, int E, int32_t* offsets, int32_t* cursor) {
  int32_t run = 0;
  for (int e = 0; e < E; ++e) {
    offsets[e] = run;
    cursor[e] = 0;
    run += counts[e];
  }
  offsets[E] = run;
}

__global__ void permute_kernel(const int32_t* __restrict__ expert, int64_t M, int k, const int32_t* __restrict__ offsets,
                               int32_t* cursor, int32_t* __restrict__ pos, int32_t* __restrict__ token_of) {
  const int64_t a = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= M) return;
  const int e = expert[a];
  const int32_t p = offsets[e] + atomicAdd(&cursor[e], 1);
  pos[a] = p;
  token_of[p] = int32_t(a / k);
}

template <typename T>
__global__ void gather_kernel(const T* __restrict__ x, int64_t x_stride, const int32_t* __restrict__ token_of,
                              T* __restrict__ xp, int d) {
  const T* src = x + int64_t(token_of[blockIdx.x]) * x_stride;
  T* dst = xp + int64_t(blockIdx.x) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

template <typename T>
__global__ void combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ pos,
                               const int32_t* __restrict__ expert, const float* __restrict__ weight, int k, T* out,
                               int64_t out_stride, int d) {
  const int64_t t = blockIdx.x;
  // The picks of t in expert order (insertion sort of ≤ kMaxTopK entries).
  int order[kMaxTopK];
  for (int j = 0; j < k; ++j) {
    int i = j;
    while (i > 0 && expert[t * k + order[i - 1]] > expert[t * k + j]) {
      order[i] = order[i - 1];
      --i;
    }
    order[i] = j;
  }
  T* o = out + t * out_stride;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
      const int64_t a = t * k + order[j];
      acc += weight[a] * y[int64_t(pos[a]) * d + i];
    }
    o[i] = from_f32<T>(acc);
  }
}

template <typename P>
P* take(Scratch& s, int64_t n) {
  return static_cast<P*>(s.get(size_t(n) * sizeof(P)));
}

}  // namespace

void moe(const MoeParams& p, Gemm& gemm, Scratch& scratch, int32_t* host_counts, cudaStream_t stream) {
  const int64_t T = p.x.shape[0], D = p.x.shape[1], E = p.router.shape[0], F = p.gate_up.shape[1] / 2, k = p.top_k;
  if (T == 0) return;
  if (E > 256 || k > kMaxTopK)
    fail(ErrorKind::Unsupported, "moe: the CUDA backend supports at most 256 experts and top_k ", kMaxTopK, ", got ",
         E, " and ", k);
  const DType act = p.x.dtype;
  const size_t es = dtype_size(act);
  const int64_t M = T * k;

  // 1. Router logits (fp32) and routing.
  Tensor logits = Tensor::contiguous(take<float>(scratch, T * E), DType::F32, {T, E}, Device::Cuda);
  gemm.run(p.x, p.router, Tensor{}, logits, "moe router");
  auto* expert = take<int32_t>(scratch, M);
  auto* weight = take<float>(scratch, M);
  auto* counts = take<int32_t>(scratch, E);
  auto* offsets = take<int32_t>(scratch, E + 1);
  auto* cursor = take<int32_t>(scratch, E);
  auto* pos = take<int32_t>(scratch, M);
  auto* token_of = take<int32_t>(scratch, M);
  STATELM_CUDA_CHECK(cudaMemsetAsync(counts, 0, size_t(E) * 4, stream), "moe: clear counts");
  route_kernel<<<blocks_for(T, 128), 128, 0, stream>>>(logits.ptr<float>(), T, int(E), int(k), p.renormalize, expert,
                                                       weight, counts);
  STATELM_CUDA_LAUNCHED("moe route: ", T, " tokens, ", E, " experts, top ", k);
  scan_kernel<<<1, 1, 0, stream>>>(counts, int(E), offsets, cursor);
  STATELM_CUDA_LAUNCHED("moe scan");
  permute_kernel<<<blocks_for(M, 256), 256, 0, stream>>>(expert, M, int(k), offsets, cursor, pos, token_of);
  STATELM_CUDA_LAUNCHED("moe permute");
  STATELM_CUDA_CHECK(cudaMemcpyAsync(host_counts, counts, size_t(E) * 4, cudaMemcpyDeviceToHost, stream),
                     "moe: read back counts");

  // 3. Gather the tokens by expert (runs on the device while the host waits for the counts).
  Tensor xp = Tensor::contiguous(scratch.get(size_t(M * D) * es), act, {M, D}, Device::Cuda);
  dispatch_float(act, "moe", [&](auto tag) {
    using T_ = decltype(tag);
    gather_kernel<T_><<<unsigned(M), row_threads(D, M), 0, stream>>>(p.x.ptr<const T_>(), p.x.stride[0], token_of,
                                                                  xp.ptr<T_>(), int(D));
  });
  STATELM_CUDA_LAUNCHED("moe gather x ", p.x.describe());
  STATELM_CUDA_CHECK(cudaStreamSynchronize(stream), "moe: routing of x ", p.x.describe());

  // 5. Experts.
  Tensor h = Tensor::contiguous(scratch.get(size_t(M * 2 * F) * es), act, {M, 2 * F}, Device::Cuda);
  Tensor a = Tensor::contiguous(scratch.get(size_t(M * F) * es), act, {M, F}, Device::Cuda);
  Tensor y = Tensor::contiguous(take<float>(scratch, M * D), DType::F32, {M, D}, Device::Cuda);
  auto expert_matrix = [&](const Tensor& all, int64_t e) {
    return Tensor::contiguous(static_cast<char*>(all.data) + size_t(e * all.stride[0]) * dtype_size(all.dtype),
                              all.dtype, {all.shape[1], all.shape[2]}, Device::Cuda);
  };
  std::vector<int64_t> off(size_t(E) + 1, 0);
  for (int64_t e = 0; e < E; ++e) off[size_t(e) + 1] = off[size_t(e)] + host_counts[e];
  STATELM_CHECK(off[size_t(E)] == M, "moe: experts hold ", off[size_t(E)], " picks of ", M);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = off[size_t(e) + 1] - off[size_t(e)];
    if (n > 0) gemm.run(xp.rows(off[size_t(e)], n), expert_matrix(p.gate_up, e), Tensor{}, h.rows(off[size_t(e)], n),
                        "moe gate_up");
  }
  swiglu(h, a, stream);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = off[size_t(e) + 1] - off[size_t(e)];
    if (n > 0) gemm.run(a.rows(off[size_t(e)], n), expert_matrix(p.down, e), Tensor{}, y.rows(off[size_t(e)], n),
                        "moe down");
  }

  // 6. Weighted combine in expert order.
  dispatch_float(p.out.dtype, "moe", [&](auto tag) {
    using T_ = decltype(tag);
    combine_kernel<T_><<<unsigned(T), row_threads(D, T), 0, stream>>>(y.ptr<const float>(), pos, expert, weight, int(k),
                                                                   p.out.ptr<T_>(), p.out.stride[0], int(D));
  });
  STATELM_CUDA_LAUNCHED("moe combine out ", p.out.describe());
}

}  // namespace statelm::cuda
