#include "runtime/decode_graphs.h"

#include <algorithm>
#include <bit>
#include <string>

#include "core/error.h"
#include "core/log.h"

namespace statelm {

namespace {

// Rounds x up to a bucket: multiples of a quarter of x's power of two, at least `floor`
// (so a bucket wastes at most a quarter of its size, and a context that doubles passes 4).
int64_t bucket(int64_t x, int64_t floor) {
  if (x <= floor) return floor;
  const int64_t p = int64_t(std::bit_floor(uint64_t(x)));
  const int64_t step = std::max<int64_t>(p / 4, 1);
  return (x + step - 1) / step * step;
}

// Graphs are few and large (one node per kernel); past this many, the least useful way to
// spend memory is keeping shapes that are no longer used, so all are dropped and re-recorded.
constexpr size_t kMaxGraphs = 96;

}  // namespace

DecodeGraphs::DecodeGraphs(Backend& backend, Forward& forward, bool enabled)
    : backend_(backend), forward_(forward), enabled_(enabled && backend.supports_graphs()) {}

bool DecodeGraphs::eligible(std::span<const SeqSpan> spans, bool all_logits) const {
  if (!enabled_ || all_logits || spans.empty() || forward_.has_debug_hook()) return false;
  return std::all_of(spans.begin(), spans.end(), [](const SeqSpan& s) { return s.len == 1; });
}

std::pair<int32_t, int32_t> DecodeGraphs::plan(bool has_kv, int64_t max_end, int64_t max_blocks,
                                               int32_t block_size) const {
  if (!has_kv) return {0, 0};
  const int64_t capacity = bucket(max_end, 256);
  const int64_t width = bucket(std::max<int64_t>((capacity + block_size - 1) / block_size, max_blocks), 16);
  return {int32_t(capacity), int32_t(width)};
}

void DecodeGraphs::drop_all() {
  if (!graphs_.empty()) backend_.drop_graphs();
  graphs_.clear();
  seen_.clear();
}

Tensor DecodeGraphs::run(const ForwardBatch& b, std::span<const LayerCaches> caches) {
  const Key key{int32_t(b.spans.size()), b.key_capacity, b.max_blocks_per_seq};
  if (backend_.memory_epoch() != epoch_) {  // a recorded address may be gone
    drop_all();
    epoch_ = backend_.memory_epoch();
  }
  if (auto it = graphs_.find(key); it != graphs_.end()) {
    forward_.check_batch(b);  // what the forward would have checked
    backend_.replay_graph(it->second.id, b.tokens, b.spans, b.block_tables);
    ++replays_;
    return it->second.logits;
  }
  if (!seen_.count(key)) {  // first of its shape: eager, and its scratch reaches its size
    seen_.insert(key);
    Tensor logits = forward_.run_device(b, caches);
    epoch_ = backend_.memory_epoch();
    return logits;
  }
  if (graphs_.size() >= kMaxGraphs) drop_all();
  forward_.check_batch(b);
  backend_.begin_graph(b.tokens.size(), b.spans.size(), b.block_tables.size());
  Tensor logits;
  int id = -1;
  std::string why = "the capture failed";
  try {
    logits = forward_.run_device(b, caches);  // recorded, not executed
    id = backend_.end_graph();
  } catch (const Error& e) {
    backend_.abort_graph();
    why = e.what();
  }
  if (id >= 0 && backend_.memory_epoch() != epoch_) {  // it allocated while recording: unsafe
    backend_.drop_graphs();
    id = -1;
    why = "it allocated memory while recording";
  }
  if (id < 0) {
    log_info("decode graphs off: a forward of ", b.spans.size(), " sequences could not be recorded (", why,
             "); decode steps run eagerly");
    enabled_ = false;
    graphs_.clear();
    return forward_.run_device(b, caches);
  }
  graphs_[key] = Entry{id, logits};
  backend_.replay_graph(id, b.tokens, b.spans, b.block_tables);
  ++replays_;
  return logits;
}

}  // namespace statelm
