// A Hugging Face checkpoint folder: model.safetensors, or shards listed in
// model.safetensors.index.json. Gives tensors by name and checks them against a ModelSpec.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/model_spec.h"
#include "model/safetensors.h"

namespace statelm {

struct TensorRef {
  const TensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  const SafetensorsFile* file = nullptr;
};

class Checkpoint {
 public:
  // Opens <dir>/model.safetensors or <dir>/model.safetensors.index.json. Throws Error(Io) when
  // neither exists, Error(Format) for a malformed file or index.
  static Checkpoint open(const std::string& dir);
  static bool exists_in(const std::string& dir);

  std::optional<TensorRef> find(const std::string& name) const;
  // The tensor named by `spec`, checked for presence, shape and a dtype statelm computes with.
  TensorRef require(const TensorSpec& spec) const;
  // require() for every tensor: the first problem is reported, naming file and tensor.
  void validate(const std::vector<TensorSpec>& expected) const;

  // Names in the checkpoint that `expected` does not use (reported by inspect, not an error).
  std::vector<std::string> unused(const std::vector<TensorSpec>& expected) const;

  size_t tensor_count() const { return tensors_.size(); }
  size_t total_bytes() const;
  const std::string& dir() const { return dir_; }
  std::vector<std::string> file_paths() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, TensorRef> tensors_;
};

}  // namespace statelm
