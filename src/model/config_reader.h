// Typed access to config.json with errors that name the file and the key at fault.
//
// Hugging Face configs spell the same thing several ways across versions and across the
// original (mamba_ssm) and transformers layouts, so lookups accept a list of alternative keys.
// transformers >= 5 writes non-finite floats as {"__float__": "Infinity"}; that is read too.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace statelm {

class ConfigReader {
 public:
  ConfigReader(nlohmann::json value, std::string source);  // source: "path/config.json"
  static ConfigReader from_file(const std::string& path);
  static ConfigReader parse(std::string_view text, const std::string& source);

  // A nested object ("ssm_cfg", "rope_parameters"); keys are reported as "ssm_cfg.d_state".
  ConfigReader child(std::string_view key) const;  // empty object when absent

  bool has(std::string_view key) const;
  const nlohmann::json* find(std::string_view key) const;  // nullptr when absent or null

  // Required values: the first of `keys` present is used; error if none is present.
  int64_t get_int(std::initializer_list<std::string_view> keys) const;
  double get_float(std::initializer_list<std::string_view> keys) const;
  std::string get_string(std::initializer_list<std::string_view> keys) const;

  // Optional values with defaults.
  int64_t int_or(std::initializer_list<std::string_view> keys, int64_t fallback) const;
  double float_or(std::initializer_list<std::string_view> keys, double fallback) const;
  bool bool_or(std::initializer_list<std::string_view> keys, bool fallback) const;
  std::string string_or(std::initializer_list<std::string_view> keys, std::string fallback) const;
  // An int or a list of ints (eos_token_id may be either).
  std::vector<int64_t> int_list_or(std::initializer_list<std::string_view> keys) const;

  // `expected` must hold: otherwise Error(Format) "<source>: <key>: <why>".
  void require(bool expected, std::string_view key, const std::string& why) const;
  [[noreturn]] void fail_key(std::string_view key, const std::string& why) const;

  const std::string& source() const { return source_; }
  const nlohmann::json& json() const { return json_; }

 private:
  std::optional<std::string_view> first_present(std::initializer_list<std::string_view> keys) const;
  std::string key_path(std::string_view key) const;
  double number_at(std::string_view key) const;
  int64_t int_at(std::string_view key) const;

  nlohmann::json json_;
  std::string source_;
  std::string prefix_;  // "ssm_cfg." for a child
};

}  // namespace statelm
