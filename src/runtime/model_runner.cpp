#include "runtime/model_runner.h"

#include <cstdio>
#include <tuple>

#include "core/error.h"
#include "core/log.h"
#include "core/system_memory.h"

namespace statelm {

namespace {

// FNV-1a in two lanes (different offset bases) for 128 bits: cheap, stable across builds and
// hosts, and enough to tell checkpoints apart (this is an identity check, not a security one).
struct Fingerprinter {
  uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull;
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) {
      a = (a ^ p[i]) * 0x100000001b3ull;
      b = (b ^ p[i]) * 0x100000001b3ull;
      b ^= b >> 29;
    }
  }
  void text(const std::string& s) { bytes(s.data(), s.size() + 1); }  // with the NUL: "ab"+"c" != "a"+"bc"
  void number(int64_t v) { bytes(&v, sizeof v); }
  std::string hex() const {
    char out[33];
    std::snprintf(out, sizeof out, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
    return out;
  }
};

// Hashes every tensor's name, shape and dtype plus up to 16 windows of 256 bytes spread over
// its data (all of it when small): reading whole multi-GB checkpoints would slow every load.
std::string model_fingerprint(const ModelSpec& spec, const Checkpoint* checkpoint, uint64_t random_seed) {
  Fingerprinter h;
  h.text(spec.architecture);
  h.text(spec.layout);
  h.text(spec.mixer_pattern());
  h.text(spec.ffn_pattern());
  if (!checkpoint) {
    h.text("random weights");
    h.number(int64_t(random_seed));
  }
  for (const TensorSpec& t : expected_tensors(spec)) {
    h.text(t.name);
    for (int64_t d : t.shape) h.number(d);
    if (!checkpoint) continue;
    TensorRef ref = checkpoint->require(t);
    h.text(ref.info->dtype_code);
    const size_t n = ref.info->nbytes(), window = 256, windows = 16;
    if (n <= window * windows) {
      h.bytes(ref.data, n);
    } else {
      for (size_t i = 0; i < windows; ++i) h.bytes(ref.data + i * (n - window) / (windows - 1), window);
    }
  }
  return h.hex();
}

}  // namespace

namespace {
// The memory planner's view of this runner (runtime/memory_plan.h). The backend's allocator
// rounding is not known here: exact bytes (the CLI's plan adds it).
MemoryPlanOptions plan_options(const Backend& backend, const RunnerOptions& o, int64_t max_context) {
  MemoryPlanOptions p;
  p.device = backend.device();
  p.compute_dtype = backend.compute_dtype();
  p.state_dtype = o.state_dtype;
  p.batch = o.max_sequences;
  p.context = max_context;
  p.kv_block_size = o.kv_block_size;
  p.kv_blocks = o.kv_blocks;
  p.extra_slots = o.prefix_cache_slots;
  p.step_tokens = std::max<int64_t>(1, o.step_tokens);
  return p;
}

// How many sequences of max_context tokens fit the memory budget (state slot + worst-case KV
// each, and the prefix cache's slots, as the memory plan counts them), at most the number asked.
int32_t fit_sequences(const ModelSpec& spec, const RunnerOptions& o, const MemoryPlanOptions& plan) {
  STATELM_CHECK(o.max_sequences > 0, "max_sequences must be positive");
  if (o.cache_memory_bytes <= 0) return o.max_sequences;  // budget resolved by the caller
  const int64_t fit = max_batch(spec, plan, o.cache_memory_bytes, /*caches_only=*/true, o.max_sequences);
  MemoryPlanOptions one = plan;
  one.batch = 1;
  one.kv_blocks = 0;
  const MemoryPlan p = plan_memory(spec, one);
  if (fit < 1)
    fail(ErrorKind::OutOfMemory, "a cache memory budget of ", o.cache_memory_bytes, " bytes does not hold one sequence of ",
         plan.context, " tokens (", p.caches(), " bytes: state ", p.state, " + KV ", p.kv,
         o.prefix_cache_slots ? str_cat(", with ", o.prefix_cache_slots, " prefix cache slots") : std::string(),
         "); raise the budget or lower the context");
  if (fit < o.max_sequences) {
    log_warning("max sequences clamped from ", o.max_sequences, " to ", fit, ": ", p.sequence_bytes(plan.context),
                " bytes each (state + KV at ", plan.context, " tokens) in a budget of ", o.cache_memory_bytes, " bytes");
    return int32_t(fit);
  }
  return o.max_sequences;
}
}  // namespace

ModelRunner::ModelRunner(const std::string& model_dir, Backend& backend, RunnerOptions o)
    : model_dir_(model_dir), backend_(backend), files_(open_model_files(model_dir, !o.random_weights)) {
  if (o.state_dtype != DType::F32 && o.state_dtype != DType::BF16 && o.state_dtype != DType::F16)
    fail(ErrorKind::InvalidArgument, "RunnerOptions::state_dtype must be float32, bfloat16 or float16, got ",
         dtype_name(o.state_dtype));
  const ModelSpec& spec = files_.spec;
  weights_ = o.random_weights ? random_weights(spec, backend, o.seed) : load_weights(spec, *files_.checkpoint, backend);
  forward_ = std::make_unique<Forward>(spec, weights_, backend);
  graphs_ = std::make_unique<DecodeGraphs>(backend, *forward_, o.decode_graphs);
  fingerprint_ = model_fingerprint(spec, o.random_weights ? nullptr : &*files_.checkpoint, o.seed);
  max_context_ = o.max_context > 0 ? o.max_context
                                   : (spec.max_position_embeddings > 0 ? spec.max_position_embeddings : 4096);
  if (o.cache_memory_bytes <= 0 && o.cache_memory_fraction > 0) {
    if (!(o.cache_memory_fraction <= 1.0))
      fail(ErrorKind::InvalidArgument, "cache memory fraction ", o.cache_memory_fraction, " must be in (0, 1]");
    // Read after the weights were loaded, so they are already accounted for: the device's free
    // memory for a device backend (cudaMemGetInfo), MemAvailable for the CPU.
    const size_t device_free = backend.available_memory();
    const size_t available = device_free > 0 ? device_free : system_memory().available_bytes;
    // The caches get the fraction less what a step's activations will take (memory plan).
    const MemoryPlan step = plan_memory(spec, plan_options(backend, o, max_context_));
    o.cache_memory_bytes = int64_t(o.cache_memory_fraction * double(available)) - (step.activations + step.logits);
    if (o.cache_memory_bytes <= 0)
      fail(ErrorKind::OutOfMemory, "a cache memory fraction of ", o.cache_memory_fraction, " of ", available,
           " bytes available leaves nothing beside the ", step.activations + step.logits,
           " bytes of a step's activations (", o.step_tokens, " tokens); raise the fraction");
  }
  o.max_sequences = fit_sequences(spec, o, plan_options(backend, o, max_context_));
  STATELM_CHECK(o.prefix_cache_slots >= 0, "prefix_cache_slots must not be negative");
  prefix_cache_slots_ = o.prefix_cache_slots;
  states_ = std::make_unique<StateCache>(spec, backend, o.max_sequences + o.prefix_cache_slots,
                                         o.state_dtype);
  const int64_t blocks_per_seq = (max_context_ + o.kv_block_size - 1) / o.kv_block_size;
  const int64_t n_blocks = o.kv_blocks > 0 ? o.kv_blocks : blocks_per_seq * o.max_sequences;
  kv_ = std::make_unique<KvCache>(spec, backend, int32_t(n_blocks), o.kv_block_size);
  MemoryPlanOptions planned = plan_options(backend, o, max_context_);
  planned.kv_blocks = n_blocks;
  plan_ = plan_memory(spec, planned);
  caches_.resize(spec.layers.size());
  for (size_t i = 0; i < spec.layers.size(); ++i)
    caches_[i] = LayerCaches{states_->conv(int64_t(i)), states_->ssm(int64_t(i)), kv_->k(int64_t(i)), kv_->v(int64_t(i))};
}

Sequence ModelRunner::open() {
  auto slot = states_->acquire();
  if (!slot) fail(ErrorKind::OutOfMemory, "all ", states_->n_slots(), " state slots are in use");
  Sequence s;
  s.slot = *slot;
  return s;
}

std::optional<Sequence> ModelRunner::try_open(int64_t tokens) {
  if (states_->free_slots() == 0) return std::nullopt;
  Sequence s;
  if (!kv_->reserve(s.blocks, tokens)) return std::nullopt;
  s.slot = *states_->acquire();
  return s;
}

bool ModelRunner::fits(int64_t tokens) const {
  if (kv_->empty()) return true;
  return tokens <= max_context_ && kv_->blocks_for(tokens) <= kv_->n_blocks();
}

void ModelRunner::require_fits(int64_t tokens, const std::string& what) const {
  if (kv_->empty()) return;  // a fixed state: any length runs
  if (tokens > max_context_)
    fail(ErrorKind::InvalidArgument, what, " exceeds the context limit of ", max_context_, " tokens");
  if (kv_->blocks_for(tokens) > kv_->n_blocks())
    fail(ErrorKind::TooLarge, what, " needs ", plan_.sequence_bytes(tokens), " bytes (state ", plan_.state_per_slot(),
         " + KV ", plan_.kv_for(tokens), " for ", tokens, " tokens) and ", plan_.activations + plan_.logits,
         " for a step's activations; this engine's KV cache holds ", int64_t(kv_->n_blocks()) * kv_->block_size(),
         " tokens (", plan_.kv, " bytes) for all its sequences together, so it can never run here");
}

void ModelRunner::close(Sequence& seq) {
  if (seq.slot >= 0) states_->release(seq.slot);
  kv_->release(seq.blocks);
  seq = Sequence{};
}

std::vector<float> ModelRunner::step(std::span<Sequence* const> seqs, std::span<const std::vector<int32_t>> tokens,
                                     bool all_logits) {
  const Tensor logits = step_device(seqs, tokens, all_logits);
  std::vector<float> host(size_t(logits.numel()));
  backend_.download(logits, host.data());
  return host;
}

Tensor ModelRunner::step_device(std::span<Sequence* const> seqs, std::span<const std::vector<int32_t>> tokens,
                                bool all_logits) {
  STATELM_CHECK(seqs.size() == tokens.size(), "one token list per sequence");
  ForwardBatch b;
  b.all_logits = all_logits;
  b.block_size = kv_->block_size();
  int64_t max_end = 0, max_blocks = 0;
  // Reserve first, for every sequence, so a failure leaves no sequence half-advanced.
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *seqs[i];
    STATELM_CHECK(s.slot >= 0, "step on a closed sequence");
    if (tokens[i].empty()) fail(ErrorKind::InvalidArgument, "empty prompt: a sequence needs at least one token");
    const int64_t end = s.n_tokens + int64_t(tokens[i].size());
    if (!kv_->empty() && end > max_context_)
      fail(ErrorKind::InvalidArgument, "context of ", end, " tokens exceeds the limit of ", max_context_, " for ",
           model_dir_);
    if (!kv_->reserve(s.blocks, end)) fail(ErrorKind::OutOfMemory, "KV cache full: no blocks for ", end, " tokens");
    max_end = std::max(max_end, end);
    max_blocks = std::max<int64_t>(max_blocks, int64_t(s.blocks.blocks.size()));
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *seqs[i];
    b.spans.push_back(SeqSpan{int32_t(b.tokens.size()), int32_t(tokens[i].size()), s.slot, int32_t(s.n_tokens)});
    b.tokens.insert(b.tokens.end(), tokens[i].begin(), tokens[i].end());
  }
  const bool graph = graphs_->eligible(b.spans, all_logits);
  b.max_blocks_per_seq = int32_t(max_blocks);
  if (graph) {  // launches planned for a bucket, so the graph serves the next steps too
    std::tie(b.key_capacity, b.max_blocks_per_seq) = graphs_->plan(!kv_->empty(), max_end, max_blocks, b.block_size);
    if (b.max_blocks_per_seq == 0) b.max_blocks_per_seq = int32_t(max_blocks);
  }
  if (!kv_->empty()) {
    b.block_tables.assign(seqs.size() * size_t(b.max_blocks_per_seq), 0);
    for (size_t i = 0; i < seqs.size(); ++i)
      std::copy(seqs[i]->blocks.blocks.begin(), seqs[i]->blocks.blocks.end(),
                b.block_tables.begin() + long(i) * b.max_blocks_per_seq);
  }
  const Tensor logits = graph ? graphs_->run(b, caches_) : forward_->run_device(b, caches_);
  for (size_t i = 0; i < seqs.size(); ++i) seqs[i]->n_tokens += int64_t(tokens[i].size());
  return logits;
}

}  // namespace statelm
