// libFuzzer target: arbitrary bytes as a safetensors file. Errors are fine; crashes, leaks,
// out-of-bounds reads and undefined behaviour are not. The parser is fed a buffer of exactly
// the input's size, so ASan catches any read beyond what the header's checks allow.
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> copy(data, data + size);  // heap copy: exact bounds for ASan
  try {
    statelm::SafetensorsHeader h = statelm::parse_safetensors_header(copy.data(), copy.size(), "fuzz.safetensors");
    // Touch every byte range the parser accepted: it must be inside the buffer.
    volatile uint8_t sink = 0;
    for (const auto& t : h.tensors)
      if (t.nbytes()) sink = sink ^ copy[h.data_offset + t.begin] ^ copy[h.data_offset + t.end - 1];
  } catch (const statelm::Error&) {
  }
  return 0;
}
