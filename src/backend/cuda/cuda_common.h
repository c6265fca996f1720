// Helpers shared by the CUDA backend's .cu files (not by the host-only code): error checks that
// name the op and the shapes, the element types a kernel is instantiated for, and fp32 <-> T
// conversion in registers. Kernels load their element type, compute in fp32, and round once
// when they store. f16 (IEEE half) is a recurrent-state type only (span_kernels.cuh's
// dispatch_state), never an activation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <initializer_list>
#include <type_traits>

#include <cstdint>

#include "backend/cuda/param.h"
#include "core/error.h"
#include "core/tensor.h"

namespace statelm::cuda {

// Throws statelm::Error naming `op` (and whatever detail follows, evaluated only on failure)
// when a CUDA call fails. Out-of-memory is ErrorKind::OutOfMemory, everything else Internal (a
// failed launch or a kernel fault is statelm's bug, not the user's).
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line, const std::string& op);

#define STATELM_CUDA_CHECK(call, ...)                                                                 \
  do {                                                                                                \
    const cudaError_t statelm_cuda_err_ = (call);                                                     \
    if (statelm_cuda_err_ != cudaSuccess)                                                             \
      ::statelm::cuda::throw_cuda_error(statelm_cuda_err_, #call, __FILE__, __LINE__,                 \
                                        ::statelm::str_cat(__VA_ARGS__));                            \
  } while (0)

// After a kernel launch: a bad configuration (grid too large, too much shared memory) shows up
// here at once; faults inside the kernel show up at the next synchronising call (download).
#define STATELM_CUDA_LAUNCHED(...) STATELM_CUDA_CHECK(cudaGetLastError(), __VA_ARGS__)

using bf16 = __nv_bfloat16;
using f16 = __half;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(f16 v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }
// Round to nearest even; past 65504 the result is ±inf, as the CPU's f32_to_f16 (core/dtype.cpp)
// gives it: no clamping, so a drifting fp16 state fails the same way on both backends.
template <>
__device__ __forceinline__ f16 from_f32<f16>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float silu(float v) { return v / (1.0f + __expf(-v)); }

// Thread i of n: the sum of p[i], p[i + n], ... below count, its loads issued kBatch at a time
// (predicated, before any add), so the thread waits one memory round trip a batch rather than
// one a load (the partial sums of squares a decode GEMM reads right after its wait).
template <int kBatch = 8>
__device__ __forceinline__ float strided_sum(const float* p, int count, int i, int n) {
  float s = 0.0f;
  for (int j0 = i; j0 < count; j0 += kBatch * n) {
    float v[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) v[q] = j0 + q * n < count ? p[j0 + q * n] : 0.0f;
#pragma unroll
    for (int q = 0; q < kBatch; ++q) s += v[q];
  }
  return s;
}

// Sum over a warp, result in every lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); `shared` holds 32 floats.
// Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0f;
  return warp_sum(v);
}

// Calls f(T{}) with T = float or bf16 for an activation dtype; anything else is a bug of the
// caller (the backend checks dtypes before it launches).
template <typename F>
void dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(bf16{}); return;
    default: fail(ErrorKind::Unsupported, op, ": CUDA kernels take float32 or bfloat16, got ", dtype_name(t));
  }
}

// Whether a pointer and the strides (elements) of a view allow accesses of `bytes` bytes: every
// row it addresses (p plus any sum of strides) starts `bytes`-aligned.
inline bool aligned_for(const void* p, std::initializer_list<int64_t> strides_elems, size_t elem_size,
                        size_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  for (const int64_t s : strides_elems)
    if ((size_t(s) * elem_size) % bytes != 0) return false;
  return true;
}
// The same for a view of rows (one stride).
inline bool aligned_for(const void* p, int64_t row_stride_elems, size_t elem_size, size_t bytes) {
  return aligned_for(p, std::initializer_list<int64_t>{row_stride_elems}, elem_size, bytes);
}

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// Multiprocessors of the current device, asked once (launchers size split-K and piece counts
// by it); 132, the H100/H200 count, if the query fails.
inline int sm_count() {
  static const int count = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      n = 132;
    return n;
  }();
  return count;
}

}  // namespace statelm::cuda

namespace statelm::cuda {

// VEC consecutive elements of T moved as one access (16 bytes for VEC = 16 / sizeof(T)).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_f32(const T* p, float (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_f32(pk.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_f32(T* p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pk.v[j] = from_f32<T>(in[j]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// Widens one 16-byte pack (4 fp32 or 8 bf16 values, as a uint4 register holds them after a
// vector load) to fp32. Kernels keep loaded rows packed until use, so that loads stay in flight
// in few registers; this is the one place they are opened.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& v, float (&out)[16 / sizeof(T)]) {
  if constexpr (sizeof(T) == 4) {
    out[0] = __uint_as_float(v.x), out[1] = __uint_as_float(v.y), out[2] = __uint_as_float(v.z),
    out[3] = __uint_as_float(v.w);
  } else {
    static_assert(std::is_same_v<T, bf16>, "16-byte packs of fp32 or bf16");
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // bf16 is the high half of an fp32: a shift, no conversion
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}

// The widest access (16 bytes = kVec16<T> elements) when every pointer, row stride and the row
// length allow it, else one element per access. Used by the row kernels to pick VEC.
template <typename T>
constexpr int kVec16 = int(16 / sizeof(T));

// Threads for a kernel that walks `n` packs of one row with a block: a multiple of 32, 32..256,
// or up to 1024 when there are fewer than 128 rows (blocks; about the SM count): a decode step's
// few rows are then read in one round trip per thread instead of several (one block per row is
// all the GPU runs).
inline int row_threads(int64_t packs, int64_t rows = int64_t(1) << 40) {
  const int64_t cap = rows < 128 ? 1024 : 256;
  int64_t t = (packs + 31) / 32 * 32;
  return int(t < 32 ? 32 : (t > cap ? cap : t));
}

}  // namespace statelm::cuda
