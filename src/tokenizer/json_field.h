// Typed access to tokenizer.json values that knows where each value came from.
//
// Every error a tokenizer.json can cause must name the file and the JSON field at fault
// ("tokenizer.json: model.merges[3]: ..."), so parsers never touch nlohmann::json directly:
// they walk JsonField values, which carry their path and throw statelm::Error themselves.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>

#include "core/error.h"

namespace statelm::tok {

// `s` in double quotes for an error message: control characters escaped (messages are one
// line) and long strings cut, since tokens come from the file and can be anything.
std::string quote(std::string_view s);

class JsonField {
 public:
  JsonField(const nlohmann::json& value, std::string path, const std::string& source)
      : value_(&value), path_(std::move(path)), source_(&source) {}

  const nlohmann::json& json() const { return *value_; }
  const std::string& path() const { return path_; }
  const std::string& source() const { return *source_; }
  bool is_null() const { return value_->is_null(); }

  // A member of an object. at() requires it (and the object); opt() gives a null field when
  // the member is absent, which the *_or accessors then read as "use the default".
  JsonField at(const char* key) const;
  JsonField opt(const char* key) const;
  JsonField at(size_t index) const;  // element of an array (caller checked the size)

  const nlohmann::json::object_t& object() const;
  const nlohmann::json::array_t& array() const;
  std::string str() const;
  bool boolean() const;
  int64_t integer(int64_t min, int64_t max) const;

  std::string str_or(const char* key, const std::string& fallback) const;
  bool bool_or(const char* key, bool fallback) const;

  // The "type" tag of a component (normalizer, pre-tokenizer, model, ...).
  std::string type() const { return at("type").str(); }

  template <typename... Parts>
  [[noreturn]] void fail(ErrorKind kind, Parts&&... parts) const {
    statelm::fail(kind, *source_, ": ", path_, " ", std::forward<Parts>(parts)...);
  }
  // `<path>.type "X" is not supported` for a component statelm does not implement.
  [[noreturn]] void unsupported_type() const;

 private:
  const nlohmann::json* value_;
  std::string path_;
  const std::string* source_;
};

}  // namespace statelm::tok
