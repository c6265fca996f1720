// Tensor-core building blocks for the CUDA kernels that multiply small tiles in shared memory:
// bf16 mma.sync m16n8k16 with fp32 accumulators (sm_80+), fragments loaded with ldmatrix.
//
// A block of 4 warps computes a 64 × 64 fp32 tile, each warp a 32 × 32 quarter (warp w owns
// rows 32·(w / 2) .., columns 32·(w % 2) ..) as 2 × 4 mma tiles of 16 × 8. Operands are staged
// in shared memory as bf16 tiles of 64 × kLdTile with the reduced index k either contiguous
// ("K-major": A as [m][k], B as [n][k]) or not ("MN-major": A as [k][m], B as [k][n]); ldmatrix
// (with .trans for the MN-major case) turns either into the mma fragment, so a kernel stages a
// global operand in its natural layout and never transposes in software.
//
// Rows of kLdTile = 72 bf16 (144 bytes) put the 8 row addresses of one ldmatrix phase in 8
// distinct 16-byte bank groups: the fragment loads are conflict-free.
//
// Accumulator layout (per thread, acc[mi][ni][r]): row 32·wm + 16·mi + lane / 4 + 8·(r / 2),
// column 32·wn + 8·ni + 2·(lane % 4) + r % 2 (TileCoord gives both; store_tile walks them).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace statelm::cuda::mma {

constexpr int kTileThreads = 128;  // 4 warps
constexpr int kTileEdge = 64;      // output tile and staged slab edge
constexpr int kLdTile = kTileEdge + 8;

using Acc = float[2][4][4];

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// Two bf16 as one 32-bit fragment register: `lo` (the lower column or k index) in the low half,
// as mma and ldmatrix lay out pairs.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack_bf16x2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  const __nv_bfloat162 h = __halves2bfloat162(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Asynchronous 16-byte copy global -> shared (sm_80+), bypassing L1; fill = false writes 16
// zero bytes instead and reads nothing (gmem must still be a valid address).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(fill ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// d += a · b for one 16 × 8 × 16 tile (a: 16 × 16 row-major fragment, b: 16 × 8 column-major).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void zero(Acc& acc) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;
}

// Where accumulator element (mi, ni, r) of this thread sits in the 64 × 64 tile.
struct TileCoord {
  int row0, col0;  // of (mi, ni, r) = (0, 0, 0)
  __device__ __forceinline__ TileCoord() {
    const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
    row0 = 32 * (warp / 2) + lane / 4;
    col0 = 32 * (warp % 2) + 2 * (lane % 4);
  }
  __device__ __forceinline__ int row(int mi, int r) const { return row0 + 16 * mi + 8 * (r / 2); }
  __device__ __forceinline__ int col(int ni, int r) const { return col0 + 8 * ni + (r % 2); }
};

// The epilogue of a tile product: store(row, col, value) for each accumulator element of this
// thread, row and col its place in the 64 × 64 tile (TileCoord). store checks the bounds and
// writes the element wherever and in whatever type the kernel keeps its result.
template <typename Store>
__device__ __forceinline__ void store_tile(const Acc& acc, Store&& store) {
  const TileCoord tc;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) store(tc.row(mi, r), tc.col(ni, r), acc[mi][ni][r]);
}

// acc += A · B over one staged slab of 64 along k. kAKMajor: A is [m][k] (else [k][m]);
// kBKMajor: B is [n][k] (else [k][n]). Both tiles have rows of kLdTile elements.
template <bool kAKMajor, bool kBKMajor>
__device__ __forceinline__ void slab_mma(const __nv_bfloat16* As, const __nv_bfloat16* Bs, Acc& acc) {
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int m_base = 32 * (warp / 2), n_base = 32 * (warp % 2);
  const int mat = lane / 8, in_mat = lane % 8;
#pragma unroll
  for (int k0 = 0; k0 < kTileEdge; k0 += 16) {
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int m = m_base + 16 * mi;
      if constexpr (kAKMajor)  // matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
        ldmatrix_x4(a[mi], As + (m + lane % 16) * kLdTile + k0 + (lane / 16) * 8);
      else
        ldmatrix_x4_trans(a[mi], As + (k0 + (mat / 2) * 8 + in_mat) * kLdTile + m + (mat % 2) * 8);
    }
#pragma unroll
    for (int np = 0; np < 2; ++np) {  // two n8 tiles per ldmatrix: (k 0-7, k 8-15) of each
      const int n = n_base + 16 * np;
      uint32_t r[4];
      if constexpr (kBKMajor)
        ldmatrix_x4(r, Bs + (n + (mat / 2) * 8 + in_mat) * kLdTile + k0 + (mat % 2) * 8);
      else
        ldmatrix_x4_trans(r, Bs + (k0 + (mat % 2) * 8 + in_mat) * kLdTile + n + (mat / 2) * 8);
      b[2 * np][0] = r[0], b[2 * np][1] = r[1], b[2 * np + 1][0] = r[2], b[2 * np + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) mma_bf16(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
  }
}

}  // namespace statelm::cuda::mma
