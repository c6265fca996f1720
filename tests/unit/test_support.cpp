#include "unit/test_support.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <gtest/gtest.h>
#include <algorithm>
#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>

namespace statelm::test {

namespace fs = std::filesystem;

fs::path source_dir() { return fs::path(STATELM_SOURCE_DIR); }
fs::path fixture(const std::string& relative) { return source_dir() / "tests" / "fixtures" / relative; }
fs::path shared_dir() { return source_dir().parent_path() / "shared"; }

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = fs::temp_directory_path() /
          ("statelm-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
           std::to_string(rd()));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string tiny_tokenizer_json(int vocab_size) {
  using nlohmann::json;
  json vocab = json::object();
  int id = 0;
  for (int c = 33; c < 127 && id < vocab_size; ++c) vocab[std::string(1, char(c))] = id++;
  vocab["\xc4\xa0"] = id++;  // "Ġ" = space
  for (char a = 'a'; id < vocab_size; ++a)
    for (char b = 'a'; b <= 'z' && id < vocab_size; ++b) vocab[std::string{a, b}] = id++;
  json t = {{"version", "1.0"}, {"added_tokens", json::array()}, {"normalizer", nullptr},
            {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
            {"post_processor", nullptr},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
                       {"byte_fallback", false}, {"vocab", vocab}, {"merges", json::array()}}}};
  return t.dump();
}

std::string param_name(const std::string& fixture_name) {
  std::string n = fixture_name;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

CommandResult run_statelm(const std::string& args, const std::string& stdin_bytes) {
  TempDir tmp;
  write_file(tmp / "stdin", stdin_bytes);
  std::string cmd = std::string("'") + STATELM_BINARY + "' " + args + " <'" + (tmp / "stdin").string() +
                    "' >'" + (tmp / "stdout").string() + "' 2>'" + (tmp / "stderr").string() + "'";
  int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(tmp / "stdout");
  r.err = read_file(tmp / "stderr");
  return r;
}

FixtureReference load_reference(const std::string& model) {
  auto dir = fixture("models/" + model);
  auto j = nlohmann::json::parse(read_file(dir / "reference.json"));
  FixtureReference r;
  for (const auto& s : j["sequences"]) {
    r.inputs.push_back(s["input_ids"].get<std::vector<int32_t>>());
    std::string bytes = read_file(dir / s["logits"].get<std::string>());
    std::vector<float> v(bytes.size() / 4);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    r.logits.push_back(std::move(v));
  }
  r.greedy_prompt = j["greedy"]["prompt"].get<std::vector<int32_t>>();
  r.greedy_tokens = j["greedy"]["new_tokens"].get<std::vector<int32_t>>();
  return r;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    err = std::max(err, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return err / scale;
}

}  // namespace statelm::test
