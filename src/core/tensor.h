// Tensor: a non-owning, strided view of up to 4 dimensions on one device; Buffer: the memory
// behind it. Ops take views so that column slices (x, z and dt of one in_proj output) cost
// nothing; kernels require the last dimension to be contiguous and read the other strides.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace statelm {

enum class Device : uint8_t { Cpu, Cuda };

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::Cpu;
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  int64_t stride[4] = {0, 0, 0, 0};  // in elements

  // A contiguous row-major view of `shape`.
  static Tensor contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = Device::Cpu);

  bool defined() const { return data != nullptr; }
  int64_t numel() const;
  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  bool is_contiguous() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }

  // Rows [begin, begin + count) of dimension 0.
  Tensor rows(int64_t begin, int64_t count) const;
  // Columns [begin, begin + count) of the last dimension (a strided view).
  Tensor cols(int64_t begin, int64_t count) const;
  // The same memory seen with another shape; requires a contiguous tensor.
  Tensor reshape(std::initializer_list<int64_t> shape) const;
  // Splits a 2-D [rows, a*b] row-strided view into [rows, a, b] (last dim contiguous).
  Tensor unflatten_last(int64_t a, int64_t b) const;

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
  float* f32() const;  // checks dtype == F32 and device == Cpu
  // "[4, 16] f32 (strides [32, 1])" for error messages.
  std::string describe() const;
};

// Owning memory for tensors; the allocator decides where it lives (host or device).
class Buffer {
 public:
  Buffer() = default;
  Buffer(void* data, size_t bytes, Device device, void (*free_fn)(void*)) : data_(data, free_fn), bytes_(bytes), device_(device) {}
  void* data() const { return data_.get(); }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  explicit operator bool() const { return bool(data_); }

 private:
  std::unique_ptr<void, void (*)(void*)> data_{nullptr, [](void*) {}};
  size_t bytes_ = 0;
  Device device_ = Device::Cpu;
};

// 64-byte aligned, zero-filled host memory (cache lines and AVX-512 loads).
Buffer host_buffer(size_t bytes);
// The bytes host_buffer(bytes) takes: a multiple of 64, at least 64 (what the memory planner
// counts per allocation on the CPU, runtime/memory_plan.h).
size_t host_allocation_size(size_t bytes);

// Every host_buffer alive in this process, as the CUDA allocator reports device memory: bytes
// in use (host_allocation_size of each) and the most ever in use since the last reset.
struct HostBufferStats {
  size_t in_use = 0, peak_in_use = 0;
};
HostBufferStats host_buffer_stats();
// Restarts the peak from what is in use now (a measurement of one phase).
void reset_host_buffer_peak();

}  // namespace statelm
