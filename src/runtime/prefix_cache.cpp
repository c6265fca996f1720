#include "runtime/prefix_cache.h"

#include <algorithm>
#include <unordered_map>

#include "core/error.h"

namespace statelm {

namespace {

// A running hash of a token prefix, extended one token at a time, so one pass over a prompt
// yields the key of every boundary-length prefix. FNV-1a over the token's 4 bytes, then a
// final mix (splitmix64) when a key is read, so nearby prefixes spread over the buckets.
struct PrefixHash {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(int32_t token) {
    auto u = uint32_t(token);
    for (int i = 0; i < 4; ++i, u >>= 8) h = (h ^ (u & 0xffu)) * 0x100000001b3ull;
  }
  uint64_t key() const {
    uint64_t z = h + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

uint64_t hash_of(std::span<const int32_t> tokens) {
  PrefixHash h;
  for (int32_t t : tokens) h.add(t);
  return h.key();
}

}  // namespace

PrefixCache::PrefixCache(StateCache& states, KvCache& kv, int64_t interval, int32_t max_entries)
    : states_(states), kv_(kv), interval_(interval), max_entries_(max_entries) {
  if (interval <= 0) fail(ErrorKind::InvalidArgument, "prefix cache interval must be positive (got ", interval, ")");
  if (!kv.empty() && interval % kv.block_size() != 0)
    fail(ErrorKind::InvalidArgument, "prefix cache interval ", interval, " is not a multiple of the KV block size ",
         kv.block_size(), " (checkpoints share whole KV blocks)");
  if (max_entries < 0) fail(ErrorKind::InvalidArgument, "prefix cache max_entries must not be negative");
}

PrefixCache::~PrefixCache() { clear(); }

PrefixCache::Lru::iterator PrefixCache::find(std::span<const int32_t> prefix, uint64_t hash) {
  auto [first, last] = index_.equal_range(hash);
  for (auto it = first; it != last; ++it) {
    const std::vector<int32_t>& t = it->second->tokens;
    if (std::equal(t.begin(), t.end(), prefix.begin(), prefix.end())) return it->second;
  }
  return lru_.end();
}

int64_t PrefixCache::longest_prefix(std::span<const int32_t> prompt) {
  if (lru_.empty()) return 0;
  const int64_t n = int64_t(prompt.size());
  std::vector<uint64_t> keys;  // keys[i]: hash of the first (i + 1) * interval tokens
  PrefixHash h;
  for (int64_t i = 0; i < n - 1; ++i) {  // boundaries strictly below n
    h.add(prompt[size_t(i)]);
    if ((i + 1) % interval_ == 0) keys.push_back(h.key());
  }
  for (int64_t i = int64_t(keys.size()) - 1; i >= 0; --i) {
    const int64_t length = (i + 1) * interval_;
    auto it = find(prompt.first(size_t(length)), keys[size_t(i)]);
    if (it == lru_.end()) continue;
    lru_.splice(lru_.begin(), lru_, it);
    return length;
  }
  return 0;
}

std::optional<Sequence> PrefixCache::open(std::span<const int32_t> prompt, int64_t length, int64_t worst_tokens) {
  STATELM_CHECK(length > 0 && length < int64_t(prompt.size()), "prefix of ", length, " tokens for a prompt of ",
                prompt.size());
  const auto prefix = prompt.first(size_t(length));
  auto it = find(prefix, hash_of(prefix));
  if (it == lru_.end()) return std::nullopt;
  auto slot = states_.acquire();
  if (!slot) return std::nullopt;
  Sequence s;
  s.slot = *slot;
  s.blocks = kv_.share(it->blocks, int64_t(it->blocks.blocks.size()));
  if (!kv_.reserve(s.blocks, worst_tokens)) {
    kv_.release(s.blocks);
    states_.release(s.slot);
    return std::nullopt;
  }
  states_.copy(s.slot, it->slot);
  s.n_tokens = length;
  return s;
}

bool PrefixCache::insert(std::span<const int32_t> prefix, const Sequence& seq) {
  const int64_t length = int64_t(prefix.size());
  STATELM_CHECK(length > 0 && length % interval_ == 0 && length == seq.n_tokens, "checkpoint of ", length,
                " tokens for a sequence at ", seq.n_tokens, " (interval ", interval_, ")");
  const uint64_t key = hash_of(prefix);
  if (auto it = find(prefix, key); it != lru_.end()) {
    lru_.splice(lru_.begin(), lru_, it);
    return true;
  }
  if (max_entries_ == 0) return false;
  if (size() >= max_entries_) evict_lru();
  auto slot = states_.acquire();
  if (!slot) return false;
  Entry e;
  e.hash = key;
  e.tokens.assign(prefix.begin(), prefix.end());
  e.slot = *slot;
  if (!kv_.empty()) e.blocks = kv_.share(seq.blocks, length / kv_.block_size());
  states_.copy(e.slot, seq.slot);
  lru_.push_front(std::move(e));
  index_.emplace(key, lru_.begin());
  return true;
}

void PrefixCache::erase(Lru::iterator it) {
  auto [first, last] = index_.equal_range(it->hash);
  for (auto i = first; i != last; ++i)
    if (i->second == it) {
      index_.erase(i);
      break;
    }
  states_.release(it->slot);
  kv_.release(it->blocks);
  lru_.erase(it);
}

bool PrefixCache::evict_lru() {
  if (lru_.empty()) return false;
  erase(std::prev(lru_.end()));
  return true;
}

void PrefixCache::clear() {
  while (evict_lru()) {
  }
}

int64_t PrefixCache::reclaimable_blocks() const {
  std::unordered_map<int32_t, int32_t> held;  // block -> entries holding it
  for (const Entry& e : lru_)
    for (int32_t b : e.blocks.blocks) ++held[b];
  int64_t n = 0;
  for (auto [b, count] : held) n += count == kv_.holders(b);
  return n;
}

}  // namespace statelm
