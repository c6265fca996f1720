// Hopper warpgroup tensor-core products (wgmma, sm_90a) of 64 × 64 bf16 tiles in shared memory,
// fp32 accumulators in registers. One warpgroup (4 consecutive warps, 128 threads) issues them;
// the products run asynchronously while the warps go on (commit / wait).
//
// Why not mma.sync (mma.cuh): there each warp first loads its fragments with ldmatrix and
// issues 8 small products per 16-deep step; measured on the SSD chunk kernels that is ~15 warp
// instructions per mma and the warps stall on shared-memory reads. A wgmma reads both operands
// straight from shared memory: 4 instructions per 64-deep slab for the whole block.
//
// Tile layout (one for every operand): 64 rows of 64 bf16 (128 bytes), the 16-byte chunk c of
// row r stored at chunk c ^ (r % 8) — the hardware's 128-byte swizzle, which also keeps 8
// threads storing the 8 chunks of one row on 8 distinct bank groups. A tile starts on 1024 bytes.
// A kernel stages each global operand row by row in its natural layout; the descriptor says
// which index is contiguous:
//   Major::K  — the reduced index k runs along the row (A as [m][k], B as [n][k]);
//   Major::MN — m or n runs along the row (A as [k][m], B as [k][n]): the tensor cores transpose.
//
// Accumulators: thread t of the warpgroup holds 32 floats; element i sits at row
// 16·(warp % 4) + lane / 4 + 8·((i / 2) % 2), column 8·(i / 4) + 2·(lane % 4) + i % 2 (Coord).
// A may also come from registers (the mma_async overload taking a fragment): that layout is the
// accumulators' own, so one product's result, rounded to bf16 (a_fragment), feeds the next one
// without a trip through shared memory (attention's P V after S = Q Kᵀ).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace statelm::cuda::wgmma {

constexpr int kEdge = 64;  // tile rows, columns, and the depth of one tile product
constexpr int kTileElems = kEdge * kEdge;
constexpr int kThreads = 128;  // one warpgroup

enum class Major { K, MN };

// Element index of (row, col) in a swizzled tile.
__device__ __forceinline__ int swizzled(int row, int col) {
  return row * kEdge + ((((col >> 3) ^ row) & 7) << 3) + (col & 7);
}

// The descriptor's two strides (bytes). With the 128-byte swizzle a tile is a column of
// 1024-byte atoms of 8 rows: the stride ("sbo") steps from one 8-row atom to the next. For K-major
// the atoms step along m/n; for MN-major along k. The leading offset ("lbo") would step between
// atoms side by side along the row, which a 64-wide tile does not have: 16 is a placeholder.
struct Strides {
  uint32_t lbo, sbo;
};
constexpr Strides kStrides{16, 1024};

// Bytes from one 16-deep step of the product to the next within a tile: 16 elements along a
// row (K-major), 16 rows (MN-major).
template <Major kMajor>
constexpr uint32_t kStepBytes = kMajor == Major::K ? 32 : 16 * kEdge * 2;

__device__ __forceinline__ uint64_t descriptor(const __nv_bfloat16* tile, Strides s = kStrides) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  return uint64_t((addr & 0x3FFFF) >> 4) | uint64_t((s.lbo >> 4) & 0x3FFF) << 16 |
         uint64_t((s.sbo >> 4) & 0x3FFF) << 32 | uint64_t(1) << 62;  // 1: 128-byte swizzle
}

struct Acc {
  float d[32];
};

__device__ __forceinline__ void zero(Acc& acc) {
#pragma unroll
  for (int i = 0; i < 32; ++i) acc.d[i] = 0.0f;
}

// Where accumulator element i of this thread sits in the 64 × 64 tile.
struct Coord {
  int row0, col0;
  __device__ __forceinline__ Coord() {
    const int warp = int(threadIdx.x >> 5) & 3, lane = int(threadIdx.x & 31);
    row0 = 16 * warp + lane / 4;
    col0 = 2 * (lane % 4);
  }
  __device__ __forceinline__ int row(int i) const { return row0 + 8 * ((i >> 1) & 1); }
  __device__ __forceinline__ int col(int i) const { return col0 + 8 * (i >> 2) + (i & 1); }
};

// The epilogue of a tile product: store(row, col, value) for each accumulator element of this
// thread, row and col its place in the 64 × 64 tile; store checks the bounds and writes the
// element wherever and in whatever type the kernel keeps its result.
template <typename Store>
__device__ __forceinline__ void store_tile(const Acc& acc, Store&& store) {
  const Coord tc;
#pragma unroll
  for (int i = 0; i < 32; ++i) store(tc.row(i), tc.col(i), acc.d[i]);
}

// Shared memory written by ordinary stores becomes visible to the tensor cores' (async proxy)
// reads: each writing thread fences, then the block synchronises.
__device__ __forceinline__ void fence_stores() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Orders this warpgroup's register and shared-memory accesses before the wgmma that follow.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed groups of products are still running.
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator reads or writes across a wait: the registers are
// "changed" here.
__device__ __forceinline__ void fence_operands(Acc& acc) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(acc.d[i])::"memory");
}

// acc = (accumulate ? acc : 0) + A · B for one 64 × 64 × 16 step.
template <Major kA, Major kB>
__device__ __forceinline__ void mma_async(uint64_t a, uint64_t b, Acc& acc, bool accumulate) {
  float* d = acc.d;
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(int(accumulate)), "n"(kA == Major::MN ? 1 : 0), "n"(kB == Major::MN ? 1 : 0));
}

// acc = (accumulate ? acc : 0) + A · B for one 64 × 64 × 16 step with A from registers: a holds
// this thread's fragment of the 64 × 16 slice of A, the layout of mma.sync's m16n8k16 A operand
// for the warp's 16 rows (warp % 4): a[0] = (row lane / 4, k 2·(lane % 4) + {0, 1}), a[1] = row + 8,
// a[2] = k + 8, a[3] = both — which is where a 64 × 64 accumulator tile already holds its elements
// (a_fragment). The product reads a until it completes: the caller keeps a unchanged until the wait.
template <Major kB>
__device__ __forceinline__ void mma_async(const uint32_t (&a)[4], uint64_t b, Acc& acc, bool accumulate) {
  float* d = acc.d;
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kB == Major::MN ? 1 : 0), "r"(int(accumulate)));
}

// The A fragment (registers) of k step `step` (k 16·step .. 16·step + 15) of a 64 × 64 accumulator
// tile rounded to bf16: the product of two tiles chains without a trip through shared memory.
__device__ __forceinline__ void a_fragment(const Acc& acc, int step, uint32_t (&a)[4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(acc.d[8 * step + 2 * r], acc.d[8 * step + 2 * r + 1]);
    a[r] = *reinterpret_cast<const uint32_t*>(&h);
  }
}

// Keeps A fragments in their registers until a wait: the registers are "changed" here.
__device__ __forceinline__ void fence_operands(uint32_t (&a)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// Issues acc (+)= A · B over a whole 64-deep tile pair (4 steps) from their descriptors; the caller
// fences before, commits and waits after.
template <Major kA, Major kB>
__device__ __forceinline__ void tile_mma_async(uint64_t a, uint64_t b, Acc& acc, bool accumulate) {
#pragma unroll
  for (int k = 0; k < kEdge / 16; ++k)
    mma_async<kA, kB>(a + (k * kStepBytes<kA> >> 4), b + (k * kStepBytes<kB> >> 4), acc, accumulate || k > 0);
}

// Starts acc += A · B for staged tiles (the whole block's stores to them are visible: the caller
// fenced them with fence_stores and synchronised). acc must not be touched until wait_all.
template <Major kA, Major kB>
__device__ __forceinline__ void tile_mma_issue(const __nv_bfloat16* a, const __nv_bfloat16* b, Acc& acc) {
  fence();
  tile_mma_async<kA, kB>(descriptor(a), descriptor(b), acc, true);
  commit();
}

// Waits for every product this warpgroup started; acc may be read or changed after.
__device__ __forceinline__ void wait_all(Acc& acc) {
  wait<0>();
  fence_operands(acc);
}

}  // namespace statelm::cuda::wgmma
