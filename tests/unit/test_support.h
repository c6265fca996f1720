// Helpers shared by the tests: fixture paths, temp dirs, running the statelm binary.
#pragma once

#include <filesystem>
#include <cstdint>
#include <string>
#include <vector>

namespace statelm::test {

std::filesystem::path source_dir();                 // repository root
std::filesystem::path fixture(const std::string& relative);  // tests/fixtures/<relative>
std::filesystem::path shared_dir();                 // ../shared beside the repo (may not exist)

// A fresh empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

void write_file(const std::filesystem::path& path, const std::string& bytes);
std::string read_file(const std::filesystem::path& path);

struct CommandResult {
  int exit_code = 0;
  std::string out;  // stdout
  std::string err;  // stderr
};

// A byte-level BPE tokenizer.json whose vocabulary covers exactly ids [0, vocab) (vocab >= 95):
// the printable ASCII characters (as GPT-2's byte-to-unicode map shows them), the space, then
// two-letter tokens. Lets the tiny fixture models run text through `statelm run`.
std::string tiny_tokenizer_json(int vocab = 216);

// gtest parameter name from a fixture name: "mamba2-tiny" -> "mamba2_tiny".
std::string param_name(const std::string& fixture_name);

// Runs the built `statelm` binary with the given argument string (shell syntax), optional
// stdin bytes. Used to test the CLI's exit codes and one-line errors end to end.
CommandResult run_statelm(const std::string& args, const std::string& stdin_bytes = "");

// A model fixture's reference.json (tools/make_fixtures.py): transformers' logits of each input
// sequence ([len * vocab] each) and its greedy continuation of a prompt.
struct FixtureReference {
  std::vector<std::vector<int32_t>> inputs;
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> greedy_prompt, greedy_tokens;
};
FixtureReference load_reference(const std::string& model);

// max |a - b| / max |b|: the error relative to the logits' scale (sizes must match).
double relative_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace statelm::test
