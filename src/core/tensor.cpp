#include "core/tensor.h"

#include <atomic>
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

namespace {

// The allocation's size sits in a 64-byte prefix before the memory handed out, so that the
// deleter (a plain function) can count it back.
constexpr size_t kHostPrefix = 64;
std::atomic<size_t> host_in_use{0}, host_peak{0};

void host_free(void* p) {
  if (!p) return;
  char* base = static_cast<char*>(p) - kHostPrefix;
  size_t size;
  std::memcpy(&size, base, sizeof size);
  host_in_use.fetch_sub(size, std::memory_order_relaxed);
  std::free(base);
}

}  // namespace

size_t host_allocation_size(size_t bytes) { return bytes == 0 ? 64 : (bytes + 63) / 64 * 64; }

Buffer host_buffer(size_t bytes) {
  const size_t rounded = host_allocation_size(bytes);
  char* base = static_cast<char*>(std::aligned_alloc(64, rounded + kHostPrefix));
  if (!base) fail(ErrorKind::OutOfMemory, "cannot allocate ", bytes, " bytes of host memory");
  std::memcpy(base, &rounded, sizeof rounded);
  std::memset(base + kHostPrefix, 0, rounded);
  const size_t now = host_in_use.fetch_add(rounded, std::memory_order_relaxed) + rounded;
  size_t peak = host_peak.load(std::memory_order_relaxed);
  while (now > peak && !host_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  return Buffer(base + kHostPrefix, bytes, Device::Cpu, host_free);
}

HostBufferStats host_buffer_stats() {
  return HostBufferStats{host_in_use.load(std::memory_order_relaxed), host_peak.load(std::memory_order_relaxed)};
}

void reset_host_buffer_peak() { host_peak.store(host_in_use.load(std::memory_order_relaxed), std::memory_order_relaxed); }

}  // namespace statelm
