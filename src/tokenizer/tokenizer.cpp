// Tokenizer: loading tokenizer.json into its parts, and the encode / decode pipelines.
#include "tokenizer/tokenizer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"

namespace statelm {

using tok::JsonField;
using tok::quote;

namespace tok {

const std::string& TokenizerImpl::token_string(int32_t id) const {
  if (const AddedToken* t = added.find_id(id)) return t->normalized_content;
  if (const std::string* s = model->id_to_token(id)) return *s;
  if (id < 0 || size_t(id) >= vocab_size)
    fail(ErrorKind::InvalidArgument, "token id ", id, " is out of range: the vocabulary of ", source, " has ",
         vocab_size, " ids (0..", vocab_size - 1, ")");
  fail(ErrorKind::InvalidArgument, "token id ", id, " has no token in ", source);
}

std::string TokenizerImpl::decode_tokens(std::vector<std::string>& tokens, DecodeWindow& window) const {
  std::string text;
  if (!decoder) {
    // Without a decoder the library joins the tokens with spaces.
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 || !window.at_start) text.push_back(' ');
      text += tokens[i];
    }
    return text;
  }
  decoder->decode_chain(tokens, window);
  for (const std::string& t : tokens) text += t;
  return text;
}

namespace {

// bos/eos: the template's own special tokens when it has them, else well-known names.
void find_bos_eos(TokenizerImpl& impl) {
  if (impl.post_processor) {
    std::vector<int32_t> before, after;
    impl.post_processor->special_ids(before, after);
    if (!before.empty()) impl.bos = before.front();
    if (!after.empty()) impl.eos = after.back();
  }
  auto first_special = [&](std::initializer_list<const char*> names) -> std::optional<int32_t> {
    for (const char* name : names) {
      auto id = impl.added.find_content(name);
      if (id) {
        const AddedToken* t = impl.added.find_id(*id);
        if (t && t->special) return id;
      }
    }
    return std::nullopt;
  };
  if (!impl.bos) impl.bos = first_special({"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>"});
  if (!impl.eos) impl.eos = first_special({"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"});
}

}  // namespace

}  // namespace tok

Tokenizer Tokenizer::from_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::string file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) file = (fs::path(path) / "tokenizer.json").string();
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(ErrorKind::Io, "cannot open ", file, ": ", std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) fail(ErrorKind::Io, "cannot read ", file);
  return from_json(buf.str(), file);
}

Tokenizer Tokenizer::from_json(std::string_view json, const std::string& source_name) {
  auto impl = std::make_shared<tok::TokenizerImpl>();
  impl->source = source_name;
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::parse_error& e) {
    fail(ErrorKind::Format, source_name, ": not valid JSON (byte ", e.byte, "): ", e.what());
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double
    fail(ErrorKind::Format, source_name, ": not valid JSON: ", e.what());
  }
  JsonField root(doc, "", impl->source);
  root.object();
  JsonField version = root.opt("version");
  if (!version.is_null() && version.str() != "1.0")
    version.fail(ErrorKind::Unsupported, quote(version.str()), " is not supported (only \"1.0\")");
  // "truncation" and "padding" shape batches for training; the engine decides lengths itself.

  JsonField model = root.at("model");
  std::string type = model.str_or("type", "BPE");  // old files leave out the type of BPE models
  if (type != "BPE") model.at("type").fail(ErrorKind::Unsupported, quote(type), " is not supported (only BPE)");
  impl->model = std::make_unique<tok::BpeModel>(model);
  impl->normalizer = tok::parse_normalizer(root.opt("normalizer"));
  impl->pre_tokenizer = tok::parse_pre_tokenizer(root.opt("pre_tokenizer"));
  impl->post_processor = tok::parse_post_processor(root.opt("post_processor"));
  impl->decoder = tok::parse_decoder(root.opt("decoder"), impl->decoder_traits);
  impl->added = tok::AddedVocabulary(root.opt("added_tokens"), *impl->model, impl->normalizer.get());
  impl->vocab_size = size_t(std::max(impl->model->max_id(), impl->added.max_id()) + 1);
  tok::find_bos_eos(*impl);
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  size_t bad = utf8_first_invalid(text);
  if (bad != std::string_view::npos)
    fail(ErrorKind::InvalidArgument, "text to encode is not valid UTF-8 (byte offset ", bad, ")");
  const tok::TokenizerImpl& impl = *impl_;
  tok::Pieces pieces;
  if (!text.empty()) pieces.push_back({std::string(text), -1, tok::utf8_len(uint8_t(text[0]))});
  impl.added.split_and_normalize(pieces, impl.normalizer.get());
  if (impl.pre_tokenizer) impl.pre_tokenizer->pre_tokenize(pieces);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const tok::Piece& p : pieces) {
    if (p.added_id >= 0) ids.push_back(p.added_id);
    else impl.model->tokenize(p.text, ids);
  }
  if (impl.post_processor) impl.post_processor->process(ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const tok::TokenizerImpl& impl = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string& s = impl.token_string(id);
    if (skip_special_tokens && impl.added.is_special_content(s)) continue;
    tokens.push_back(s);
  }
  tok::DecodeWindow window;
  return impl.decode_tokens(tokens, window);
}

size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto id = impl_->added.find_content(token)) return id;
  return impl_->model->token_to_id(token);
}

std::string_view Tokenizer::id_to_token(int32_t id) const { return impl_->token_string(id); }

bool Tokenizer::has_token(int32_t id) const {
  return impl_->added.find_id(id) != nullptr || impl_->model->id_to_token(id) != nullptr;
}

bool Tokenizer::is_special(int32_t id) const {
  const tok::AddedToken* t = impl_->added.find_id(id);
  return t && t->special;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

}  // namespace statelm
