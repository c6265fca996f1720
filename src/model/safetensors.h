// safetensors reader: an 8-byte little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets}, then the raw data. Files are memory-mapped.
//
// Nothing in the header is trusted: the header length, every offset, every shape and dtype
// is checked against the file size before a byte of tensor data is touched, and overlapping
// tensors are refused. parse_safetensors_header() is separate so the fuzzer can drive it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace statelm {

struct TensorInfo {
  std::string name;
  std::string dtype_code;      // as written: "BF16", "F8_E4M3", ...
  std::optional<DType> dtype;  // empty for dtypes statelm cannot compute with
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;   // byte range relative to the start of the data section

  int64_t numel() const;
  size_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  size_t data_offset = 0;  // 8 + header length
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a safetensors file of `file_size` bytes whose first bytes
// are `data` (at least min(file_size, 8 + header length) bytes must be readable). `source`
// names the file in errors. Throws Error(Format) or Error(Unsupported).
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t file_size, const std::string& source);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const TensorInfo* find(const std::string& name) const;
  const uint8_t* data(const TensorInfo& t) const { return file_.data() + header_.data_offset + t.begin; }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace statelm
