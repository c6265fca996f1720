// Model folders: single-file and sharded checkpoints, and every way a folder can be broken
// (missing tensor, wrong shape, unsupported dtype, bad index) — each a clear error.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model_files.h"
#include "unit/safetensors_writer.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;
using test::RawTensor;

using TensorList = std::vector<std::pair<std::string, RawTensor>>;

// The tensors of a fixture checkpoint, in file order, as raw bytes we can edit.
TensorList load_raw(const std::string& model) {
  SafetensorsFile f(test::fixture("models/" + model + "/model.safetensors").string());
  TensorList out;
  for (const auto& t : f.tensors()) {
    RawTensor r;
    r.dtype = t.dtype_code;
    r.shape = t.shape;
    r.bytes.assign(reinterpret_cast<const char*>(f.data(t)), t.nbytes());
    out.emplace_back(t.name, r);
  }
  return out;
}

// A copy of a fixture folder whose checkpoint is `tensors`.
void write_model(const test::TempDir& dir, const std::string& model, const TensorList& tensors) {
  fs::copy_file(test::fixture("models/" + model + "/config.json"), dir / "config.json");
  test::write_file(dir / "model.safetensors", test::make_safetensors(tensors));
}

void expect_open_error(const test::TempDir& dir, ErrorKind kind, std::initializer_list<std::string> parts) {
  try {
    open_model_files(dir.path().string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "'" << p << "' not in: " << e.what();
  }
}

TEST(Checkpoint, MissingTensorIsNamed) {
  test::TempDir dir;
  TensorList t = load_raw("mamba2-tiny");
  const std::string victim = "backbone.layers.1.mixer.dt_bias";
  std::erase_if(t, [&](auto& p) { return p.first == victim; });
  write_model(dir, "mamba2-tiny", t);
  expect_open_error(dir, ErrorKind::Format, {victim, "missing", "model.safetensors", "[8]"});
}

TEST(Checkpoint, WrongShapeIsNamed) {
  test::TempDir dir;
  TensorList t = load_raw("llama-tiny");
  for (auto& [name, raw] : t)
    if (name == "model.layers.0.self_attn.k_proj.weight") raw.shape = {16, 128};  // same bytes, wrong shape
  write_model(dir, "llama-tiny", t);
  expect_open_error(dir, ErrorKind::Format, {"model.layers.0.self_attn.k_proj.weight", "[16, 128]", "expected [32, 64]"});
}

TEST(Checkpoint, UnsupportedDtypeIsNamed) {
  test::TempDir dir;
  TensorList t = load_raw("mamba-tiny");
  for (auto& [name, raw] : t)
    if (name == "backbone.layers.0.mixer.D") raw.dtype = "I32";  // 96 * 4 bytes either way
  write_model(dir, "mamba-tiny", t);
  expect_open_error(dir, ErrorKind::Unsupported, {"backbone.layers.0.mixer.D", "I32"});
}

TEST(Checkpoint, Bf16AndF16WeightsAreAccepted) {
  test::TempDir dir;
  TensorList t = load_raw("mamba-tiny");
  for (auto& [name, raw] : t) {  // halve every tensor to 16-bit (the bytes are not meaningful)
    raw.dtype = name.find("A_log") != std::string::npos ? "F16" : "BF16";
    raw.bytes.resize(raw.bytes.size() / 2);
  }
  write_model(dir, "mamba-tiny", t);
  ModelFiles f = open_model_files(dir.path().string());
  EXPECT_EQ(f.checkpoint->find("backbone.layers.0.mixer.D")->info->dtype, DType::BF16);
}

TEST(Checkpoint, ShardedIndexEqualsSingleFile) {
  test::TempDir dir;
  TensorList t = load_raw("jamba-tiny");
  TensorList a(t.begin(), t.begin() + long(t.size() / 2)), b(t.begin() + long(t.size() / 2), t.end());
  fs::copy_file(test::fixture("models/jamba-tiny/config.json"), dir / "config.json");
  test::write_file(dir / "model-00001-of-00002.safetensors", test::make_safetensors(a));
  test::write_file(dir / "model-00002-of-00002.safetensors", test::make_safetensors(b));
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (auto& [n, r] : a) index["weight_map"][n] = "model-00001-of-00002.safetensors";
  for (auto& [n, r] : b) index["weight_map"][n] = "model-00002-of-00002.safetensors";
  test::write_file(dir / "model.safetensors.index.json", index.dump());

  ModelFiles sharded = open_model_files(dir.path().string());
  ModelFiles single = open_model_files(test::fixture("models/jamba-tiny").string());
  EXPECT_EQ(sharded.checkpoint->file_paths().size(), 2u);
  EXPECT_EQ(sharded.checkpoint->total_bytes(), single.checkpoint->total_bytes());
  for (const auto& spec : expected_tensors(single.spec)) {
    TensorRef x = sharded.checkpoint->require(spec), y = single.checkpoint->require(spec);
    ASSERT_EQ(x.info->nbytes(), y.info->nbytes());
    EXPECT_EQ(std::memcmp(x.data, y.data, x.info->nbytes()), 0) << spec.name;
  }

  // The index claims a tensor that its shard does not hold.
  index["weight_map"]["model.norm.extra"] = "model-00001-of-00002.safetensors";
  test::write_file(dir / "model.safetensors.index.json", index.dump());
  expect_open_error(dir, ErrorKind::Format, {"model.norm.extra", "model-00001-of-00002.safetensors"});

  // A shard name that would leave the folder.
  index["weight_map"].erase("model.norm.extra");
  index["weight_map"]["lm_head.weight"] = "../model-00001-of-00002.safetensors";
  test::write_file(dir / "model.safetensors.index.json", index.dump());
  expect_open_error(dir, ErrorKind::Format, {"lm_head.weight", "not a file name"});

  test::write_file(dir / "model.safetensors.index.json", "{\"weight_map\": [1]}");
  expect_open_error(dir, ErrorKind::Format, {"weight_map"});
}

TEST(Checkpoint, NoWeightsInFolder) {
  test::TempDir dir;
  fs::copy_file(test::fixture("models/mamba-tiny/config.json"), dir / "config.json");
  expect_open_error(dir, ErrorKind::Io, {"model.safetensors"});
  EXPECT_NO_THROW(open_model_files(dir.path().string(), /*require_weights=*/false));
}

TEST(Checkpoint, TruncatedCheckpointFile) {
  test::TempDir dir;
  fs::copy_file(test::fixture("models/mamba-tiny/config.json"), dir / "config.json");
  std::string bytes = test::read_file(test::fixture("models/mamba-tiny/model.safetensors"));
  test::write_file(dir / "model.safetensors", bytes.substr(0, bytes.size() / 2));
  expect_open_error(dir, ErrorKind::Format, {"model.safetensors", "past the end"});
}

}  // namespace
}  // namespace statelm
