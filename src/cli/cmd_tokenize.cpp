// `statelm tokenize` and `statelm detokenize`: the tokenizer from the command line, for
// checking a tokenizer.json against other implementations and for scripting.
//
//   echo -n "Hello" | statelm tokenize --tokenizer MODEL_DIR      -> [12092]
//   echo "[12092]" | statelm detokenize --tokenizer MODEL_DIR     -> Hello
//
// Text goes through untouched (stdin is read whole, as bytes; detokenize prints exactly the
// decoded text, no newline added), so the two commands round-trip.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer.h"

namespace statelm::cli {

namespace {

struct TokenizeOptions {
  std::string tokenizer;
  bool no_special = false;
};

struct DetokenizeOptions {
  std::string tokenizer;
  std::string ids;
  bool skip_special = false;
};

std::string read_stdin() {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) data.append(buf, n);
  if (std::ferror(stdin)) fail(ErrorKind::Io, "cannot read stdin");
  return data;
}

void write_stdout(const std::string& s) {
  if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size() || std::fflush(stdout) != 0)
    fail(ErrorKind::Io, "cannot write stdout");
}

int run_tokenize(const TokenizeOptions& o) {
  Tokenizer tok = Tokenizer::from_file(o.tokenizer);
  std::string text = read_stdin();
  size_t bad = utf8_first_invalid(text);
  if (bad != std::string::npos) fail(ErrorKind::InvalidArgument, "stdin is not valid UTF-8 (byte offset ", bad, ")");
  std::vector<int32_t> ids = tok.encode(text, !o.no_special);
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  write_stdout(out);
  return 0;
}

// "1, 2,3" -> ids; the flag form of the JSON array.
std::vector<int32_t> parse_id_list(const std::string& list) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < list.size()) {
    size_t comma = list.find(',', i);
    std::string item = list.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
    size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    item = b == std::string::npos ? "" : item.substr(b, e - b + 1);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < INT32_MIN || v > INT32_MAX)
      fail(ErrorKind::InvalidArgument, "--ids: \"", item, "\" is not a token id");
    ids.push_back(int32_t(v));
    if (comma == std::string::npos) break;
    i = comma + 1;
  }
  return ids;
}

std::vector<int32_t> parse_id_json(const std::string& text) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail(ErrorKind::InvalidArgument, "stdin: expected a JSON array of token ids (byte ", e.byte, ")");
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorKind::InvalidArgument, "stdin: expected a JSON array of token ids (", e.what(), ")");
  }
  if (!doc.is_array()) fail(ErrorKind::InvalidArgument, "stdin: expected a JSON array of token ids, got ", doc.type_name());
  std::vector<int32_t> ids;
  for (size_t i = 0; i < doc.size(); ++i) {
    const auto& v = doc[i];
    bool ok = v.is_number_integer() &&
              (v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t(INT32_MAX)
                                      : v.get<int64_t>() >= INT32_MIN && v.get<int64_t>() <= INT32_MAX);
    if (!ok) fail(ErrorKind::InvalidArgument, "stdin: element ", i, " (", v.dump(), ") is not a token id");
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

int run_detokenize(const DetokenizeOptions& o) {
  Tokenizer tok = Tokenizer::from_file(o.tokenizer);
  std::vector<int32_t> ids = o.ids.empty() ? parse_id_json(read_stdin()) : parse_id_list(o.ids);
  write_stdout(tok.decode(ids, o.skip_special));
  return 0;
}

}  // namespace

void add_tokenize_commands(CLI::App& app, Action& action) {
  auto topts = std::make_shared<TokenizeOptions>();
  CLI::App* t = app.add_subcommand("tokenize", "Encode UTF-8 text read from stdin; print the ids as a JSON array");
  t->add_option("--tokenizer", topts->tokenizer, "tokenizer.json, or a model directory that has one")->required();
  t->add_flag("--no-special", topts->no_special, "Do not add the post-processor's special tokens (e.g. <s>)");
  t->callback([topts, &action] { action = [topts] { return run_tokenize(*topts); }; });

  auto dopts = std::make_shared<DetokenizeOptions>();
  CLI::App* d = app.add_subcommand("detokenize", "Decode a JSON array of ids read from stdin (or --ids); print the text");
  d->add_option("--tokenizer", dopts->tokenizer, "tokenizer.json, or a model directory that has one")->required();
  d->add_option("--ids", dopts->ids, "Comma-separated ids instead of stdin, e.g. 1,2,3");
  d->add_flag("--skip-special", dopts->skip_special, "Leave special tokens out of the text");
  d->callback([dopts, &action] { action = [dopts] { return run_detokenize(*dopts); }; });
}

}  // namespace statelm::cli
