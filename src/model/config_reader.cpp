#include "model/config_reader.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/mapped_file.h"

namespace statelm {

using Json = nlohmann::json;

ConfigReader::ConfigReader(Json j, std::string source) : json_(std::move(j)), source_(std::move(source)) {
  if (!json_.is_object()) fail(ErrorKind::Format, source_, ": expected a JSON object at the top level");
}

ConfigReader ConfigReader::from_file(const std::string& path) { return parse(read_text_file(path), path); }

ConfigReader ConfigReader::parse(std::string_view text, const std::string& source) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(ErrorKind::Format, source, ": not valid JSON");
  return ConfigReader(std::move(j), source);
}

ConfigReader ConfigReader::child(std::string_view key) const {
  const Json* v = find(key);
  ConfigReader c(v && v->is_object() ? *v : Json::object(), source_);
  if (v && !v->is_object()) fail_key(key, "expected an object");
  c.prefix_ = key_path(key) + ".";
  return c;
}

std::string ConfigReader::key_path(std::string_view key) const { return prefix_ + std::string(key); }

const Json* ConfigReader::find(std::string_view key) const {
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool ConfigReader::has(std::string_view key) const { return find(key) != nullptr; }

std::optional<std::string_view> ConfigReader::first_present(std::initializer_list<std::string_view> keys) const {
  for (auto k : keys)
    if (has(k)) return k;
  return std::nullopt;
}

void ConfigReader::fail_key(std::string_view key, const std::string& why) const {
  fail(ErrorKind::Format, source_, ": ", key_path(key), ": ", why);
}

void ConfigReader::require(bool expected, std::string_view key, const std::string& why) const {
  if (!expected) fail_key(key, why);
}

double ConfigReader::number_at(std::string_view key) const {
  const Json& v = *find(key);
  if (v.is_number()) return v.get<double>();
  // transformers >= 5: {"__float__": "Infinity"} for values JSON cannot hold.
  if (v.is_object() && v.size() == 1 && v.contains("__float__") && v["__float__"].is_string()) {
    const std::string& s = v["__float__"].get_ref<const std::string&>();
    if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
    if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
  }
  fail_key(key, str_cat("expected a number, got ", v.dump()));
}

int64_t ConfigReader::int_at(std::string_view key) const {
  const Json& v = *find(key);
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
  }
  fail_key(key, str_cat("expected an integer, got ", v.dump()));
}

int64_t ConfigReader::get_int(std::initializer_list<std::string_view> keys) const {
  auto k = first_present(keys);
  if (!k) fail_key(*keys.begin(), "missing required key");
  return int_at(*k);
}

double ConfigReader::get_float(std::initializer_list<std::string_view> keys) const {
  auto k = first_present(keys);
  if (!k) fail_key(*keys.begin(), "missing required key");
  return number_at(*k);
}

std::string ConfigReader::get_string(std::initializer_list<std::string_view> keys) const {
  auto k = first_present(keys);
  if (!k) fail_key(*keys.begin(), "missing required key");
  const Json& v = *find(*k);
  if (!v.is_string()) fail_key(*k, str_cat("expected a string, got ", v.dump()));
  return v.get<std::string>();
}

int64_t ConfigReader::int_or(std::initializer_list<std::string_view> keys, int64_t fallback) const {
  auto k = first_present(keys);
  return k ? int_at(*k) : fallback;
}

double ConfigReader::float_or(std::initializer_list<std::string_view> keys, double fallback) const {
  auto k = first_present(keys);
  return k ? number_at(*k) : fallback;
}

bool ConfigReader::bool_or(std::initializer_list<std::string_view> keys, bool fallback) const {
  auto k = first_present(keys);
  if (!k) return fallback;
  const Json& v = *find(*k);
  if (!v.is_boolean()) fail_key(*k, str_cat("expected true or false, got ", v.dump()));
  return v.get<bool>();
}

std::string ConfigReader::string_or(std::initializer_list<std::string_view> keys, std::string fallback) const {
  auto k = first_present(keys);
  return k ? get_string({*k}) : fallback;
}

std::vector<int64_t> ConfigReader::int_list_or(std::initializer_list<std::string_view> keys) const {
  auto k = first_present(keys);
  if (!k) return {};
  const Json& v = *find(*k);
  if (v.is_array()) {
    std::vector<int64_t> out;
    for (const auto& e : v) {
      if (!e.is_number_integer()) fail_key(*k, "expected a list of integers");
      out.push_back(e.get<int64_t>());
    }
    return out;
  }
  return {int_at(*k)};
}

}  // namespace statelm
