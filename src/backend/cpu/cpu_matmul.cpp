// out[T, N] = x[T, K] · w[N, K]ᵀ (+ bias): every linear layer. Weights stay in transformers'
// [out_features, in_features] layout.
//
// Batch invariance: each output element is one dot product over K, always summed in the same
// order by the same loop, whatever T is and whichever rows share the batch. So a token's logits
// do not depend on how its prompt was chunked or what else was batched with it — bit for bit,
// which is what makes "prefill then decode == one forward" and "no cross-talk" exact. (A BLAS
// sgemm picks different kernels for different T and breaks this at the 1e-5 level.)
//
// Speed: decode (T = a few sequences) is bound by streaming the weights: each weight row is
// read once and dotted with up to kRowGroup inputs while in registers/L1. Prefill tiles the
// weights by kTileRows output rows (a tile stays in L2) and runs every group of input rows over
// the tile before moving on, so weights come from memory once per tile, not once per group.
// STATELM_CPU_GEMM=openblas switches T > kRowGroup to OpenBLAS sgemm (faster prefill, not
// batch-invariant): used by the benchmarks as the reference rate.
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_backend.h"

namespace statelm {

namespace {
constexpr int64_t kRowGroup = 6;   // input rows per pass over the weights (accumulators in registers)
constexpr int64_t kTileRows = 64;  // weight rows per L2 tile
constexpr int64_t kLanes = 16;

// 16 floats: one AVX-512 register (two AVX2 ones); GCC's vector extension keeps this portable.
typedef float vec __attribute__((vector_size(64)));

inline vec load(const float* p) {
  vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// acc + a * b with one rounding, spelled out: whether the compiler fuses a multiply-add must not
// depend on how a template instance was optimised (it did, under sanitizers), or batch
// invariance would hang on code generation. This file is built with -ffp-contract=off.
inline vec fmadd(vec a, vec b, vec acc) {
#if defined(__AVX512F__)
  return (vec)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__FMA__)
  typedef float half __attribute__((vector_size(32)));
  half ah[2], bh[2], ch[2];
  __builtin_memcpy(ah, &a, sizeof a);
  __builtin_memcpy(bh, &b, sizeof b);
  __builtin_memcpy(ch, &acc, sizeof acc);
  for (int i = 0; i < 2; ++i) ch[i] = (half)_mm256_fmadd_ps((__m256)ah[i], (__m256)bh[i], (__m256)ch[i]);
  __builtin_memcpy(&acc, ch, sizeof acc);
  return acc;
#else
  for (int i = 0; i < kLanes; ++i) acc[i] = __builtin_fmaf(a[i], b[i], acc[i]);
  return acc;
#endif
}

// The fixed reduction of one accumulator: pairwise over the lanes, always in this order.
inline float reduce(vec v) {
  float l[kLanes];
  __builtin_memcpy(l, &v, sizeof l);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) l[i] += l[i + w];
  return l[0];
}

// Dot products of kW weight rows with kR input rows. Each output is summed in the same order
// whatever kW and kR are (lane i accumulates k = i mod 16, then reduce(), then the tail in
// order), which is what makes the matmul batch-invariant; kW and kR only add independent
// accumulators, so the FMA units have several chains in flight.
template <int kW, int kR>
void dot_block(const float* w, int64_t k, const float* const* xs, const float* bias, int64_t j, float* const* outs) {
  vec acc[kW][kR] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    vec wv[kW];
    for (int a = 0; a < kW; ++a) {
      // Decode streams the weights from DRAM: ask for the next cache lines early.
      __builtin_prefetch(w + (j + a) * k + i + 8 * kLanes);
      wv[a] = load(w + (j + a) * k + i);
    }
    for (int r = 0; r < kR; ++r) {
      const vec xv = load(xs[r] + i);
      for (int a = 0; a < kW; ++a) acc[a][r] = fmadd(wv[a], xv, acc[a][r]);
    }
  }
  for (int a = 0; a < kW; ++a)
    for (int r = 0; r < kR; ++r) {
      float s = reduce(acc[a][r]);
      for (int64_t t = i; t < k; ++t) s = __builtin_fmaf(w[(j + a) * k + t], xs[r][t], s);
      outs[r][j + a] = s + (bias ? bias[j + a] : 0.0f);
    }
}

template <int kR>
void dot_rows(const float* const* xs, const float* w, int64_t j0, int64_t j1, int64_t k, const float* bias,
              float* const* outs) {
  int64_t j = j0;
  // Few inputs: more weight rows at once, so more independent loads are in flight.
  if constexpr (kR <= 2)
    for (; j + 8 <= j1; j += 8) dot_block<8, kR>(w, k, xs, bias, j, outs);
  for (; j + 4 <= j1; j += 4) dot_block<4, kR>(w, k, xs, bias, j, outs);
  for (; j < j1; ++j) dot_block<1, kR>(w, k, xs, bias, j, outs);
}

template <int... kRows>
void dot_rows_dispatch(int64_t rows, const float* const* xs, const float* w, int64_t j0, int64_t j1, int64_t k,
                       const float* bias, float* const* outs, std::integer_sequence<int, kRows...>) {
  // Runtime row count -> compile-time loop bound, so the accumulators stay in registers.
  ((rows == kRows + 1 ? dot_rows<kRows + 1>(xs, w, j0, j1, k, bias, outs) : void()), ...);
}

bool use_openblas() {
  static const bool v = [] {
    const char* e = std::getenv("STATELM_CPU_GEMM");
    return e && std::strcmp(e, "openblas") == 0;
  }();
  return v;
}
}  // namespace

void CpuBackend::matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) {
  const int64_t t = x.shape[0], k = x.shape[1], n = w.shape[0];
  cpu::check_2d(x, t, k, "matmul x");
  cpu::check_2d(w, n, k, "matmul weight");
  cpu::check_2d(out, t, n, "matmul out");
  const float* b = bias.defined() ? bias.f32() : nullptr;
  if (t == 0) return;
  if (t > kRowGroup && use_openblas()) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(t), int(n), int(k), 1.0f, x.f32(), int(x.stride[0]), w.f32(),
                int(w.stride[0]), 0.0f, out.f32(), int(out.stride[0]));
    if (b)
      for (int64_t r = 0; r < t; ++r)
        for (int64_t j = 0; j < n; ++j) cpu::row(out, r)[j] += b[j];
    return;
  }
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(static) if (n * k * t > 65536)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t j0 = tile * kTileRows, j1 = std::min(n, j0 + kTileRows);
    for (int64_t r0 = 0; r0 < t; r0 += kRowGroup) {
      const int64_t rows = std::min(kRowGroup, t - r0);
      const float* xs[kRowGroup];
      float* outs[kRowGroup];
      for (int64_t r = 0; r < rows; ++r) {
        xs[r] = cpu::row(x, r0 + r);
        outs[r] = cpu::row(out, r0 + r);
      }
      dot_rows_dispatch(rows, xs, w.f32(), j0, j1, k, b, outs, std::make_integer_sequence<int, int(kRowGroup)>{});
    }
  }
}

void CpuBackend::matmul_row_rms(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                                const Tensor& out) {
  const int64_t t = x.shape[0], n = w.shape[0];
  cpu::check_2d(rms.sumsq, t, rms.sumsq.shape[1], "matmul_row_rms sumsq");
  STATELM_CHECK(rms.sumsq.shape[1] >= 1, "matmul_row_rms: sumsq has no column: ", rms.sumsq.describe());
  STATELM_CHECK(rms.n > 0, "matmul_row_rms: the norm's row length is ", rms.n);
  STATELM_CHECK(!bias.defined() || (bias.ndim == 1 && bias.shape[0] == n), "matmul_row_rms bias ", bias.describe());
  matmul(x, w, Tensor{}, out);
  const float* b = bias.defined() ? bias.f32() : nullptr;
  for (int64_t r = 0; r < t; ++r) {
    const float* ss = cpu::row(rms.sumsq, r);
    double sum = 0.0;
    for (int64_t j = 0; j < rms.sumsq.shape[1]; ++j) sum += ss[j];
    const float scale = 1.0f / std::sqrt(float(sum) / float(rms.n) + rms.eps);
    float* o = cpu::row(out, r);
    for (int64_t j = 0; j < n; ++j) o[j] = o[j] * scale + (b ? b[j] : 0.0f);
  }
}

void CpuBackend::matmul_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                                 const ResidualAdd& add, const Tensor& out) {
  const int64_t t = x.shape[0], n = w.shape[0];
  cpu::check_2d(add.residual, t, n, "matmul_residual residual");
  cpu::check_2d(add.sumsq, t, add.sumsq.shape[1], "matmul_residual sumsq");
  cpu::check_2d(add.normed, t, n, "matmul_residual normed");
  STATELM_CHECK(add.weight.numel() == n, "matmul_residual: norm weight ", add.weight.describe(), " for width ", n);
  matmul_or_row_rms(x, w, bias, rms, out);
  this->add(add.residual, out);
  for (int64_t r = 0; r < t; ++r) {  // the sum of squares as rms_norm takes it (in double)
    const float* h = cpu::row(add.residual, r);
    double ss = 0.0;
    for (int64_t j = 0; j < n; ++j) ss += double(h[j]) * h[j];
    float* normed = cpu::row(add.normed, r);
    for (int64_t j = 0; j < n; ++j) normed[j] = h[j] * add.weight.f32()[j];
    float* partials = cpu::row(add.sumsq, r);
    partials[0] = float(ss);
    for (int64_t j = 1; j < add.sumsq.shape[1]; ++j) partials[j] = 0.0f;
  }
}

}  // namespace statelm
