// libFuzzer target: arbitrary bytes as config.json -> ModelSpec -> expected tensors and memory
// figures. Any input must give a spec or a statelm::Error, never a crash or UB (e.g. overflow
// in the byte counts of absurd dimensions).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "model/arch/arch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto cfg = statelm::ConfigReader::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
    statelm::ModelSpec spec = statelm::spec_from_config(cfg);
    if (spec.n_layers() > 4096 || spec.d_model > (1 << 20)) return 0;  // valid but not worth listing
    (void)statelm::expected_tensors(spec);
    (void)statelm::memory_figures(spec, statelm::DType::F32, statelm::DType::BF16);
  } catch (const statelm::Error&) {
  }
  return 0;
}
