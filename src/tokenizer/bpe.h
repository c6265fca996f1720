// The BPE model (tokenizer.json "model": {"type": "BPE"}): turns one pre-tokenized word into ids.
//
// A word starts as its characters (or their <0xAB> byte tokens with byte_fallback, or <unk>);
// then the adjacent pair with the lowest merge rank is merged, repeatedly, until no pair has a
// merge. A min-heap of candidate pairs keyed by (rank, position) makes that O(n log n) per word
// instead of rescanning the word after each merge, and a bounded cache of whole words makes
// repeated words (most of any text) a hash lookup.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/json_field.h"

namespace statelm::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // Parses model.*; `field` is the "model" object.
  explicit BpeModel(const JsonField& field);

  // Appends the ids of `word` (non-empty, valid UTF-8).
  void tokenize(std::string_view word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr when no token has this id
  size_t vocab_count() const { return vocab_.size(); }  // the library's get_vocab_size()
  int32_t max_id() const { return int32_t(id_to_token_.size()) - 1; }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;
  void apply_merges(std::vector<int32_t>& symbols) const;

  std::string source_;
  TokenMap vocab_;
  std::vector<const std::string*> id_to_token_;  // into vocab_ keys; nullptr for gaps
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::array<int32_t, 256> byte_ids_;  // <0xAB> token ids, -1 where absent
  bool has_all_byte_ids_ = false;
  std::optional<std::string> unk_token_;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;

  // Word cache, sharded so that threads encoding at once rarely wait on each other.
  static constexpr size_t kShards = 16;
  static constexpr size_t kCapacityPerShard = 10000 / kShards;
  static constexpr size_t kMaxCachedWordBytes = 256;
  struct CacheShard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
  };
  std::unique_ptr<CacheShard[]> cache_;
};

}  // namespace statelm::tok
