#include "model/checkpoint.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "core/mapped_file.h"

namespace statelm {

namespace fs = std::filesystem;

namespace {
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// A shard named by the index must be a plain file name inside the folder: an index must not
// make us open "../../etc/passwd".
void check_shard_name(const std::string& index_path, const std::string& tensor, const std::string& shard) {
  if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
      shard == "." || shard == "..")
    fail(ErrorKind::Format, index_path, ": weight_map.", tensor, ": shard name \"", shard, "\" is not a file name in the folder");
}
}  // namespace

bool Checkpoint::exists_in(const std::string& dir) {
  return fs::exists(fs::path(dir) / kSingleFile) || fs::exists(fs::path(dir) / kIndexFile);
}

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const fs::path single = fs::path(dir) / kSingleFile;
  const fs::path index = fs::path(dir) / kIndexFile;
  if (fs::exists(index)) {
    using nlohmann::json;
    const std::string index_path = index.string();
    json j = json::parse(read_text_file(index_path), nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(ErrorKind::Format, index_path, ": not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) fail(ErrorKind::Format, index_path, ": missing \"weight_map\" object");
    std::unordered_map<std::string, SafetensorsFile*> shards;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) fail(ErrorKind::Format, index_path, ": weight_map.", it.key(), " is not a string");
      const std::string shard = it.value().get<std::string>();
      check_shard_name(index_path, it.key(), shard);
      auto found = shards.find(shard);
      if (found == shards.end()) {
        c.files_.push_back(std::make_unique<SafetensorsFile>((fs::path(dir) / shard).string()));
        found = shards.emplace(shard, c.files_.back().get()).first;
      }
      const TensorInfo* info = found->second->find(it.key());
      if (!info)
        fail(ErrorKind::Format, index_path, ": weight_map says tensor '", it.key(), "' is in ", shard, " but it is not there");
      c.tensors_[it.key()] = TensorRef{info, found->second->data(*info), found->second};
    }
  } else if (fs::exists(single)) {
    c.files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
    const SafetensorsFile* f = c.files_.back().get();
    for (const auto& t : f->tensors()) c.tensors_[t.name] = TensorRef{&t, f->data(t), f};
  } else {
    fail(ErrorKind::Io, dir, ": no ", kSingleFile, " or ", kIndexFile, " in the model folder");
  }
  return c;
}

std::optional<TensorRef> Checkpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return std::nullopt;
  return it->second;
}

TensorRef Checkpoint::require(const TensorSpec& spec) const {
  auto ref = find(spec.name);
  if (!ref) {
    const std::string where = files_.size() == 1 ? files_[0]->path() : (fs::path(dir_) / kIndexFile).string();
    fail(ErrorKind::Format, where, ": tensor '", spec.name, "' is missing (expected shape ", shape_string(spec.shape), ")");
  }
  const TensorInfo& t = *ref->info;
  if (t.shape != spec.shape)
    fail(ErrorKind::Format, ref->file->path(), ": tensor '", spec.name, "' has shape ", shape_string(t.shape),
         ", expected ", shape_string(spec.shape), " from config.json");
  if (!t.dtype || (*t.dtype != DType::F32 && *t.dtype != DType::F16 && *t.dtype != DType::BF16))
    fail(ErrorKind::Unsupported, ref->file->path(), ": tensor '", spec.name, "' has dtype ", t.dtype_code,
         " (supported: F32, F16, BF16)");
  return *ref;
}

void Checkpoint::validate(const std::vector<TensorSpec>& expected) const {
  for (const auto& spec : expected) require(spec);
}

std::vector<std::string> Checkpoint::unused(const std::vector<TensorSpec>& expected) const {
  std::unordered_set<std::string> used;
  for (const auto& s : expected) used.insert(s.name);
  std::vector<std::string> out;
  for (const auto& [name, ref] : tensors_)
    if (!used.count(name)) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

size_t Checkpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, ref] : tensors_) n += ref.info->nbytes();
  return n;
}

std::vector<std::string> Checkpoint::file_paths() const {
  std::vector<std::string> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

}  // namespace statelm
