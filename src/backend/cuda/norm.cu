// RMSNorm family on CUDA, as transformers computes it (fp32 statistics whatever the dtype):
//
//   rms_norm:        out[t, i] = w[i] * (x[t, i] / sqrt(mean_i(x[t, i]^2) + eps))
//   add_rms_norm:    r[t, i] = round(r[t, i] + x[t, i]);  out = rms_norm(r)
//                    (the pre-norm residual update fused with the next block's norm: one read
//                    of r and x, one write of r and out, instead of an add kernel and a norm)
//   add_sum_squares: r[t, i] = round(r[t, i] + x[t, i]);  out = r * w;  sumsq[t, 0] = sum_i r^2
//                    (a split block norm, ResidualAdd, where no linear layer folds the add in)
//   gated_rms_norm:  g[t, i] = y[t, i] * silu(z[t, i]);  per group G of group_size channels:
//                    out[t, i] = w[i] * g[t, i] / sqrt(mean_{i in G}(g^2) + eps)   (Mamba-2)
//
// One block per row (per row and group for the gated norm): the block reduces the sum of squares
// in fp32 (warp shuffles, then across warps through shared memory), then scales. Rows are read
// with 16-byte accesses when pointers, strides and widths allow it (8 bf16 / 4 fp32 per access),
// coalesced across the block; the second pass re-reads the row, which the first pass left in L1/L2.
// Each kernel lets the next kernel launch at once (pdl.cuh): the linear layer that follows a norm
// in a decode step streams its weights while the norm runs.
// The residual of add_rms_norm is rounded to its dtype before it is squared, so the norm sees
// exactly the residual the next block adds to (as the CPU backend and transformers do).
#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/pdl.cuh"

namespace statelm::cuda {

namespace {

template <typename T, int VEC>
__global__ void rms_norm_kernel(const T* x, int64_t x_stride, const float* __restrict__ w, T* out,
                                int64_t out_stride, int d, float eps) {
  __shared__ float shared[32];
  pdl_allow_dependents();  // the linear layer after the norm may start streaming its weights
  const T* xr = x + int64_t(blockIdx.x) * x_stride;
  T* o = out + int64_t(blockIdx.x) * out_stride;
  float ss = 0.0f;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float v[VEC];
    load_f32<T, VEC>(xr + i, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) ss += v[j] * v[j];
  }
  const float inv = 1.0f / sqrtf(block_sum(ss, shared) / float(d) + eps);
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float v[VEC];
    load_f32<T, VEC>(xr + i, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = w[i + j] * (v[j] * inv);
    store_f32<T, VEC>(o + i, v);
  }
}

// With sums (add_sum_squares: ResidualAdd without a linear layer to fold it into), the row's sum
// of squares goes to sums[row * sums_ld] and zeros to the row's other partials, and out is the
// row times w, not divided by its RMS.
template <typename T, int VEC>
__global__ void add_rms_norm_kernel(T* residual, int64_t r_stride, const T* x, int64_t x_stride,
                                    const float* __restrict__ w, T* out, int64_t out_stride, int d, float eps,
                                    float* sums, int64_t sums_ld, int partials) {
  __shared__ float shared[32];
  pdl_allow_dependents();  // the linear layer after the norm may start streaming its weights
  // Launched as a programmatic dependent itself (pdl_chain): x is the output of the kernel ahead.
  pdl_wait();
  T* r = residual + int64_t(blockIdx.x) * r_stride;
  const T* xr = x + int64_t(blockIdx.x) * x_stride;
  T* o = out + int64_t(blockIdx.x) * out_stride;
  float ss = 0.0f;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float a[VEC], b[VEC];
    load_f32<T, VEC>(r + i, a);
    load_f32<T, VEC>(xr + i, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) a[j] = to_f32(from_f32<T>(a[j] + b[j]));  // the stored value
    store_f32<T, VEC>(r + i, a);
#pragma unroll
    for (int j = 0; j < VEC; ++j) ss += a[j] * a[j];
  }
  const float total = block_sum(ss, shared);
  if (sums)
    for (int j = threadIdx.x; j < partials; j += blockDim.x) sums[blockIdx.x * sums_ld + j] = j == 0 ? total : 0.0f;
  const float inv = sums ? 1.0f : 1.0f / sqrtf(total / float(d) + eps);
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float v[VEC];
    load_f32<T, VEC>(r + i, v);  // this thread's own store above
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = w[i + j] * (v[j] * inv);
    store_f32<T, VEC>(o + i, v);
  }
}

// Block (row t, group g) over channels [g * group, (g + 1) * group).
template <typename T, int VEC>
__global__ void gated_rms_norm_kernel(const T* y, int64_t y_stride, const T* __restrict__ z,
                                      int64_t z_stride, const float* __restrict__ w, T* out, int64_t out_stride,
                                      int group, float eps) {
  __shared__ float shared[32];
  pdl_allow_dependents();  // the linear layer after the norm may start streaming its weights
  const int64_t t = blockIdx.x, base = int64_t(blockIdx.y) * group;
  const T* yr = y + t * y_stride + base;
  const T* zr = z + t * z_stride + base;
  T* o = out + t * out_stride + base;
  float ss = 0.0f;
  for (int i = threadIdx.x * VEC; i < group; i += blockDim.x * VEC) {
    float a[VEC], b[VEC];
    load_f32<T, VEC>(yr + i, a);
    load_f32<T, VEC>(zr + i, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float g = a[j] * silu(b[j]);
      ss += g * g;
    }
  }
  const float inv = 1.0f / sqrtf(block_sum(ss, shared) / float(group) + eps);
  for (int i = threadIdx.x * VEC; i < group; i += blockDim.x * VEC) {
    float a[VEC], b[VEC];
    load_f32<T, VEC>(yr + i, a);
    load_f32<T, VEC>(zr + i, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) a[j] = w[base + i + j] * (a[j] * silu(b[j]) * inv);
    store_f32<T, VEC>(o + i, a);
  }
}

// Whether every view allows packs of kVec16<T> elements along rows of `width`.
template <typename T>
bool can_vectorize(int64_t width, std::initializer_list<const Tensor*> ts) {
  constexpr int v = kVec16<T>;
  if (width % v) return false;
  for (const Tensor* t : ts)
    if (!aligned_for(t->data, t->stride[0], sizeof(T), 16)) return false;
  return true;
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out, cudaStream_t stream) {
  const int64_t n = x.shape[0], d = x.shape[1];
  if (n == 0) return;
  dispatch_float(x.dtype, "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vectorize<T>(d, {&x, &out});
    const int threads = row_threads(vec ? d / kVec16<T> : d, n);
    auto* xp = x.ptr<const T>();
    auto* op = out.ptr<T>();
    if (vec)
      rms_norm_kernel<T, kVec16<T>><<<unsigned(n), threads, 0, stream>>>(xp, x.stride[0], weight.ptr<const float>(), op,
                                                                        out.stride[0], int(d), eps);
    else
      rms_norm_kernel<T, 1><<<unsigned(n), threads, 0, stream>>>(xp, x.stride[0], weight.ptr<const float>(), op,
                                                                out.stride[0], int(d), eps);
  });
  STATELM_CUDA_LAUNCHED("rms_norm x ", x.describe(), " out ", out.describe());
}

namespace {
// add_rms_norm, or add_sum_squares (sums defined).
void launch_add_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                     const Tensor& sums, cudaStream_t stream, const char* op) {
  const int64_t n = residual.shape[0], d = residual.shape[1];
  if (n == 0) return;
  dispatch_float(residual.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vectorize<T>(d, {&residual, &x, &out});
    const int threads = row_threads(vec ? d / kVec16<T> : d, n);
    STATELM_CUDA_CHECK(launch_pdl_if(pdl_chain(), vec ? add_rms_norm_kernel<T, kVec16<T>> : add_rms_norm_kernel<T, 1>,
                                     dim3(unsigned(n)), dim3(unsigned(threads)), stream, residual.ptr<T>(),
                                     residual.stride[0], x.ptr<const T>(), x.stride[0], weight.ptr<const float>(),
                                     out.ptr<T>(), out.stride[0], int(d), eps,
                                     sums.defined() ? sums.ptr<float>() : nullptr,
                                     sums.defined() ? sums.stride[0] : 0, sums.defined() ? int(sums.shape[1]) : 0),
                       op, " residual ", residual.describe());
  });
  STATELM_CUDA_LAUNCHED(op, " residual ", residual.describe(), " x ", x.describe());
}
}  // namespace

void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
                  cudaStream_t stream) {
  launch_add_norm(residual, x, weight, eps, out, Tensor{}, stream, "add_rms_norm");
}

void add_sum_squares(const Tensor& residual, const Tensor& x, const Tensor& weight, const Tensor& normed,
                     const Tensor& sumsq, cudaStream_t stream) {
  launch_add_norm(residual, x, weight, 0.0f, normed, sumsq, stream, "add_sum_squares");
}

void gated_rms_norm(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t group_size, float eps,
                    const Tensor& out, cudaStream_t stream) {
  const int64_t n = y.shape[0], d = y.shape[1];
  if (n == 0) return;
  const dim3 grid(unsigned(n), unsigned(d / group_size));
  dispatch_float(y.dtype, "gated_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vectorize<T>(group_size, {&y, &z, &out});
    const int threads = row_threads(vec ? group_size / kVec16<T> : group_size, int64_t(grid.x) * grid.y);
    if (vec)
      gated_rms_norm_kernel<T, kVec16<T>><<<grid, threads, 0, stream>>>(
          y.ptr<const T>(), y.stride[0], z.ptr<const T>(), z.stride[0], weight.ptr<const float>(), out.ptr<T>(),
          out.stride[0], int(group_size), eps);
    else
      gated_rms_norm_kernel<T, 1><<<grid, threads, 0, stream>>>(y.ptr<const T>(), y.stride[0], z.ptr<const T>(),
                                                               z.stride[0], weight.ptr<const float>(), out.ptr<T>(),
                                                               out.stride[0], int(group_size), eps);
  });
  STATELM_CUDA_LAUNCHED("gated_rms_norm y ", y.describe(), " z ", z.describe(), " out ", out.describe(), " group ",
                        group_size);
}

}  // namespace statelm::cuda
