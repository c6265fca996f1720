// JsonField: typed accessors whose errors name the file and the field.
#include "tokenizer/json_field.h"

namespace statelm::tok {

namespace {

const nlohmann::json& null_json() {
  static const nlohmann::json kNull;
  return kNull;
}

const char* kind_name(const nlohmann::json& v) {
  return v.type_name();  // "object", "array", "string", "number", "boolean", "null"
}

}  // namespace

std::string quote(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string out = "\"";
  size_t i = 0;
  for (; i < s.size() && i < kMax; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20 || c == 0x7f) {
      static const char* kHex = "0123456789abcdef";
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += char(c);
    }
  }
  if (i < s.size()) {
    while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xc0) == 0x80) out.pop_back();  // whole chars
    if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xc0) out.pop_back();
    out += "...";
  }
  return out + "\"";
}

JsonField JsonField::at(const char* key) const {
  const auto& obj = object();
  auto it = obj.find(key);
  if (it == obj.end()) fail(ErrorKind::Format, "is missing the field ", quote(key));
  return JsonField(it->second, path_.empty() ? key : path_ + "." + key, *source_);
}

JsonField JsonField::opt(const char* key) const {
  std::string path = path_.empty() ? key : path_ + "." + key;
  if (!value_->is_object()) return JsonField(null_json(), std::move(path), *source_);
  auto it = value_->find(key);
  if (it == value_->end()) return JsonField(null_json(), std::move(path), *source_);
  return JsonField(*it, std::move(path), *source_);
}

JsonField JsonField::at(size_t index) const {
  return JsonField(array().at(index), path_ + "[" + std::to_string(index) + "]", *source_);
}

const nlohmann::json::object_t& JsonField::object() const {
  if (!value_->is_object()) fail(ErrorKind::Format, "must be an object, not ", kind_name(*value_));
  return *value_->get_ptr<const nlohmann::json::object_t*>();
}

const nlohmann::json::array_t& JsonField::array() const {
  if (!value_->is_array()) fail(ErrorKind::Format, "must be an array, not ", kind_name(*value_));
  return *value_->get_ptr<const nlohmann::json::array_t*>();
}

std::string JsonField::str() const {
  if (!value_->is_string()) fail(ErrorKind::Format, "must be a string, not ", kind_name(*value_));
  return value_->get<std::string>();
}

bool JsonField::boolean() const {
  if (!value_->is_boolean()) fail(ErrorKind::Format, "must be true or false, not ", kind_name(*value_));
  return value_->get<bool>();
}

int64_t JsonField::integer(int64_t min, int64_t max) const {
  int64_t v;
  if (value_->is_number_unsigned()) {
    uint64_t u = value_->get<uint64_t>();
    if (u > uint64_t(max)) fail(ErrorKind::Format, "is ", u, ", above the limit ", max);
    v = int64_t(u);
  } else if (value_->is_number_integer()) {
    v = value_->get<int64_t>();
  } else {
    fail(ErrorKind::Format, "must be an integer, not ", kind_name(*value_));
  }
  if (v < min || v > max) fail(ErrorKind::Format, "is ", v, ", outside [", min, ", ", max, "]");
  return v;
}

std::string JsonField::str_or(const char* key, const std::string& fallback) const {
  JsonField f = opt(key);
  return f.is_null() ? fallback : f.str();
}

bool JsonField::bool_or(const char* key, bool fallback) const {
  JsonField f = opt(key);
  return f.is_null() ? fallback : f.boolean();
}

void JsonField::unsupported_type() const {
  JsonField t = at("type");
  statelm::fail(ErrorKind::Unsupported, *source_, ": ", t.path(), " ", quote(t.str()), " is not supported");
}

}  // namespace statelm::tok
