// The caching device allocator (see cuda_allocator.h for the policy).
#include <cuda_runtime.h>

#include <mutex>
#include <unordered_map>
#include <vector>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_common.h"

namespace statelm::cuda {

namespace {

constexpr size_t kMinBlock = 512;            // cudaMalloc aligns to 256 B; 512 B keeps classes few
constexpr size_t kSmallLimit = size_t(1) << 20;  // up to here: powers of two
constexpr size_t kLargeGranule = size_t(2) << 20;

size_t size_class(size_t bytes) {
  if (bytes <= kMinBlock) return kMinBlock;
  if (bytes <= kSmallLimit) {
    size_t c = kMinBlock;
    while (c < bytes) c <<= 1;
    return c;
  }
  return (bytes + kLargeGranule - 1) / kLargeGranule * kLargeGranule;
}

struct Block {
  int device;
  size_t size;  // its size class
};

class CachingAllocator {
 public:
  void* allocate(int device, size_t bytes) {
    const size_t cls = size_class(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& list = free_[device][cls];
      if (!list.empty()) {
        void* p = list.back();
        list.pop_back();
        DeviceStats& s = stats_[device];
        s.cached -= cls;
        note_in_use(s, cls);
        live_[p] = Block{device, cls};
        return p;
      }
    }
    void* p = nullptr;
    int previous = 0;
    STATELM_CUDA_CHECK(cudaGetDevice(&previous), "device memory");
    if (previous != device) STATELM_CUDA_CHECK(cudaSetDevice(device), "device memory: select device ", device);
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky, but clear it so the retry's status is its own
      release_cached(device);
      err = cudaMalloc(&p, cls);
    }
    if (previous != device) cudaSetDevice(previous);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      const AllocatorStats s = stats(device);
      fail(ErrorKind::OutOfMemory, "CUDA device ", device, ": cannot allocate ", bytes, " bytes (", free_bytes,
           " of ", total, " bytes free; statelm holds ", s.in_use, " in use)");
    }
    STATELM_CUDA_CHECK(err, "device memory: cudaMalloc of ", bytes, " bytes");
    std::lock_guard<std::mutex> lock(mu_);
    DeviceStats& s = stats_[device];
    ++s.device_allocs;
    note_in_use(s, cls);
    live_[p] = Block{device, cls};
    return p;
  }

  void free(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours: a bug, but a deleter must not throw
    const Block b = it->second;
    live_.erase(it);
    DeviceStats& s = stats_[b.device];
    s.in_use -= b.size;
    s.cached += b.size;
    free_[b.device][b.size].push_back(p);
  }

  void release_cached(int device) {
    std::vector<void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [cls, list] : free_[device]) {
        blocks.insert(blocks.end(), list.begin(), list.end());
        list.clear();
      }
      DeviceStats& s = stats_[device];
      s.device_frees += blocks.size();
      s.cached = 0;
    }
    // cudaFree waits for the device: no kernel still queued may read a block freed here.
    for (void* p : blocks) cudaFree(p);
  }

  AllocatorStats stats(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_[device];
  }

 private:
  using DeviceStats = AllocatorStats;
  static void note_in_use(DeviceStats& s, size_t cls) {
    s.in_use += cls;
    if (s.in_use > s.peak_in_use) s.peak_in_use = s.in_use;
  }

  std::mutex mu_;
  std::unordered_map<void*, Block> live_;
  std::unordered_map<int, std::unordered_map<size_t, std::vector<void*>>> free_;  // device -> class -> blocks
  std::unordered_map<int, DeviceStats> stats_;
};

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator;  // never destroyed: see the header
  return *a;
}

void free_block(void* p) { allocator().free(p); }

}  // namespace

Buffer device_alloc(int device, size_t bytes) {
  void* p = allocator().allocate(device, bytes == 0 ? 1 : bytes);
  return Buffer(p, bytes, Device::Cuda, free_block);
}

size_t allocation_size(size_t bytes) { return size_class(bytes == 0 ? 1 : bytes); }

AllocatorStats allocator_stats(int device) { return allocator().stats(device); }

void release_cached(int device) { allocator().release_cached(device); }

}  // namespace statelm::cuda
