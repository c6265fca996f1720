// Launchers of the CUDA backend's non-SSM kernel families, one .cu each: norm.cu (RMSNorm,
// residual add + RMSNorm, gated RMSNorm), elementwise.cu (embedding, SwiGLU, add, bias), gemm.cu
// (cuBLASLt) and moe.cu (routing, grouping by expert, experts, weighted combine). CudaBackend
// checks shapes and dtypes, then calls these on its stream; none of them synchronises with the
// host except moe, which reads the per-expert token counts back once per call.
//
// Tensors are device views with a contiguous last dimension; other strides are free (column
// slices of wider matrices). Activations are F32 or BF16; norm weights and biases are F32.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/param.h"
#include "ops/ops.h"

namespace statelm::cuda {

// out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w  (x and out may be the same tensor).
void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out, cudaStream_t stream);
// residual[t] += x[t] (rounded to residual's dtype), then out[t] = rms_norm(residual[t]).
void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                  cudaStream_t stream);
// residual[t] += x[t] (rounded as add_rms_norm rounds it), normed[t] = residual[t] * weight,
// sumsq[t, 0] = the sum of the new row's squares and sumsq[t, j > 0] = 0: ResidualAdd where no
// linear layer folds it in.
void add_sum_squares(const Tensor& residual, const Tensor& x, const Tensor& weight, const Tensor& normed,
                     const Tensor& sumsq, cudaStream_t stream);
// g = y * silu(z); out = g * rsqrt(mean over each group of group_size channels of g^2 + eps) * w.
void gated_rms_norm(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t group_size, float eps,
                    const Tensor& out, cudaStream_t stream);

// out[t] = table[ids[t]] for device ids.
void embed(const int32_t* ids, const Tensor& table, const Tensor& out, cudaStream_t stream);
// out[t, i] = silu(gate_up[t, i]) * gate_up[t, F + i].
void swiglu(const Tensor& gate_up, const Tensor& out, cudaStream_t stream);
// acc += x.
void add(const Tensor& acc, const Tensor& x, cudaStream_t stream);
// A per-row divisor of a linear layer's product (RowRms on the device): row t of the product is
// divided by sqrt(sum_j sumsq[t * ld + j] / n + eps), j < partials, before the bias is added.
struct RowScale {
  const float* sumsq = nullptr;  // null: no scaling
  int64_t ld = 0;
  int partials = 0;
  float inv_n = 0.0f, eps = 0.0f;
};
// Where a decode linear layer that ends a block puts its product (ResidualAdd on the device): out
// is the residual, out[t, n] = round(out[t, n] + round(product)); normed[t, n] = round(out[t, n] ·
// weight[n]); each block of the kernel writes the sum of its new values' squares to
// sumsq[t * ld + block]. Null sumsq: a plain store. normed is of the residual's dtype.
struct ResidualSums {
  float* sumsq = nullptr;
  int64_t ld = 0;
  const float* weight = nullptr;
  void* normed = nullptr;
  int64_t ld_normed = 0;
};
RowScale row_scale_of(const RowRms& rms);
// The conv1d step of a decode step folded into the linear layer ahead of it (matmul_conv1d on the
// device): the product's columns [begin, begin + C) are the conv's input channels, and token t is
// the one token of span t. Each of those outputs, rounded as stored, also goes through the conv
// as conv1d.cu computes it: out[t, c] = act(bias[c] + Σ_k w[c, k] · in_k) over the slot's K − 1
// stored inputs then the new one, and the slot's (fp32) window moves on by one. K is
// kConvStepTaps; C = 0: no conv.
constexpr int kConvStepTaps = 4;
struct ConvStep {
  int begin = 0, C = 0;
  Param w, bias;
  int64_t ws = 0;
  float* state = nullptr;  // [slots, C, K − 1]
  int64_t ss0 = 0, ss1 = 0;
  void* out = nullptr;  // [T, C] of the product's dtype
  int64_t ldo = 0;
  const SeqSpan* spans = nullptr;  // device copy
  bool silu = true;
};

// out[t, n] = out[t, n] / rms[t] + bias[n] (bias F32, optional; scale optional).
void scale_add_bias(const Tensor& out, const Tensor& bias, const RowScale& scale, cudaStream_t stream);

// The operands both decode-size kernels below take: 1 <= T <= max_tokens rows of x, x and w of
// one dtype, rows of whole 16-byte packs starting on 16 bytes, sizes within int, bias F32.
bool skinny_operands_fit(const Tensor& x, const Tensor& w, const Tensor& bias, int64_t max_tokens);

// Decode-size linear layers (skinny_gemm.cu): out[T, N] = x[T, K] w[N, K]^T (+ bias) for
// 1 <= T <= kSkinnyMaxTokens, streaming w at the copy bandwidth. False (nothing launched) when
// the shapes or alignments do not allow it.
constexpr int kSkinnyMaxTokens = 8;
// With sums.sumsq, out is the residual stream (ResidualSums), of x's dtype.
bool skinny_gemm(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                 cudaStream_t stream, const ResidualSums& sums = {});
// skinny_gemm with the conv step (ConvStep) in its epilogue; out of the compute dtype. False
// (nothing launched) where skinny_gemm would not run, or for bf16 batches (the tensor-core kernel's).
bool skinny_gemm_conv(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                      const ConvStep& conv, cudaStream_t stream);
// Blocks (and so ResidualSums partial sums) skinny_gemm launches for n output features.
int64_t skinny_gemm_blocks(int64_t n);
// Whether skinny_gemm takes these operands (the tests check that their decode cases reach it).
bool skinny_gemm_fits(const Tensor& x, const Tensor& w, const Tensor& bias);
// out[T, F] = swiglu(x w^T + bias) for w = [gate; up] (2F rows), the product rounded to out's
// dtype before the activation as Gemm::run then swiglu() round it; the same operands as
// skinny_gemm. False (nothing launched) when they do not fit.
bool skinny_gemm_swiglu(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                        cudaStream_t stream);

// Decode batches on the tensor cores (skinny_gemm_mma.cu): the same product for bf16 and
// 2 <= T <= kSkinnyMmaMaxTokens. False (nothing launched) when the operands do not allow it.
constexpr int kSkinnyMmaMaxTokens = 16;
bool skinny_gemm_mma(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                     cudaStream_t stream);
bool skinny_gemm_mma_fits(const Tensor& x, const Tensor& w, const Tensor& bias);

// out[T, N] = x[T, K] w[N, K]^T (+ bias) through cuBLASLt: bf16 x bf16 on the tensor cores with
// fp32 accumulation and bf16 or fp32 out, or fp32 x fp32 in full fp32 (no TF32: the fp32 path
// is the accuracy reference). One per backend: it owns the handle, the workspace and the cache
// of chosen algorithms per shape.
class Gemm {
 public:
  explicit Gemm(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void run(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const char* op = "matmul",
           const RowScale& scale = {});
  // out = swiglu(x w^T + bias) in one launch where run would stream the weights on the CUDA
  // cores (skinny_gemm_swiglu: one token, fp32 rows); false (nothing launched) where run takes
  // another kernel — the caller then runs the product and the swiglu kernel.
  bool run_swiglu(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                  const char* op = "matmul_swiglu");
  // The product added into `residual` with its rows' squares summed (ResidualSums) in one launch
  // where run would stream the weights on the CUDA cores; false (nothing launched) elsewhere.
  bool run_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale,
                    const Tensor& residual, const ResidualSums& sums, const char* op = "matmul_residual");
  // The product and the conv step after it (ConvStep) in one launch where run would stream the
  // weights on the CUDA cores; false (nothing launched) elsewhere.
  bool run_conv(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                const ConvStep& conv, const char* op = "matmul_conv1d");

 private:
  struct Plan;
  struct Key {
    int64_t m, n, k, lda, ldb, ldc;
    uint8_t ab_type, c_type;
    uint16_t align_a, align_b, align_c;  // bytes: what each pointer + leading dimension allow
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  Plan* plan(const Key& key, const char* op);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> plans_;
};

// The mixture of SwiGLU experts (MoeParams in ops.h) on `stream`, with `gemm` for the router
// and expert GEMMs and `scratch` for its intermediates. `host_counts` is pinned host memory for
// at least E int32: the per-expert token counts are read back there, the one host sync of the
// call (the expert GEMMs' sizes are host arguments of cuBLASLt).
void moe(const MoeParams& p, Gemm& gemm, Scratch& scratch, int32_t* host_counts, cudaStream_t stream);

}  // namespace statelm::cuda
