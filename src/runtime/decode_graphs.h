// Decode steps through recorded graphs (Backend::begin_graph / replay_graph; CUDA graphs on the
// GPU). A decode step of a deep model queues hundreds of small kernels; replaying them as one
// graph takes the launch cost out of every step after the first few.
//
// A graph's launches are fixed when it is recorded, so graphs are kept per batch shape: the
// number of sequences, and for attention models the key capacity the attention launch is
// planned for and the block-table width (both rounded up to buckets, 4 per octave, so a growing
// context is served by the same graph for a while and records a new one now and then). The
// first batch of a shape runs eagerly (it also grows the scratch buffers to their final size);
// the second records; later ones replay. When the backend's memory epoch moves (a scratch
// buffer was replaced, e.g. by a larger prefill), every graph is dropped and re-recorded.
// A forward that cannot be recorded (MoE waits for its per-expert counts on the host) turns
// graphs off for the runner, once, and runs eagerly from then on.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <tuple>

#include "model/forward.h"
#include "ops/ops.h"

namespace statelm {

class DecodeGraphs {
 public:
  DecodeGraphs(Backend& backend, Forward& forward, bool enabled);

  // Whether a batch of these spans (all_logits as given) may use a graph: one token per span,
  // last-token logits, a backend that records, no debug hook.
  bool eligible(std::span<const SeqSpan> spans, bool all_logits) const;
  // For an eligible batch: the key capacity and block-table width to build it with, from its
  // longest sequence (tokens after this step) and the most blocks any of its sequences holds.
  // Zeros for a model without attention.
  std::pair<int32_t, int32_t> plan(bool has_kv, int64_t max_end, int64_t max_blocks, int32_t block_size) const;
  // Runs an eligible batch: replays its shape's graph, records one, or runs eagerly. Returns the
  // logits as Forward::run_device does.
  Tensor run(const ForwardBatch& batch, std::span<const LayerCaches> caches);

  bool enabled() const { return enabled_; }
  size_t recorded() const { return graphs_.size(); }
  int64_t replays() const { return replays_; }

 private:
  using Key = std::tuple<int32_t, int32_t, int32_t>;  // sequences, key capacity, table width
  struct Entry {
    int id = -1;
    Tensor logits;
  };
  void drop_all();

  Backend& backend_;
  Forward& forward_;
  bool enabled_;
  uint64_t epoch_ = 0;
  std::map<Key, Entry> graphs_;
  std::set<Key> seen_;
  int64_t replays_ = 0;
};

}  // namespace statelm
