// Builds safetensors files byte by byte for tests, including deliberately broken ones.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace statelm::test {

struct RawTensor {
  std::string dtype = "F32";
  std::vector<int64_t> shape;
  std::string bytes;
};

// A file with exactly this header text and data section (header length written as given).
inline std::string make_safetensors_raw(const std::string& header, const std::string& data,
                                        uint64_t header_len_override = UINT64_MAX) {
  uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Serialises tensors in order, contiguously, as the format specifies.
inline std::string make_safetensors(const std::vector<std::pair<std::string, RawTensor>>& tensors,
                                    const nlohmann::json& metadata = nullptr) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  return make_safetensors_raw(header.dump(), data);
}

inline RawTensor f32_tensor(std::vector<int64_t> shape, float fill = 1.0f) {
  RawTensor t;
  t.shape = shape;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  t.bytes.resize(size_t(n) * 4);
  for (int64_t i = 0; i < n; ++i) std::memcpy(&t.bytes[size_t(i) * 4], &fill, 4);
  return t;
}

}  // namespace statelm::test
