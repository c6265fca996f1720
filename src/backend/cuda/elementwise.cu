// Element-wise kernels on CUDA: the embedding lookup, SwiGLU, the residual add and a bias add.
//
//   embed:   out[t, :] = table[ids[t], :]                       (a row copy, no conversion)
//   swiglu:  out[t, i] = silu(g[t, i]) * u[t, i],  g = gate_up[t, :F], u = gate_up[t, F:]
//            silu(v) = v / (1 + exp(-v)), in fp32, rounded once
//   add:     acc[t, i] = round(acc[t, i] + x[t, i])
//   bias:    out[t, n] = round(out[t, n] + bias[n])            (bias fp32; GEMM epilogue stand-in)
//
// All are bandwidth-bound: one block per row (grid.x = rows, so any row count fits), threads
// walking the row in 16-byte packs when pointers, strides and widths allow, else per element;
// consecutive threads touch consecutive addresses (coalesced).
#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/pdl.cuh"

namespace statelm::cuda {

namespace {

template <typename T, int VEC>
__global__ void embed_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table, int64_t table_stride,
                             T* __restrict__ out, int64_t out_stride, int d) {
  const T* src = table + int64_t(ids[blockIdx.x]) * table_stride;
  T* dst = out + int64_t(blockIdx.x) * out_stride;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC)
    *reinterpret_cast<Pack<T, VEC>*>(dst + i) = *reinterpret_cast<const Pack<T, VEC>*>(src + i);
}

template <typename T, int VEC>
__global__ void swiglu_kernel(const T* gate_up, int64_t gu_stride, T* __restrict__ out, int64_t out_stride,
                              int f) {
  pdl_allow_dependents();  // the down projection may start streaming its weights
  pdl_wait();              // launched as a dependent itself (pdl_chain): gate_up is the kernel ahead's output
  const T* g = gate_up + int64_t(blockIdx.x) * gu_stride;
  T* o = out + int64_t(blockIdx.x) * out_stride;
  for (int i = threadIdx.x * VEC; i < f; i += blockDim.x * VEC) {
    float a[VEC], b[VEC];
    load_f32<T, VEC>(g + i, a);
    load_f32<T, VEC>(g + f + i, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) a[j] = silu(a[j]) * b[j];
    store_f32<T, VEC>(o + i, a);
  }
}

template <typename T, int VEC>
__global__ void add_kernel(T* acc, int64_t acc_stride, const T* x, int64_t x_stride, int d) {
  T* a = acc + int64_t(blockIdx.x) * acc_stride;
  const T* b = x + int64_t(blockIdx.x) * x_stride;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float u[VEC], v[VEC];
    load_f32<T, VEC>(a + i, u);
    load_f32<T, VEC>(b + i, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) u[j] += v[j];
    store_f32<T, VEC>(a + i, u);
  }
}

template <typename T>
__global__ void scale_bias_kernel(T* out, int64_t out_stride, const float* __restrict__ bias, RowScale scale, int n) {
  __shared__ float shared[32];
  const int64_t t = blockIdx.x;
  T* o = out + t * out_stride;
  float mul = 1.0f;
  if (scale.sumsq) {  // uniform across the block
    const float s = strided_sum(scale.sumsq + t * scale.ld, scale.partials, threadIdx.x, blockDim.x);
    mul = rsqrtf(block_sum(s, shared) * scale.inv_n + scale.eps);
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = from_f32<T>(to_f32(o[i]) * mul + (bias ? bias[i] : 0.0f));
}

template <typename T>
bool vectorizable(int64_t width, std::initializer_list<std::pair<const void*, int64_t>> rows) {
  if (width % kVec16<T>) return false;
  for (auto [p, stride] : rows)
    if (!aligned_for(p, stride, sizeof(T), 16)) return false;
  return true;
}

}  // namespace

void embed(const int32_t* ids, const Tensor& table, const Tensor& out, cudaStream_t stream) {
  const int64_t n = out.shape[0], d = out.shape[1];
  if (n == 0) return;
  dispatch_float(out.dtype, "embed", [&](auto tag) {
    using T = decltype(tag);
    const bool vec = vectorizable<T>(d, {{table.data, table.stride[0]}, {out.data, out.stride[0]}});
    const int threads = row_threads(vec ? d / kVec16<T> : d, n);
    if (vec)
      embed_kernel<T, kVec16<T>><<<unsigned(n), threads, 0, stream>>>(ids, table.ptr<const T>(), table.stride[0],
                                                                     out.ptr<T>(), out.stride[0], int(d));
    else
      embed_kernel<T, 1><<<unsigned(n), threads, 0, stream>>>(ids, table.ptr<const T>(), table.stride[0], out.ptr<T>(),
                                                             out.stride[0], int(d));
  });
  STATELM_CUDA_LAUNCHED("embed table ", table.describe(), " out ", out.describe());
}

void swiglu(const Tensor& gate_up, const Tensor& out, cudaStream_t stream) {
  const int64_t n = out.shape[0], f = out.shape[1];
  if (n == 0) return;
  dispatch_float(out.dtype, "swiglu", [&](auto tag) {
    using T = decltype(tag);
    // The up half starts f elements into the row: f % VEC == 0 keeps it aligned too.
    const bool vec = vectorizable<T>(f, {{gate_up.data, gate_up.stride[0]}, {out.data, out.stride[0]}});
    const int threads = row_threads(vec ? f / kVec16<T> : f, n);
    STATELM_CUDA_CHECK(launch_pdl_if(pdl_chain(), vec ? swiglu_kernel<T, kVec16<T>> : swiglu_kernel<T, 1>,
                                     dim3(unsigned(n)), dim3(unsigned(threads)), stream, gate_up.ptr<const T>(),
                                     gate_up.stride[0], out.ptr<T>(), out.stride[0], int(f)),
                       "swiglu gate_up ", gate_up.describe());
  });
  STATELM_CUDA_LAUNCHED("swiglu gate_up ", gate_up.describe(), " out ", out.describe());
}

void add(const Tensor& acc, const Tensor& x, cudaStream_t stream) {
  const int64_t n = acc.shape[0], d = acc.shape[1];
  if (n == 0) return;
  dispatch_float(acc.dtype, "add", [&](auto tag) {
    using T = decltype(tag);
    const bool vec = vectorizable<T>(d, {{acc.data, acc.stride[0]}, {x.data, x.stride[0]}});
    const int threads = row_threads(vec ? d / kVec16<T> : d, n);
    if (vec)
      add_kernel<T, kVec16<T>><<<unsigned(n), threads, 0, stream>>>(acc.ptr<T>(), acc.stride[0], x.ptr<const T>(),
                                                                   x.stride[0], int(d));
    else
      add_kernel<T, 1><<<unsigned(n), threads, 0, stream>>>(acc.ptr<T>(), acc.stride[0], x.ptr<const T>(), x.stride[0],
                                                           int(d));
  });
  STATELM_CUDA_LAUNCHED("add acc ", acc.describe(), " x ", x.describe());
}

RowScale row_scale_of(const RowRms& rms) {
  RowScale s;
  s.sumsq = rms.sumsq.ptr<const float>();
  s.ld = rms.sumsq.stride[0];
  s.partials = int(rms.sumsq.shape[1]);
  s.inv_n = 1.0f / float(rms.n);
  s.eps = rms.eps;
  return s;
}

void scale_add_bias(const Tensor& out, const Tensor& bias, const RowScale& scale, cudaStream_t stream) {
  const int64_t n = out.shape[0], d = out.shape[1];
  if (n == 0) return;
  const float* b = bias.defined() ? bias.ptr<const float>() : nullptr;
  dispatch_float(out.dtype, "bias", [&](auto tag) {
    using T = decltype(tag);
    scale_bias_kernel<T><<<unsigned(n), row_threads(d, n), 0, stream>>>(out.ptr<T>(), out.stride[0], b, scale, int(d));
  });
  STATELM_CUDA_LAUNCHED("scale/bias out ", out.describe(), " bias ", bias.describe());
}

}  // namespace statelm::cuda
