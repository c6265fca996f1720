// What CUDA devices this process sees. The first piece of the CUDA backend; kernels follow
// in one .cu per family (ssd, selective_scan, conv1d, attention, moe, norm, sampling).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace statelm::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0, free_memory = 0;
};

// Empty when no driver or no device is present (CI machines): never throws for that.
std::vector<DeviceInfo> list_devices();

}  // namespace statelm::cuda
