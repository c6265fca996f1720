// GPU smoke test, run by scripts/gpu-check on the device: the CUDA backend built for sm_90a
// loads, sees the GPU, and reports it as a Hopper part. Exit code 0 only if so.
#include <cstdio>

#include "backend/cuda/device_info.h"

int main() {
  auto devices = statelm::cuda::list_devices();
  if (devices.empty()) {
    std::printf("FAIL: no CUDA device visible\n");
    return 1;
  }
  int failures = 0;
  for (const auto& d : devices) {
    std::printf("device %d: %s, sm_%d%d, %d SMs, %.1f GiB total, %.1f GiB free\n", d.index, d.name.c_str(), d.sm_major,
                d.sm_minor, d.multiprocessors, double(d.total_memory) / (1u << 30), double(d.free_memory) / (1u << 30));
    if (d.sm_major != 9) {
      std::printf("FAIL: statelm's CUDA backend targets sm_90a, this device is sm_%d%d\n", d.sm_major, d.sm_minor);
      ++failures;
    }
    if (d.free_memory == 0 || d.free_memory > d.total_memory) {
      std::printf("FAIL: free memory reading is not plausible\n");
      ++failures;
    }
  }
  std::printf(failures ? "FAILED\n" : "PASSED\n");
  return failures ? 1 : 0;
}
