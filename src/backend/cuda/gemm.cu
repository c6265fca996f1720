// Every linear layer on CUDA: out[T, N] = x[T, K] · w[N, K]ᵀ (+ bias[N]), through cuBLASLt.
//
// Layout. cuBLASLt is column-major; our tensors are row-major with a free row stride. A row-major
// [R, C] matrix with row stride ld is the column-major [C, R] matrix with leading dimension ld,
// so with m = N, n = T, k = K:
//   A = w  seen as K×N (ld = w.stride[0]), op(A) = Aᵀ : N×K
//   B = x  seen as K×T (ld = x.stride[0]), op(B) = B  : K×T
//   D = out seen as N×T (ld = out.stride[0]) = op(A) op(B) = (x wᵀ)ᵀ
// Column slices of a wider matrix (x = in_proj output's x half, dt = x_proj output's first R
// columns) are plain leading dimensions here, as in the CPU matmul.
//
// Types. bf16 × bf16 runs on the tensor cores with fp32 accumulation (CUBLAS_COMPUTE_32F) and
// stores bf16 or fp32 (the LM head writes fp32 logits straight from the accumulators); fp32 × fp32
// uses CUBLAS_COMPUTE_32F too, which is true fp32, not TF32: the fp32 path is the one tested to
// 1e-4 against transformers. The bias (fp32) is added by a small kernel after the GEMM.
//
// Decode steps go to the weight-streaming kernels instead, which read the weights faster than the
// algorithms cuBLASLt picks for such shapes: bf16 batches of 2 to kSkinnyMmaMaxTokens tokens to
// skinny_gemm_mma.cu (tensor cores), one token (and fp32 up to kSkinnyMaxTokens) to skinny_gemm.cu.
//
// Plans. The matmul descriptor, the three layouts and the algorithm chosen by cuBLASLt's
// heuristic are cached per (m, n, k, leading dimensions, types, alignments): a decode step or a
// prefill chunk of a size seen before costs one cublasLtMatmul call and no heuristic query. The
// alignment of each pointer and leading dimension is part of the key and is passed to the
// heuristic, so a 2-byte-aligned column slice gets an algorithm that can read it. If cuBLASLt
// offers none, a plain tiled kernel (fp32 accumulation) computes the product: correct for any
// layout, slow, and used only for shapes that cuBLASLt rejects.
#include <cublasLt.h>

#include <cstring>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_common.h"

namespace statelm::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // cuBLAS's own recommendation for Hopper
constexpr size_t kMaxPlans = 4096;  // distinct shapes kept; the cache is cleared when it fills

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "unknown status";
  }
}

#define STATELM_CUBLAS_CHECK(call, ...)                                                                \
  do {                                                                                                 \
    const cublasStatus_t statelm_cublas_status_ = (call);                                              \
    if (statelm_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                               \
      ::statelm::fail(::statelm::ErrorKind::Internal, __VA_ARGS__, ": cuBLASLt ", #call, " failed: ",  \
                      cublas_status_name(statelm_cublas_status_));                                     \
  } while (0)

cudaDataType_t cuda_type(DType t) { return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Largest power of two (at most 256) dividing both the address and the leading dimension in
// bytes: what the heuristic may assume about every column of the matrix.
uint16_t alignment(const void* p, int64_t ld, size_t elem) {
  const uint64_t v = reinterpret_cast<uintptr_t>(p) | (uint64_t(ld) * elem) | 256u;
  return uint16_t(v & (~v + 1));
}

// The fallback: 16×16 output tiles, K in steps of 16 through shared memory, fp32 accumulation.
template <typename TI, typename TO>
__global__ void tiled_gemm_kernel(const TI* __restrict__ x, int64_t ldx, const TI* __restrict__ w, int64_t ldw,
                                  TO* __restrict__ out, int64_t ldo, int64_t T, int64_t N, int64_t K) {
  __shared__ float xs[16][17], ws[16][17];
  const int64_t row = int64_t(blockIdx.y) * 16 + threadIdx.y;  // token
  const int64_t col = int64_t(blockIdx.x) * 16 + threadIdx.x;  // output feature
  const int64_t wrow = int64_t(blockIdx.x) * 16 + threadIdx.y;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    const int64_t k = k0 + threadIdx.x;
    xs[threadIdx.y][threadIdx.x] = row < T && k < K ? to_f32(x[row * ldx + k]) : 0.0f;
    ws[threadIdx.y][threadIdx.x] = wrow < N && k < K ? to_f32(w[wrow * ldw + k]) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 16; ++j) acc = fmaf(xs[threadIdx.y][j], ws[threadIdx.x][j], acc);
    __syncthreads();
  }
  if (row < T && col < N) out[row * ldo + col] = from_f32<TO>(acc);
}

void tiled_gemm(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream) {
  const int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0];
  const dim3 block(16, 16), grid(unsigned((N + 15) / 16), unsigned((T + 15) / 16));
  dispatch_float(x.dtype, "matmul", [&](auto in_tag) {
    using TI = decltype(in_tag);
    dispatch_float(out.dtype, "matmul", [&](auto out_tag) {
      using TO = decltype(out_tag);
      tiled_gemm_kernel<TI, TO><<<grid, block, 0, stream>>>(x.ptr<const TI>(), x.stride[0], w.ptr<const TI>(),
                                                            w.stride[0], out.ptr<TO>(), out.stride[0], T, N, K);
    });
  });
}

}  // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool use_cublas = false;
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

size_t Gemm::KeyHash::operator()(const Key& k) const {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
  mix(uint64_t(k.m));
  mix(uint64_t(k.n));
  mix(uint64_t(k.k));
  mix(uint64_t(k.lda));
  mix(uint64_t(k.ldb));
  mix(uint64_t(k.ldc));
  mix(uint64_t(k.ab_type) | uint64_t(k.c_type) << 8 | uint64_t(k.align_a) << 16 | uint64_t(k.align_b) << 32 |
      uint64_t(k.align_c) << 48);
  return size_t(h);
}

Gemm::Gemm(cudaStream_t stream) : stream_(stream) {
  STATELM_CUBLAS_CHECK(cublasLtCreate(&handle_), "matmul: setting up cuBLASLt");
  STATELM_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes), "matmul: cuBLASLt workspace of ", kWorkspaceBytes,
                     " bytes");
  workspace_bytes_ = kWorkspaceBytes;
}

Gemm::~Gemm() {
  plans_.clear();
  if (workspace_) {
    cudaStreamSynchronize(stream_);  // queued GEMMs may still use it
    cudaFree(workspace_);
  }
  if (handle_) cublasLtDestroy(handle_);
}

Gemm::Plan* Gemm::plan(const Key& key, const char* op) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  if (plans_.size() >= kMaxPlans) plans_.clear();
  auto p = std::make_unique<Plan>();
  const cudaDataType_t ab = cuda_type(DType(key.ab_type)), c = cuda_type(DType(key.c_type));
  STATELM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), op);
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  STATELM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), op);
  STATELM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), op);
  STATELM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, ab, uint64_t(key.k), uint64_t(key.m), key.lda), op);
  STATELM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, ab, uint64_t(key.k), uint64_t(key.n), key.ldb), op);
  STATELM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, c, uint64_t(key.m), uint64_t(key.n), key.ldc), op);

  cublasLtMatmulPreference_t pref = nullptr;
  STATELM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), op);
  const uint64_t ws = workspace_bytes_;
  const uint32_t aa = key.align_a, ba = key.align_b, ca = key.align_c;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ba, sizeof ba);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ca, sizeof ca);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ca, sizeof ca);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->c, p->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    p->algo = result.algo;
    p->use_cublas = true;
  }
  Plan* raw = p.get();
  plans_.emplace(key, std::move(p));
  return raw;
}

bool Gemm::run_swiglu(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                      const char* op) {
  // run's order: the tensor-core skinny kernel first, then the CUDA-core one.
  if (skinny_gemm_mma_fits(x, w, bias)) return false;
  if (!skinny_gemm_swiglu(x, w, bias, scale, out, stream_)) return false;
  STATELM_CUDA_LAUNCHED(op, " (skinny, swiglu) x ", x.describe(), " w ", w.describe(), " out ", out.describe());
  return true;
}

bool Gemm::run_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale,
                        const Tensor& residual, const ResidualSums& sums, const char* op) {
  if (skinny_gemm_mma_fits(x, w, bias)) return false;  // run's faster choice (no residual epilogue)
  if (!skinny_gemm(x, w, bias, scale, residual, stream_, sums)) return false;
  STATELM_CUDA_LAUNCHED(op, " (skinny, into the residual) x ", x.describe(), " w ", w.describe(), " residual ",
                        residual.describe());
  return true;
}

bool Gemm::run_conv(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                    const ConvStep& conv, const char* op) {
  if (skinny_gemm_mma_fits(x, w, bias)) return false;  // run's choice (no conv epilogue)
  if (!skinny_gemm_conv(x, w, bias, scale, out, conv, stream_)) return false;
  STATELM_CUDA_LAUNCHED(op, " (skinny, conv step) x ", x.describe(), " w ", w.describe(), " out ", out.describe());
  return true;
}

void Gemm::run(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const char* op,
               const RowScale& scale) {
  const int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0];
  if (T == 0 || N == 0) return;
  // Decode: stream the weights (a batch of bf16 rows on the tensor cores).
  if (T <= kSkinnyMmaMaxTokens && skinny_gemm_mma(x, w, bias, scale, out, stream_)) {
    STATELM_CUDA_LAUNCHED(op, " (skinny, mma) x ", x.describe(), " w ", w.describe(), " out ", out.describe());
    return;
  }
  if (T <= kSkinnyMaxTokens && skinny_gemm(x, w, bias, scale, out, stream_)) {
    STATELM_CUDA_LAUNCHED(op, " (skinny) x ", x.describe(), " w ", w.describe(), " out ", out.describe());
    return;
  }
  Key key{N, T, K, w.stride[0], x.stride[0], out.stride[0], uint8_t(x.dtype), uint8_t(out.dtype),
          alignment(w.data, w.stride[0], dtype_size(w.dtype)), alignment(x.data, x.stride[0], dtype_size(x.dtype)),
          alignment(out.data, out.stride[0], dtype_size(out.dtype))};
  Plan* p = plan(key, op);
  if (p->use_cublas) {
    const float alpha = 1.0f, beta = 0.0f;
    STATELM_CUBLAS_CHECK(cublasLtMatmul(handle_, p->desc, &alpha, w.data, p->a, x.data, p->b, &beta, out.data, p->c,
                                        out.data, p->c, &p->algo, workspace_, workspace_bytes_, stream_),
                         str_cat(op, " x ", x.describe(), " w ", w.describe(), " out ", out.describe()));
  } else {
    tiled_gemm(x, w, out, stream_);
  }
  STATELM_CUDA_LAUNCHED(op, " x ", x.describe(), " w ", w.describe(), " out ", out.describe());
  if (bias.defined() || scale.sumsq) scale_add_bias(out, bias, scale, stream_);
}

}  // namespace statelm::cuda
