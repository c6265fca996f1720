#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace statelm {

Tensor Tensor::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device) {
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = int(shape.size());
  STATELM_CHECK(t.ndim <= 4, "tensors have at most 4 dimensions");
  int i = 0;
  for (int64_t d : shape) t.shape[i++] = d;
  int64_t s = 1;
  for (int k = t.ndim - 1; k >= 0; --k) {
    t.stride[k] = s;
    s *= t.shape[k];
  }
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t s = 1;
  for (int k = ndim - 1; k >= 0; --k) {
    if (shape[k] != 1 && stride[k] != s) return false;
    s *= shape[k];
  }
  return true;
}

Tensor Tensor::rows(int64_t begin, int64_t count) const {
  STATELM_CHECK(ndim >= 1 && begin >= 0 && begin + count <= shape[0], describe(), " rows ", begin, "+", count);
  Tensor t = *this;
  t.data = static_cast<char*>(data) + size_t(begin * stride[0]) * dtype_size(dtype);
  t.shape[0] = count;
  return t;
}

Tensor Tensor::cols(int64_t begin, int64_t count) const {
  const int last = ndim - 1;
  STATELM_CHECK(ndim >= 1 && begin >= 0 && begin + count <= shape[last], describe(), " cols ", begin, "+", count);
  Tensor t = *this;
  t.data = static_cast<char*>(data) + size_t(begin * stride[last]) * dtype_size(dtype);
  t.shape[last] = count;
  return t;
}

Tensor Tensor::reshape(std::initializer_list<int64_t> new_shape) const {
  STATELM_CHECK(is_contiguous(), "reshape of a strided view ", describe());
  Tensor t = contiguous(data, dtype, new_shape, device);
  STATELM_CHECK(t.numel() == numel(), "reshape ", describe(), " to ", t.describe());
  return t;
}

Tensor Tensor::unflatten_last(int64_t a, int64_t b) const {
  STATELM_CHECK(ndim == 2 && shape[1] == a * b && stride[1] == 1, "unflatten ", describe());
  Tensor t = *this;
  t.ndim = 3;
  t.shape[1] = a;
  t.shape[2] = b;
  t.stride[1] = b;
  t.stride[2] = 1;
  return t;
}

float* Tensor::f32() const {
  STATELM_CHECK(dtype == DType::F32 && device == Device::Cpu, "expected a host float32 tensor, got ", describe());
  return static_cast<float*>(data);
}

std::string Tensor::describe() const {
  std::ostringstream s;
  s << '[';
  for (int i = 0; i < ndim; ++i) s << (i ? ", " : "") << shape[i];
  s << "] " << dtype_name(dtype) << " (strides [";
  for (int i = 0; i < ndim; ++i) s << (i ? ", " : "") << stride[i];
  s << "])" << (device == Device::Cuda ? " cuda" : "");
  return s.str();
}

Buffer host_buffer(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail(ErrorKind::OutOfMemory, "cannot allocate ", bytes, " bytes of host memory");
  std::memset(p, 0, rounded);
  return Buffer(p, bytes, Device::Cpu, std::free);
}

}  // namespace statelm
