#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace statelm {

namespace {

// The Rust reference implementation refuses headers over 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Element sizes of every dtype the format defines, so that tensors statelm does not compute with
// (e.g. an FP8 scale) are still validated against the file.
std::optional<size_t> element_size(const std::string& code) {
  static const std::pair<const char*, size_t> sizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
  for (const auto& [name, size] : sizes)
    if (code == name) return size;
  return std::nullopt;
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t file_size, const std::string& source) {
  using nlohmann::json;
  if (file_size < 8) fail(ErrorKind::Format, source, ": truncated (", file_size, " bytes; a safetensors file starts with an 8-byte header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > kMaxHeaderBytes) fail(ErrorKind::Format, source, ": header length ", header_len, " exceeds the 100 MB limit");
  if (header_len > file_size - 8)
    fail(ErrorKind::Format, source, ": header length ", header_len, " is larger than the file (", file_size, " bytes)");

  SafetensorsHeader h;
  h.data_offset = size_t(8 + header_len);
  const size_t data_size = file_size - h.data_offset;
  const char* text = reinterpret_cast<const char*>(data + 8);
  json j = json::parse(text, text + header_len, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(ErrorKind::Format, source, ": header is not valid JSON");
  if (!j.is_object()) fail(ErrorKind::Format, source, ": header is not a JSON object");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(ErrorKind::Format, source, ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(ErrorKind::Format, source, ": __metadata__.", m.key(), " is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) { fail(ErrorKind::Format, source, ": tensor '", name, "': ", why); };
    if (!v.is_object()) bad("entry is not an object");
    auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) bad("missing or non-string \"dtype\"");
    if (sh == v.end() || !sh->is_array()) bad("missing or non-array \"shape\"");
    if (off == v.end() || !off->is_array() || off->size() != 2) bad("\"data_offsets\" must be [begin, end]");

    TensorInfo t;
    t.name = name;
    t.dtype_code = dt->get<std::string>();
    std::optional<size_t> esize = element_size(t.dtype_code);
    if (!esize) fail(ErrorKind::Unsupported, source, ": tensor '", name, "': unknown dtype \"", t.dtype_code, "\"");
    t.dtype = dtype_from_safetensors(t.dtype_code);

    uint64_t expected_bytes = *esize;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned()) bad("shape entries must be non-negative integers");
      uint64_t dim = d.get<uint64_t>();
      if (dim > uint64_t(INT64_MAX) || mul_overflows(expected_bytes, dim, &expected_bytes)) bad("shape overflows");
      t.shape.push_back(int64_t(dim));
    }
    for (const json& o : *off)
      if (!o.is_number_unsigned()) bad("data_offsets must be non-negative integers");
    uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end) bad(str_cat("data_offsets [", begin, ", ", end, "] are reversed"));
    if (end > data_size)
      bad(str_cat("data_offsets [", begin, ", ", end, "] run past the end of the file (data section is ", data_size, " bytes)"));
    if (end - begin != expected_bytes)
      bad(str_cat("holds ", end - begin, " bytes but shape ", t.shape.size(), "-d ", t.dtype_code, " needs ", expected_bytes));
    t.begin = size_t(begin);
    t.end = size_t(end);
    h.tensors.push_back(std::move(t));
  }

  // No two tensors may share bytes (a crafted file could alias weights otherwise).
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : h.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* prev = by_offset[i - 1];
    const TensorInfo* cur = by_offset[i];
    if (cur->begin < prev->end && cur->nbytes() > 0 && prev->nbytes() > 0)
      fail(ErrorKind::Format, source, ": tensors '", prev->name, "' and '", cur->name, "' overlap");
  }
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  header_ = parse_safetensors_header(file_.data(), file_.size(), path);
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

}  // namespace statelm
