#include "runtime/scheduler.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/log.h"
#include "runtime/snapshot.h"

namespace statelm {

namespace {

// The cheap counts, refreshed by every step (whether it ran the model or not) and by stop(),
// so that stats() read between requests shows the idle values. Under the scheduler's mu_.
void publish_counts(SchedulerStats& s, size_t running, size_t waiting, const ModelRunner& runner) {
  s.running = int64_t(running);
  s.waiting = int64_t(waiting);
  s.free_slots = runner.free_slots();
  s.free_blocks = runner.free_blocks();
}

}  // namespace

struct Scheduler::Active {
  uint64_t id = 0;
  Request req;
  Sequence seq;
  int64_t prefilled = 0;           // prompt tokens already fed (or resumed from the prefix cache)
  int64_t cached_tokens = 0;       // prompt tokens resumed from the prefix cache
  std::vector<int32_t> history;    // prompt + generated, for the repetition penalty
  int64_t generated = 0;
  int32_t next_input = -1;         // the token the next decode step feeds
  bool done = false;
  std::string swapped;             // the state, swapped out to host memory while preempted
  int64_t swapped_tokens = 0;      // positions in that state
  // Position of req.prompt[0] (and history[0]): a resumed snapshot keeps only its last ids
  // (runtime/snapshot.h), so prompt indices and sequence positions differ by it.
  int64_t base = 0;
  int64_t prompt_tokens() const { return base + int64_t(req.prompt.size()); }

  bool prefill_done() const { return prefilled == int64_t(req.prompt.size()); }
  // An event of this request, with its token counts as they stand.
  RequestEvent event() const {
    RequestEvent e;
    e.request_id = id;
    e.prompt_tokens = prompt_tokens();
    e.completion_tokens = generated;
    e.cached_tokens = cached_tokens;
    return e;
  }
};

Scheduler::Scheduler(ModelRunner& runner, SchedulerOptions options) : runner_(runner), options_(options) {
  STATELM_CHECK(options_.max_batch_tokens > 0, "max_batch_tokens must be positive");
  if (options_.prefix_cache) {
    const int32_t slots = runner_.prefix_cache_slots();
    if (slots == 0)
      fail(ErrorKind::InvalidArgument, "the prefix cache needs state slots of its own: set the runner's prefix_cache_slots");
    int32_t entries = options_.prefix_max_entries > 0 ? options_.prefix_max_entries : slots;
    if (entries > slots) {
      log_warning("prefix cache entries clamped from ", entries, " to the runner's ", slots, " prefix cache slots");
      entries = slots;
    }
    prefix_ = std::make_unique<PrefixCache>(runner_.states(), runner_.kv(), options_.prefix_interval, entries);
  }
}

Scheduler::~Scheduler() { stop(); }

uint64_t Scheduler::submit(Request r) {
  r.sampling.validate();
  r.prompt_position = 0;
  if (!r.resume_state.empty()) {  // the sequence is the snapshot's ids, then the new ones
    SnapshotHeader h;
    try {
      h = read_snapshot_header(r.resume_state);  // the rest is checked when it is restored
    } catch (const Error& e) {
      fail(ErrorKind::InvalidArgument, "resume state: ", e.what());
    }
    if (h.fingerprint != runner_.fingerprint())
      fail(ErrorKind::InvalidArgument, "resume state: a snapshot of another model (fingerprint ", h.fingerprint,
           "), not of ", runner_.model_dir(), " (fingerprint ", runner_.fingerprint(), ")");
    if (h.pending() == 0 && r.prompt.empty())
      fail(ErrorKind::InvalidArgument, "prompt: empty: the resumed state holds all its ", h.n_tokens,
           " tokens already, so at least one new token is needed");
    r.prompt.insert(r.prompt.begin(), h.tokens.begin(), h.tokens.end());
    r.prompt_position = h.first_id;
    if (h.n_tokens == 0) r.resume_state.clear();  // the empty state: a fresh sequence, prefix cache and all
  }
  if (r.prompt.empty()) fail(ErrorKind::InvalidArgument, "prompt: empty prompt (at least one token is needed)");
  const int64_t vocab = runner_.spec().vocab_size;
  for (int32_t id : r.prompt)
    if (id < 0 || id >= vocab) fail(ErrorKind::InvalidArgument, "prompt: token id ", id, " is outside the vocabulary [0, ", vocab, ")");
  const int64_t worst = r.prompt_position + int64_t(r.prompt.size()) + r.sampling.max_tokens;
  // What can never run is refused here (context: InvalidArgument; memory: TooLarge), never
  // queued; what fits but not now waits for memory in the queue.
  runner_.require_fits(worst, str_cat("prompt (", r.prompt_position + int64_t(r.prompt.size()), " tokens) + max_tokens (",
                                     r.sampling.max_tokens, ")"));
  std::lock_guard<std::mutex> lock(mu_);
  if (int64_t(incoming_.size()) + stats_.waiting >= options_.max_waiting)
    fail(ErrorKind::OutOfMemory, "the request queue is full (", options_.max_waiting, " waiting)");
  const uint64_t id = next_id_++;
  incoming_.emplace_back(id, std::move(r));
  wake_.notify_one();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(id);
  wake_.notify_one();
}

void Scheduler::finish(Active& a, const std::string& reason, const std::string& error) {
  if (a.done) return;
  a.done = true;
  RequestEvent e = a.event();
  e.finished = true;
  e.finish_reason = reason;
  e.error = error;
  // The final state goes out before the slot is freed, and before the final event, so that a
  // client told "done" can already find it (e.g. in a session store).
  if (a.req.on_final_state && (reason == "stop" || reason == "length")) {
    try {
      STATELM_CHECK(a.seq.slot >= 0, "a request ended ", reason, " without a state");
      a.req.on_final_state(snapshot_sequence(runner_, a.seq, a.history, a.base));
    } catch (const std::exception& ex) {
      e.finish_reason = "error";
      e.error = str_cat("snapshot of the final state: ", ex.what());
    }
  }
  if (a.seq.slot >= 0) runner_.close(a.seq);
  if (!a.req.on_event) return;
  try {
    a.req.on_event(e);
  } catch (const std::exception& ex) {  // nothing left to tell the request; the scheduler goes on
    log_error("request ", a.id, ": its final event's handler failed: ", ex.what());
  }
}

// Opens a's sequence, from the longest cached prefix of its prompt when there is one. The
// cache's slots are its own (running sequences stay within max_sequences); its KV blocks are
// not, so when blocks are short, checkpoints are dropped (least recently used first) only if
// that can make room for this request.
bool Scheduler::try_admit(Active& a) {
  if (runner_.free_slots() == 0 || int64_t(running_.size()) >= runner_.max_sequences()) return false;
  if (!a.swapped.empty()) {  // a preempted sequence: swap its state back in, exactly as it was
    // Room for what it does next: one more token, or the rest of its prompt.
    const int64_t next = a.prefill_done() ? a.swapped_tokens + 1 : a.prompt_tokens();
    const KvCache& kv = runner_.kv();
    if (!kv.empty() && kv.blocks_for(next) > runner_.free_blocks()) return false;
    a.seq = restore_sequence(runner_, a.swapped);
    STATELM_CHECK(runner_.reserve(a.seq, next), "blocks checked free before the restore");
    a.swapped.clear();
    return true;
  }
  const int64_t worst = options_.reserve_worst_case ? a.prompt_tokens() + a.req.sampling.max_tokens : a.prompt_tokens();
  if (!a.req.resume_state.empty()) return admit_restored(a, worst);
  if (!prefix_) {
    auto seq = runner_.try_open(worst);
    if (!seq) return false;
    a.seq = std::move(*seq);
    return true;
  }
  KvCache& kv = runner_.kv();
  while (true) {
    const int64_t hit = prefix_->longest_prefix(a.req.prompt);
    auto seq = hit > 0 ? prefix_->open(a.req.prompt, hit, worst) : runner_.try_open(worst);
    if (seq) {
      a.seq = std::move(*seq);
      a.prefilled = a.cached_tokens = hit;
      ++prefix_lookups_;
      prefix_hits_ += hit > 0;
      prefix_reused_ += hit;
      return true;
    }
    const int64_t need = kv.empty() ? 0 : kv.blocks_for(worst) - hit / kv.block_size();
    if (prefix_->size() == 0 || runner_.free_blocks() + prefix_->reclaimable_blocks() < need) return false;
    prefix_->evict_lru();
  }
}

// Restores a's snapshot into a free slot (checked by the caller) with KV blocks for `worst`
// tokens, as a fresh admission reserves them; prefix checkpoints are dropped for blocks only if
// that makes room. A blob that does not restore ends the request "error" (a.done, false).
bool Scheduler::admit_restored(Active& a, int64_t worst) {
  const KvCache& kv = runner_.kv();
  if (!kv.empty()) {
    const int64_t need = kv.blocks_for(worst);
    if (need > runner_.free_blocks() &&
        (!prefix_ || runner_.free_blocks() + prefix_->reclaimable_blocks() < need))
      return false;
    while (need > runner_.free_blocks() && prefix_->evict_lru()) {
    }
  }
  try {
    a.seq = restore_sequence(runner_, a.req.resume_state);
  } catch (const Error& e) {
    finish(a, "error", str_cat("resume state: ", e.what()));
    return false;
  }
  STATELM_CHECK(runner_.reserve(a.seq, worst), "blocks checked free before the restore");
  a.cached_tokens = a.seq.n_tokens;
  a.prefilled = a.seq.n_tokens - a.base;
  std::string().swap(a.req.resume_state);  // the blob's memory goes back now, not at the end
  return true;
}

// Grows a's KV blocks to `tokens`; when they are short, preempts the most recently admitted
// running sequences (possibly a itself) until it fits. False when a was preempted.
bool Scheduler::grow_or_preempt(Active& a, int64_t tokens) {
  while (!runner_.reserve(a.seq, tokens)) {
    Active* victim = nullptr;
    for (auto it = running_.rbegin(); it != running_.rend() && !victim; ++it)
      if (!(*it)->done && (*it)->swapped.empty()) victim = it->get();
    preempt(*victim);
    if (victim == &a) return false;
  }
  return true;
}

// Swaps the victim's whole state (slot + KV) out to host memory and frees its slot and blocks.
// Its tokens so far: the prompt part fed, or the whole history (the last one still pending).
void Scheduler::preempt(Active& v) {
  std::span<const int32_t> tokens = v.prefill_done() ? std::span<const int32_t>(v.history)
                                                     : std::span<const int32_t>(v.req.prompt).first(size_t(v.prefilled));
  v.swapped = snapshot_sequence(runner_, v.seq, tokens, v.base);
  v.swapped_tokens = v.seq.n_tokens;
  runner_.close(v.seq);
  ++preemptions_;
}

// Keeps a's state at a checkpoint boundary it just reached (the step that fed up to here ended
// exactly on it). Skipped when the cache has no slot to give.
void Scheduler::checkpoint(Active& a) {
  const auto prefix = std::span<const int32_t>(a.req.prompt).first(size_t(a.prefilled));
  if (prefix_->insert(prefix, a.seq)) ++prefix_checkpoints_;
}

void Scheduler::clear_prefix_cache() {
  if (prefix_) prefix_->clear();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.prefix_entries = 0;
  stats_.free_slots = runner_.free_slots();
  stats_.free_blocks = runner_.free_blocks();
}

void Scheduler::admit_incoming() {
  std::vector<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      auto a = std::make_unique<Active>();
      a->id = incoming_.front().first;
      a->req = std::move(incoming_.front().second);
      a->history = a->req.prompt;
      a->base = a->req.prompt_position;
      waiting_.push_back(std::move(a));
      incoming_.pop_front();
    }
    cancels.swap(cancels_);
  }
  for (uint64_t id : cancels) {
    for (auto& a : running_)
      if (a->id == id) finish(*a, "cancelled");
    for (auto& a : waiting_)
      if (a->id == id) finish(*a, "cancelled");
  }
}

bool Scheduler::step() {
  const auto step_start = std::chrono::steady_clock::now();
  admit_incoming();
  std::erase_if(waiting_, [](const auto& a) { return a->done; });
  std::erase_if(running_, [](const auto& a) { return a->done; });

  // Every decoding sequence needs room for one more token; without worst-case reservation,
  // that may take preempting the youngest (they go back to the front of the queue, oldest
  // first, and resume from their swapped state).
  if (!options_.reserve_worst_case) {
    for (auto& a : running_)
      if (!a->done && a->swapped.empty() && a->prefill_done()) grow_or_preempt(*a, a->seq.n_tokens + 1);
    for (auto it = running_.rbegin(); it != running_.rend(); ++it)
      if (!(*it)->swapped.empty()) waiting_.push_front(std::move(*it));
    std::erase_if(running_, [](const auto& a) { return !a; });
  }

  // Pack the batch: decodes first (they hold memory and users are waiting on each token), then
  // prefill chunks of admitted prompts, then newly admitted prompts, FIFO, while budget lasts.
  int64_t budget = options_.max_batch_tokens;
  std::vector<Active*> batch;
  std::vector<std::vector<int32_t>> inputs;
  for (auto& a : running_)
    if (a->prefill_done() && budget > 0) {
      batch.push_back(a.get());
      inputs.push_back({a->next_input});
      --budget;
    }
  auto add_prefill = [&](Active& a) {
    int64_t n = std::min<int64_t>(budget, int64_t(a.req.prompt.size()) - a.prefilled);
    if (prefix_) {  // end the chunk on the next checkpoint boundary, if it comes first
      const int64_t interval = prefix_->interval();
      n = std::min(n, (a.prefilled / interval + 1) * interval - a.prefilled);
    }
    batch.push_back(&a);
    inputs.emplace_back(a.req.prompt.begin() + a.prefilled, a.req.prompt.begin() + a.prefilled + n);
    budget -= n;
  };
  for (auto& a : running_)
    if (!a->prefill_done() && budget > 0) add_prefill(*a);
  while (budget > 0 && !waiting_.empty()) {
    Active& a = *waiting_.front();
    if (!try_admit(a)) {
      if (!a.done) break;  // head of line waits for memory: FIFO keeps latecomers from starving it
      waiting_.pop_front();  // its state did not restore: it has ended with the error
      continue;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    if (a.prefill_done()) {  // a preempted sequence resuming its decode
      batch.push_back(&a);
      inputs.push_back({a.next_input});
      --budget;
    } else {
      add_prefill(a);
    }
  }
  if (batch.empty()) {  // nothing to run, but a cancel may just have freed a slot
    std::lock_guard<std::mutex> lock(mu_);
    publish_counts(stats_, running_.size(), waiting_.size(), runner_);
    return false;
  }

  std::vector<Sequence*> seqs;
  for (Active* a : batch) seqs.push_back(&a->seq);
  Tensor logits;  // [batch.size(), vocab] on the backend
  const auto model_start = std::chrono::steady_clock::now();
  try {
    logits = runner_.step_device(seqs, inputs);
  } catch (const std::exception& e) {
    for (Active* a : batch) finish(*a, "error", e.what());
    std::erase_if(running_, [](const auto& a) { return a->done; });
    std::lock_guard<std::mutex> lock(mu_);
    publish_counts(stats_, running_.size(), waiting_.size(), runner_);
    return true;
  }
  // Prompt progress, and the rows that get a token now.
  int64_t tokens_in = 0;
  std::vector<Active*> sampled;
  std::vector<SampleRow> rows;
  for (size_t i = 0; i < batch.size(); ++i) {
    Active& a = *batch[i];
    if (a.done) continue;
    if (!a.prefill_done()) {
      a.prefilled += int64_t(inputs[i].size());
      tokens_in += int64_t(inputs[i].size());
      // A boundary at the prompt's very end is kept too: the state holds exactly the prompt
      // until the sampled token is fed, and a longer prompt (the next turn) may start with it.
      if (prefix_ && a.base == 0 && a.prefilled % prefix_->interval() == 0) checkpoint(a);
      if (!a.prefill_done()) continue;  // mid-prompt: these logits predict a known token
    }
    if (a.generated >= a.req.sampling.max_tokens) {
      finish(a, "length");
      continue;
    }
    sampled.push_back(&a);
    rows.push_back(sample_row(a.req.sampling, a.history, uint64_t(a.generated)));
    rows.back().logits_row = int32_t(i);
  }
  // Sampled where the logits are: only the ids come back. A device backend runs the forward
  // asynchronously and this is where the host waits for it, so the model's time ends here.
  std::vector<int32_t> tokens(rows.size());
  double model_seconds = 0;
  try {
    if (!rows.empty()) runner_.backend().sample(logits, rows, tokens);
    model_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - model_start).count();
  } catch (const std::exception& e) {
    for (Active* a : sampled) finish(*a, "error", e.what());
    sampled.clear();
  }
  const int64_t vocab = runner_.spec().vocab_size;
  std::vector<float> host_row;
  int64_t tokens_out = 0;
  for (size_t k = 0; k < sampled.size(); ++k) {
    Active& a = *sampled[k];
    const int32_t token = tokens[k];
    a.history.push_back(token);
    ++a.generated;
    ++tokens_out;
    RequestEvent e = a.event();
    e.token = token;
    if (a.req.sampling.logprobs >= 0) {  // the full distribution: this row's logits come to the host
      host_row.resize(size_t(vocab));
      runner_.backend().download(logits.rows(rows[k].logits_row, 1), host_row.data());
      e.logprob = token_logprobs(host_row, token, a.req.sampling.logprobs, e.top_logprobs);
    }
    bool keep_going = true;
    try {
      if (a.req.on_event) keep_going = a.req.on_event(e);
    } catch (const std::exception& ex) {  // the request fails, not the scheduler's thread
      finish(a, "error", str_cat("handling generated token ", token, ": ", ex.what()));
      continue;
    }
    const auto& stops = a.req.sampling.stop_token_ids;
    if (!keep_going || std::find(stops.begin(), stops.end(), token) != stops.end()) finish(a, "stop");
    else if (a.generated >= a.req.sampling.max_tokens) finish(a, "length");
    else a.next_input = token;
  }
  std::erase_if(running_, [](const auto& a) { return a->done; });
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.steps;
  stats_.model_seconds += model_seconds;
  stats_.step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
  stats_.tokens_in += tokens_in;
  stats_.tokens_out += tokens_out;
  publish_counts(stats_, running_.size(), waiting_.size(), runner_);
  stats_.prefix_lookups = prefix_lookups_;
  stats_.prefix_hits = prefix_hits_;
  stats_.prefix_reused_tokens = prefix_reused_;
  stats_.prefix_checkpoints = prefix_checkpoints_;
  stats_.prefix_entries = prefix_ ? prefix_->size() : 0;
  stats_.preemptions = preemptions_;
  return true;
}

void Scheduler::run_until_idle() {
  while (true) {
    if (step()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (incoming_.empty() && cancels_.empty() && running_.empty() && waiting_.empty()) return;
  }
}

void Scheduler::start() {
  STATELM_CHECK(!thread_.joinable(), "scheduler already started");
  stop_ = false;
  thread_ = std::thread([this] {
    while (!stop_) {
      if (step()) continue;
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, std::chrono::milliseconds(50),
                     [&] { return stop_ || !incoming_.empty() || !cancels_.empty(); });
    }
  });
}

void Scheduler::stop() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  admit_incoming();
  for (auto& a : running_) finish(*a, "cancelled");
  for (auto& a : waiting_) finish(*a, "cancelled");
  running_.clear();
  waiting_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  publish_counts(stats_, running_.size(), waiting_.size(), runner_);
}

SnapshotHeader Scheduler::check_snapshot(std::string_view blob) const { return statelm::check_snapshot(runner_, blob); }

std::string Scheduler::empty_snapshot() const { return statelm::empty_snapshot(runner_); }

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s = stats_;
  s.submitted = int64_t(incoming_.size());
  return s;
}

}  // namespace statelm
