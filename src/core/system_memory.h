// How much host memory this machine has and has free, for budgets given as a fraction of RAM.
#pragma once

#include <cstdint>

namespace statelm {

struct SystemMemory {
  int64_t total_bytes = 0;      // MemTotal
  int64_t available_bytes = 0;  // MemAvailable: what can be taken without swapping
};

// From /proc/meminfo; zeros when it cannot be read (the caller then has no budget to derive).
SystemMemory system_memory();

}  // namespace statelm
