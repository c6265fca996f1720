// Helpers shared by the tests: fixture paths, temp dirs, running the statelm binary.
#pragma once

#include <filesystem>
#include <string>

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

// Runs the built `statelm` binary with the given argument string (shell syntax), optional
// stdin bytes. Used to test the CLI's exit codes and one-line errors end to end.
CommandResult run_statelm(const std::string& args, const std::string& stdin_bytes = "");

}  // namespace statelm::test
