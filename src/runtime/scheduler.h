// Continuous batching. Each step packs every running sequence's next token (decode spans of
// length 1) and chunks of waiting prompts (chunked prefill) into one flat batch under a token
// budget, runs the model once, samples, and streams each token to its request's callback.
//
// Admission is planned, never hoped: a request starts only when a state slot and the KV blocks
// for its worst case (prompt + max_tokens) are free, so a running sequence never runs out of
// memory mid-flight. Finished and cancelled sequences give their slot and blocks back at once.
//
// With the prefix cache on (runtime/prefix_cache.h), prefills stop at every multiple of the
// checkpoint interval and the state there is kept; a new request starts from the longest kept
// prefix of its prompt and prefills only the rest, with the same tokens as without the cache.
// Sessions: a request may start from a snapshot of an earlier sequence (Request::resume_state,
// restored at admission into a free slot and fresh KV blocks) and prefill only its new tokens,
// and may ask for a snapshot of its final state (Request::on_final_state); max_tokens 0 then
// means "prefill only". A conversation continued this way generates exactly what one request
// over the whole conversation would.
//
// One thread drives the model (step() / the loop started by start()); submit() and cancel()
// may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "runtime/model_runner.h"
#include "runtime/prefix_cache.h"
#include "runtime/sampler.h"
#include "runtime/snapshot.h"

namespace statelm {

// What a request's callback receives: one generated token, or the end of the request.
struct RequestEvent {
  uint64_t request_id = 0;
  int32_t token = -1;             // valid when !finished, or the last token when finished with one
  bool finished = false;
  std::string finish_reason;      // "stop" | "length" | "cancelled" | "error"
  std::string error;              // for finish_reason "error"
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int64_t cached_tokens = 0;      // prompt tokens not prefilled: resumed from the prefix cache
  // With SamplingParams::logprobs >= 0 (token events only): the token's log-probability under
  // the model's raw logits, and the `logprobs` most likely tokens, best first.
  float logprob = 0;
  std::vector<TokenLogprob> top_logprobs;
};

// Returning false stops the request (finish_reason "stop"), e.g. when a stop string matched.
using EventCallback = std::function<bool(const RequestEvent&)>;

struct Request {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  EventCallback on_event;
  // Sessions. resume_state: a snapshot (runtime/snapshot.h) of this model to start from instead
  // of an empty state, restored on the engine thread at admission. Its token ids come first in
  // the sequence and `prompt` holds only what follows (it may be empty when the snapshot has a
  // pending id); events count prompt_tokens over both, the restored positions as cached_tokens.
  std::string resume_state;
  // Called on the engine thread, just before the final event, with a snapshot of the final
  // state (every token; the last sampled one pending) when the request ends "stop" or
  // "length"; if the snapshot fails the request ends "error" instead. With max_tokens 0 the
  // request only prefills: its prompt goes into the state and nothing is generated.
  std::function<void(std::string)> on_final_state;
  // Set by submit(): the position of prompt[0] in the sequence, past 0 when the resumed
  // snapshot kept only its last ids (runtime/snapshot.h: kSnapshotKeptIds).
  int64_t prompt_position = 0;
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;  // tokens per forward (decodes + prefill chunks)
  int64_t max_waiting = 1024;      // queued requests beyond this are refused
  // Prefix cache: state checkpoints every prefix_interval prompt tokens (a multiple of the KV
  // block size), at most prefix_max_entries of them (0 = every slot the runner set aside,
  // RunnerOptions::prefix_cache_slots, which must then be > 0).
  bool prefix_cache = false;
  int64_t prefix_interval = 256;
  int32_t prefix_max_entries = 0;
  // Admission. true: a request starts only when KV blocks for its worst case (prompt +
  // max_tokens) are free, so nothing is ever preempted. false: it starts with blocks for its
  // prompt and grows as it decodes; when blocks run out, the most recently admitted sequence
  // is preempted — its whole state (slot + KV) swapped to host memory as a snapshot — and
  // resumes from exactly there when memory frees up (never recomputed). More sequences run
  // at once; the price is the swap.
  bool reserve_worst_case = true;
};

struct SchedulerStats {
  int64_t running = 0, waiting = 0, steps = 0;
  int64_t submitted = 0;  // submitted and not yet taken in by a step (stats() counts them when asked)
  int64_t free_slots = 0, free_blocks = 0;
  int64_t tokens_in = 0, tokens_out = 0;
  // Admitted requests that looked in the prefix cache, those that resumed from a checkpoint,
  // the prompt tokens they skipped, checkpoints taken, and checkpoints held now.
  int64_t prefix_lookups = 0, prefix_hits = 0, prefix_reused_tokens = 0;
  int64_t prefix_checkpoints = 0, prefix_entries = 0;
  // Wall time of the steps that ran the model, and the part spent inside the model: the rest
  // is the scheduler's own overhead (packing, sampling, callbacks, bookkeeping).
  double step_seconds = 0, model_seconds = 0;
  int64_t preemptions = 0;  // sequences swapped out to host memory (reserve_worst_case = false)
};

class Scheduler {
 public:
  Scheduler(ModelRunner& runner, SchedulerOptions options = {});
  ~Scheduler();

  // Thread-safe. Error(InvalidArgument) for a request that can never run (empty prompt, ids out
  // of range, prompt + max_tokens beyond the context); Error(TooLarge) for one whose KV blocks
  // exceed the runner's whole cache; Error(OutOfMemory) when the queue is full.
  uint64_t submit(Request request);
  void cancel(uint64_t request_id);

  // Engine thread: one scheduling step; false when there was nothing to do.
  bool step();
  // Runs steps until no request is left (tests, CLI).
  void run_until_idle();
  // A background engine thread that steps while there is work and sleeps otherwise.
  void start();
  void stop();  // cancels what is left, joins the thread

  SchedulerStats stats() const;
  // Sessions, from any thread (they read only the model's fingerprint and shapes): a snapshot
  // checked in full without restoring it, and the empty state (runtime/snapshot.h).
  SnapshotHeader check_snapshot(std::string_view blob) const;
  std::string empty_snapshot() const;
  const std::string& model_fingerprint() const { return runner_.fingerprint(); }
  // Drops every prefix checkpoint (their slots and KV blocks go back). Engine thread only:
  // call it between steps, not while start()'s thread runs.
  void clear_prefix_cache();

 private:
  struct Active;
  void admit_incoming();
  bool grow_or_preempt(Active& a, int64_t tokens);
  void preempt(Active& victim);
  bool try_admit(Active& a);
  bool admit_restored(Active& a, int64_t worst);
  void checkpoint(Active& a);
  void finish(Active& a, const std::string& reason, const std::string& error = {});

  ModelRunner& runner_;
  SchedulerOptions options_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::pair<uint64_t, Request>> incoming_;
  std::vector<uint64_t> cancels_;
  uint64_t next_id_ = 1;
  // Owned by the engine thread.
  std::deque<std::unique_ptr<Active>> waiting_;
  std::vector<std::unique_ptr<Active>> running_;  // in admission order, oldest first
  int64_t preemptions_ = 0;
  std::unique_ptr<PrefixCache> prefix_;  // null when off
  int64_t prefix_hits_ = 0, prefix_lookups_ = 0, prefix_reused_ = 0, prefix_checkpoints_ = 0;
  SchedulerStats stats_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace statelm
