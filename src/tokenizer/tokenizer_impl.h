// The parts a loaded Tokenizer is made of, shared by tokenizer.cpp and the incremental
// detokenizer (internal to src/tokenizer).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoders.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/post_processors.h"
#include "tokenizer/pre_tokenizers.h"

namespace statelm::tok {

struct TokenizerImpl {
  std::string source;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  AddedVocabulary added;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  DecoderTraits decoder_traits;
  size_t vocab_size = 0;
  std::optional<int32_t> bos, eos;

  // The string decode() uses for `id` (an added token's normalized form, else the model's
  // token); Error(InvalidArgument) when no token has this id.
  const std::string& token_string(int32_t id) const;
  // Runs the decoder chain over `tokens` (consumed) and joins the result.
  std::string decode_tokens(std::vector<std::string>& tokens, DecodeWindow& window) const;
};

}  // namespace statelm::tok
