// PrefixCache: checkpoints of sequence state at exact token positions, so a request whose
// prompt starts like a recent one prefills only the rest.
//
// During prefill the scheduler stops a sequence at every multiple of `interval` tokens and
// checkpoints it: the entry keeps the exact token prefix, a copy of the sequence's state slot
// at that position (in one of the runner's extra slots, RunnerOptions::prefix_cache_slots) and
// a shared hold on the prefix's KV blocks (no copy: `interval` is a multiple of the block size,
// so those blocks are full and no holder ever writes them again). Every boundary of a prompt is
// kept, not only the last, so a new prompt that shares any boundary-length prefix hits, for
// pure SSM models as well as hybrids.
//
// Entries are keyed by a hash of their tokens (the hash only indexes: a lookup compares the
// tokens), kept in LRU order and bounded by max_entries (one state slot each); evicting one
// gives its slot and its block holds back. Not thread-safe: the scheduler's engine thread owns it.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "runtime/kv_cache.h"
#include "runtime/model_runner.h"
#include "runtime/state_cache.h"

namespace statelm {

class PrefixCache {
 public:
  // interval: checkpoint spacing in tokens (a multiple of kv's block size when the model has
  // attention layers); max_entries: state slots the cache may hold at once.
  PrefixCache(StateCache& states, KvCache& kv, int64_t interval, int32_t max_entries);
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  int64_t interval() const { return interval_; }
  int32_t max_entries() const { return max_entries_; }
  int32_t size() const { return int32_t(lru_.size()); }

  // The longest checkpoint that is a prefix of `prompt` and strictly shorter than it (so at
  // least one prompt token is left to feed, whose logits start the generation), marked as
  // most recently used; 0 when none. Pass the length to open().
  int64_t longest_prefix(std::span<const int32_t> prompt);
  // A new sequence resuming from the checkpoint of prompt[0, length): a fresh slot holding the
  // checkpoint's state, the checkpoint's KV blocks (shared) plus fresh blocks up to
  // `worst_tokens`, and n_tokens = length. nullopt (nothing taken) when the slot or the blocks
  // are not free now, or the checkpoint is gone.
  std::optional<Sequence> open(std::span<const int32_t> prompt, int64_t length, int64_t worst_tokens);

  // Checkpoints `seq`, whose state holds exactly `prefix` (prefix.size() == seq.n_tokens, a
  // multiple of interval). Evicts the least recently used entry when full. False when no slot
  // was free (nothing changes then); an existing entry for the same prefix is only refreshed.
  bool insert(std::span<const int32_t> prefix, const Sequence& seq);

  // Drops the least recently used entry; false when empty.
  bool evict_lru();
  void clear();
  // KV blocks that evicting every entry would free (those no running sequence also holds).
  int64_t reclaimable_blocks() const;

 private:
  struct Entry {
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // the exact prefix
    int32_t slot = -1;            // a copy of the state after `tokens`
    BlockList blocks;             // tokens.size() / block_size full blocks, shared
  };
  using Lru = std::list<Entry>;  // most recently used first

  Lru::iterator find(std::span<const int32_t> prefix, uint64_t hash);
  void erase(Lru::iterator it);

  StateCache& states_;
  KvCache& kv_;
  int64_t interval_;
  int32_t max_entries_;
  Lru lru_;
  std::unordered_multimap<uint64_t, Lru::iterator> index_;
};

}  // namespace statelm
