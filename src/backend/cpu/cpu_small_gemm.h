// A register-blocked fp32 GEMM for small, cache-resident matrices, run by one thread:
//   c[m × n] = (accumulate ? c : 0) + a[m × k] · b[k × n]      (row-major, leading dimensions)
// It serves the chunked SSD (cpu_ssd.cpp), whose products are at most chunk × chunk × d_state
// (256 × 256 × 128) and run many at a time, one per OpenMP thread. OpenBLAS is the wrong tool
// there: its pthread build, called from inside an OpenMP region, starts its own threads for
// anything above 64³ flops and oversubscribes the cores.
//
// Blocking: a tile of kRows rows × kCols columns of c lives in registers (kRows × kCols/kLanes
// vector accumulators: 12 of the 32 AVX-512 registers); for each k, one row of the b panel is
// loaded (kCols floats) and each a[i][k] is broadcast into kCols/kLanes FMAs. Tiles walk down a
// column panel of b (k × kCols floats, ≤ 32 KiB for k ≤ 256: it stays in L1) so b is read from
// memory once. Columns that do not fill a vector fall back to a scalar loop (only partial
// chunks and odd test sizes have them).
#pragma once

#include <algorithm>
#include <cstdint>

#include "backend/cpu/cpu_vec_math.h"

namespace statelm::cpu {

namespace small_gemm_detail {

inline constexpr int kRows = 6;
inline constexpr int64_t kDepth = 128;

template <int kRowsT, int kVecs>
inline void tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                 bool accumulate) {
  VecF acc[kRowsT][kVecs];
  for (int i = 0; i < kRowsT; ++i)
    for (int v = 0; v < kVecs; ++v) acc[i][v] = accumulate ? load(c + i * ldc + v * kLanes) : VecF{};
  for (int64_t p = 0; p < k; ++p) {
    VecF bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = load(b + p * ldb + v * kLanes);
    for (int i = 0; i < kRowsT; ++i) {
      const float ai = a[i * lda + p];
      for (int v = 0; v < kVecs; ++v) acc[i][v] += bv[v] * ai;
    }
  }
  for (int i = 0; i < kRowsT; ++i)
    for (int v = 0; v < kVecs; ++v) store(c + i * ldc + v * kLanes, acc[i][v]);
}

// All rows of one column panel: full kRows tiles, then one short tile.
template <int kVecs>
inline void panel(int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows) tile<kRows, kVecs>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  const float* ar = a + i * lda;
  float* cr = c + i * ldc;
  switch (m - i) {
    case 5: tile<5, kVecs>(k, ar, lda, b, ldb, cr, ldc, accumulate); break;
    case 4: tile<4, kVecs>(k, ar, lda, b, ldb, cr, ldc, accumulate); break;
    case 3: tile<3, kVecs>(k, ar, lda, b, ldb, cr, ldc, accumulate); break;
    case 2: tile<2, kVecs>(k, ar, lda, b, ldb, cr, ldc, accumulate); break;
    case 1: tile<1, kVecs>(k, ar, lda, b, ldb, cr, ldc, accumulate); break;
    default: break;
  }
  static_assert(kRows == 6, "the switch above covers kRows - 1 short tiles");
}

}  // namespace small_gemm_detail

inline void small_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                       float* c, int64_t ldc, bool accumulate) {
  using namespace small_gemm_detail;
  if (m <= 0 || n <= 0) return;
  // Long k in slices, so that a b panel stays within L1 even when ldb maps its rows onto a
  // fraction of the cache sets (ldb = 64 floats uses half of them).
  if (k > kDepth) {
    for (int64_t p = 0; p < k; p += kDepth)
      small_gemm(m, n, std::min(kDepth, k - p), a + p, lda, b + p * ldb, ldb, c, ldc, accumulate || p > 0);
    return;
  }
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) panel<2>(m, k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  for (; j + kLanes <= n; j += kLanes) panel<1>(m, k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  const int64_t rest = n - j;
  if (rest == 0) return;
  for (int64_t i = 0; i < m; ++i) {
    float acc[kLanes] = {};
    const float* ai = a + i * lda;
    for (int64_t p = 0; p < k; ++p)
      for (int64_t q = 0; q < rest; ++q) acc[q] += ai[p] * b[p * ldb + j + q];
    float* ci = c + i * ldc + j;
    for (int64_t q = 0; q < rest; ++q) ci[q] = (accumulate ? ci[q] : 0.0f) + acc[q];
  }
}

}  // namespace statelm::cpu
