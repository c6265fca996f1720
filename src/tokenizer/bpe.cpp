// BPE model: vocab/merges parsing and the merge loop (the library's BPE::merge_word and
// Word::merge_all, reproduced rule for rule so that ids match exactly).
#include "tokenizer/bpe.h"

#include <queue>

#include "tokenizer/unicode.h"

namespace statelm::tok {

namespace {

// Ids are dense in every real vocabulary; the cap keeps a hostile file from making
// id_to_token_ allocate gigabytes.
constexpr int64_t kMaxId = (int64_t(1) << 24) - 1;

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

}  // namespace

BpeModel::BpeModel(const JsonField& f) : source_(f.source()) {
  JsonField dropout = f.opt("dropout");
  if (!dropout.is_null()) {
    if (!dropout.json().is_number()) dropout.fail(ErrorKind::Format, "must be a number or null");
    if (dropout.json().get<double>() != 0.0)
      dropout.fail(ErrorKind::Unsupported, "is not supported (BPE dropout is for training; must be null)");
  }
  JsonField unk = f.opt("unk_token");
  if (!unk.is_null()) unk_token_ = unk.str();
  prefix_ = f.str_or("continuing_subword_prefix", "");
  suffix_ = f.str_or("end_of_word_suffix", "");
  fuse_unk_ = f.bool_or("fuse_unk", false);
  byte_fallback_ = f.bool_or("byte_fallback", false);
  ignore_merges_ = f.bool_or("ignore_merges", false);

  JsonField vocab = f.at("vocab");
  const auto& entries = vocab.object();
  vocab_.reserve(entries.size());
  int64_t max_id = -1;
  for (const auto& [token, value] : entries) {
    JsonField v(value, vocab.path() + "[" + quote(token) + "]", f.source());
    int32_t id = int32_t(v.integer(0, kMaxId));
    vocab_.emplace(token, id);
    max_id = std::max<int64_t>(max_id, id);
  }
  id_to_token_.assign(size_t(max_id + 1), nullptr);
  for (const auto& [token, id] : vocab_) {
    if (id_to_token_[size_t(id)])
      vocab.fail(ErrorKind::Format, "gives id ", id, " to both ", quote(*id_to_token_[size_t(id)]), " and ", quote(token));
    id_to_token_[size_t(id)] = &token;
  }

  byte_ids_.fill(-1);
  has_all_byte_ids_ = true;
  for (int b = 0; b < 256; ++b) {
    static const char* kHex = "0123456789ABCDEF";
    std::string name = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    auto it = vocab_.find(name);
    if (it != vocab_.end()) byte_ids_[size_t(b)] = it->second;
    else has_all_byte_ids_ = false;
  }

  JsonField merges = f.at("merges");
  const auto& list = merges.array();
  merges_.reserve(list.size());
  std::string merged;
  for (size_t rank = 0; rank < list.size(); ++rank) {
    JsonField m = merges.at(rank);
    std::string a, b;
    if (m.json().is_string()) {  // legacy "a b"
      std::string s = m.str();
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        m.fail(ErrorKind::Format, "must be two tokens separated by one space, not ", quote(s));
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else {
      if (!m.json().is_array() || m.array().size() != 2)
        m.fail(ErrorKind::Format, "must be a pair of tokens [\"a\", \"b\"] or a string \"a b\"");
      a = m.at(size_t(0)).str();
      b = m.at(size_t(1)).str();
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end()) m.fail(ErrorKind::Format, "names ", quote(a), ", which is not in model.vocab");
    if (ib == vocab_.end()) m.fail(ErrorKind::Format, "names ", quote(b), ", which is not in model.vocab");
    // With a continuing_subword_prefix the right part carries it ("##b"); the merged token
    // does not: "a" + "##b" -> "ab".
    if (b.compare(0, prefix_.size(), prefix_) != 0)
      m.fail(ErrorKind::Format, "right token ", quote(b), " lacks continuing_subword_prefix ", quote(prefix_));
    merged.assign(a).append(b, prefix_.size());
    auto im = vocab_.find(merged);
    if (im == vocab_.end()) m.fail(ErrorKind::Format, "makes ", quote(merged), ", which is not in model.vocab");
    // A repeated pair keeps its last rank, as the library's map insertion does.
    merges_[pair_key(ia->second, ib->second)] = {int32_t(rank), im->second};
  }
  cache_ = std::make_unique<CacheShard[]>(kShards);
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_token_.size()) return nullptr;
  return id_to_token_[size_t(id)];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (word.size() >= kMaxCachedWordBytes) {
    merge_word(word, ids);
    return;
  }
  CacheShard& shard = cache_[StringHash{}(word) % kShards];
  {
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.words.find(word);
    if (it != shard.words.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = ids.size();
  merge_word(word, ids);
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.words.size() < kCapacityPerShard)
    shard.words.emplace(std::string(word), std::vector<int32_t>(ids.begin() + std::ptrdiff_t(first), ids.end()));
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& ids) const {
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  // A pending <unk>: consecutive unknown characters fuse into one when fuse_unk is set.
  bool unk_pending = false;
  int32_t unk_id = -1;
  auto unk_lookup = [&]() -> int32_t {
    auto it = vocab_.find(*unk_token_);
    if (it == vocab_.end())
      fail(ErrorKind::Format, source_, ": model.unk_token ", quote(*unk_token_), " is not in model.vocab");
    return it->second;
  };
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    size_t len = utf8_len(uint8_t(word[i]));
    if (i + len > word.size()) len = word.size() - i;
    std::string_view ch = word.substr(i, len);
    bool first = i == 0, last = i + len == word.size();
    i += len;
    std::string_view s = ch;
    if ((!first && !prefix_.empty()) || (last && !suffix_.empty())) {
      piece.assign(first ? "" : prefix_).append(ch).append(last ? suffix_ : "");
      s = piece;
    }
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (unk_pending) symbols.push_back(unk_id);
      unk_pending = false;
      symbols.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = has_all_byte_ids_;
      if (!all) {
        all = true;
        for (char c : s) all &= byte_ids_[uint8_t(c)] >= 0;
      }
      if (all) {
        // Like the library, a pending <unk> is not flushed here: it lands after these bytes.
        for (char c : s) symbols.push_back(byte_ids_[uint8_t(c)]);
        continue;
      }
    }
    if (unk_token_) {
      if (unk_pending && !fuse_unk_) symbols.push_back(unk_id);
      if (!unk_pending || !fuse_unk_) unk_id = unk_lookup();
      unk_pending = true;
    }
  }
  if (unk_pending) symbols.push_back(unk_id);
  apply_merges(symbols);
  ids.insert(ids.end(), symbols.begin(), symbols.end());
}

void BpeModel::apply_merges(std::vector<int32_t>& symbols) const {
  size_t n = symbols.size();
  if (n < 2 || merges_.empty()) return;
  std::vector<int32_t> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push_pair = [&](int32_t pos) {
    int32_t nx = next[size_t(pos)];
    if (nx < 0) return;
    auto it = merges_.find(pair_key(symbols[size_t(pos)], symbols[size_t(nx)]));
    if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (size_t i = 0; i + 1 < n; ++i) push_pair(int32_t(i));
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    size_t pos = size_t(top.pos);
    if (!alive[pos] || next[pos] < 0) continue;
    size_t right = size_t(next[pos]);
    // Skip entries made stale by earlier merges: the pair must still produce this token.
    auto it = merges_.find(pair_key(symbols[pos], symbols[right]));
    if (it == merges_.end() || it->second.second != top.new_id) continue;
    symbols[pos] = top.new_id;
    alive[right] = 0;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[size_t(next[pos])] = int32_t(pos);
    if (prev[pos] >= 0) push_pair(prev[pos]);
    push_pair(int32_t(pos));
  }
  size_t out = 0;
  for (size_t i = 0; i < n; ++i)
    if (alive[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

}  // namespace statelm::tok
