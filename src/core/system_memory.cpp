#include "core/system_memory.h"

#include <fstream>
#include <sstream>
#include <string>

namespace statelm {

SystemMemory system_memory() {
  SystemMemory m;
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    int64_t kib = 0;
    fields >> key >> kib;
    if (key == "MemTotal:") m.total_bytes = kib * 1024;
    if (key == "MemAvailable:") m.available_bytes = kib * 1024;
  }
  return m;
}

}  // namespace statelm
