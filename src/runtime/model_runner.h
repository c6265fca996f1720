// ModelRunner: a loaded model plus its state slots and KV blocks, driven one batch at a time.
// The CLI, the tests and (later) the scheduler feed it sequences: each step packs the given
// sequences' new tokens into one flat batch and runs the generic forward once.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "model/forward.h"
#include "model/model_files.h"
#include "model/weights.h"
#include "runtime/decode_graphs.h"
#include "runtime/kv_cache.h"
#include "runtime/memory_plan.h"
#include "runtime/state_cache.h"

namespace statelm {

struct RunnerOptions {
  int32_t max_sequences = 4;        // state slots
  int64_t max_context = 0;          // KV tokens per sequence; 0 = the model's max_position_embeddings (or 4096)
  int32_t kv_block_size = 16;
  int32_t kv_blocks = 0;            // KV blocks in all; 0 = max_sequences sequences of max_context
  // Bytes for state slots + KV blocks together (0 = no limit). Settings that do not fit are
  // clamped with a warning (fewer sequences), never a failure, unless not even one sequence
  // of max_context fits.
  int64_t cache_memory_bytes = 0;
  // Or the budget as a fraction of the memory available after the weights are loaded (host
  // MemAvailable on the CPU, free device memory on CUDA), when cache_memory_bytes is 0 (0 = no
  // limit).
  double cache_memory_fraction = 0;
  // Tokens of one forward step (the scheduler's max_batch_tokens): the memory plan sets aside
  // their activations (runtime/memory_plan.h), and a budget given as a fraction covers them too.
  int64_t step_tokens = 512;
  // Extra state slots beyond max_sequences, for the scheduler's prefix cache (checkpoints of
  // recent prompts' state); they hold no KV blocks of their own.
  int32_t prefix_cache_slots = 0;
  // Element type of the recurrent state (conv + SSM state of every Mamba layer): DType::F32, or
  // DType::BF16 for half the bytes per slot (the ops still compute in fp32 and round the state
  // once per span; drift measured by bench/cpu/state_drift.cpp). DType::F16 exists for that
  // measurement (CPU and CUDA; the CLI does not offer it). Anything else is
  // Error(InvalidArgument). The KV cache is in the backend's compute dtype
  // (Backend::compute_dtype: fp32 on the CPU).
  DType state_dtype = DType::F32;
  // Decode steps replay recorded graphs where the backend can (CUDA graphs; runtime/decode_graphs.h).
  bool decode_graphs = true;
  bool random_weights = false;      // shapes from config.json only (benchmarks)
  uint64_t seed = 0;
};

// One sequence's hold on the runner's memory.
struct Sequence {
  int32_t slot = -1;
  BlockList blocks;
  int64_t n_tokens = 0;  // tokens already in the state
};

class ModelRunner {
 public:
  ModelRunner(const std::string& model_dir, Backend& backend, RunnerOptions options = {});

  const ModelSpec& spec() const { return files_.spec; }
  const std::string& model_dir() const { return model_dir_; }
  Forward& forward() { return *forward_; }
  const DecodeGraphs& decode_graphs() const { return *graphs_; }
  const ModelWeights& weights() const { return weights_; }
  size_t weight_bytes() const { return weights_.bytes; }
  int64_t max_context() const { return max_context_; }
  int32_t max_sequences() const { return states_->n_slots() - prefix_cache_slots_; }
  int32_t prefix_cache_slots() const { return prefix_cache_slots_; }
  // Caches and backend, for snapshot/restore (runtime/snapshot.h) to copy a sequence's state.
  Backend& backend() { return backend_; }
  StateCache& states() { return *states_; }
  KvCache& kv() { return *kv_; }
  // Identifies these weights (32 hex digits), computed once at load: architecture, every
  // tensor's name, shape and dtype, and a sample of each tensor's bytes, so two checkpoints of
  // the same shape differ. A snapshot is only restored into the model it was taken from.
  const std::string& fingerprint() const { return fingerprint_; }

  // A fresh sequence with a zeroed state slot; Error(OutOfMemory) when none is free.
  Sequence open();
  // A fresh sequence that also holds KV blocks for `tokens` tokens (its worst case), or nullopt
  // when the slot or the blocks are not free now (nothing is taken then).
  std::optional<Sequence> try_open(int64_t tokens);
  // Grows seq's KV blocks to hold `tokens` tokens; false (and no change) when too few are free.
  bool reserve(Sequence& seq, int64_t tokens) { return kv_->reserve(seq.blocks, tokens); }
  // Benchmarks and memory measurements only: puts a fresh sequence at position `tokens` without
  // running them. Its KV blocks are reserved (their contents left as they are) and its state
  // stays zero: a step's cost depends on how many keys it reads, not on their values, so
  // decode at a long context is timed without the O(L^2) prefill first. False (and no change)
  // when too few blocks are free.
  bool fast_forward(Sequence& seq, int64_t tokens) {
    if (!reserve(seq, tokens)) return false;
    seq.n_tokens = tokens;
    return true;
  }
  // Whether a sequence of `tokens` tokens could ever run here (memory and context limits).
  bool fits(int64_t tokens) const;
  // The same as an error naming `what` (e.g. "prompt (9 tokens) + max_tokens (100)"):
  // Error(InvalidArgument) beyond the context limit, Error(TooLarge) when it needs more KV
  // blocks than the runner holds in all; the message gives the bytes from the memory plan.
  void require_fits(int64_t tokens, const std::string& what) const;
  // This runner's memory as planned: weights, its slots and KV blocks, a step's activations.
  const MemoryPlan& memory_plan() const { return plan_; }
  int32_t free_slots() const { return states_->free_slots(); }
  int32_t free_blocks() const { return kv_->free_blocks(); }
  void close(Sequence& seq);

  // Feeds tokens[i] to *seqs[i] (all in one batch) and returns logits [rows, vocab]:
  // one row per sequence (its last token), or one per token when all_logits.
  std::vector<float> step(std::span<Sequence* const> seqs, std::span<const std::vector<int32_t>> tokens,
                          bool all_logits = false);
  // The same, leaving the fp32 logits [rows, vocab] on the backend (valid until the next step),
  // for sampling where they were computed.
  Tensor step_device(std::span<Sequence* const> seqs, std::span<const std::vector<int32_t>> tokens,
                     bool all_logits = false);

 private:
  std::string model_dir_;
  Backend& backend_;
  ModelFiles files_;
  ModelWeights weights_;
  std::unique_ptr<Forward> forward_;
  std::unique_ptr<DecodeGraphs> graphs_;
  int64_t max_context_;
  int32_t prefix_cache_slots_ = 0;
  std::unique_ptr<StateCache> states_;
  std::unique_ptr<KvCache> kv_;
  std::vector<LayerCaches> caches_;
  std::string fingerprint_;
  MemoryPlan plan_;
};

}  // namespace statelm
