// The memory planner (see memory_plan.h). Every term mirrors the code that allocates it; the
// comments name that code, and tests/unit/test_memory_plan.cpp checks each term against what the
// CPU backend really allocates for every fixture family.
#include "runtime/memory_plan.h"

#include <algorithm>
#include <map>
#include <variant>

#include "core/error.h"
#include "model/forward.h"
#include "model/weights.h"

namespace statelm {

namespace {

int64_t mul(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) fail(ErrorKind::InvalidArgument, "memory plan: ", a, " x ", b, " overflows 64 bits");
  return r;
}

int64_t add(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) fail(ErrorKind::InvalidArgument, "memory plan: ", a, " + ", b, " overflows 64 bits");
  return r;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t align256(int64_t bytes) { return ceil_div(std::max<int64_t>(bytes, 1), 256) * 256; }

// One allocation as the backend's allocator takes it.
struct Allocator {
  size_t (*round)(size_t);
  int64_t operator()(int64_t bytes) const { return round ? int64_t(round(size_t(bytes))) : bytes; }
};

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n = mul(n, d);
  return n;
}

// Columns of SsdGate::sumsq the backend's ssd writes (Backend::ssd_gate_partials): the CPU sums
// a token's squares in one; cuda/ssd.cu's decode kernel writes one per block of 16 channels.
int64_t ssd_gate_partials(Device device, const Mamba2Dims& m) {
  return device == Device::Cpu ? 1 : m.n_heads * ((m.head_dim + 15) / 16);
}

// Forward's scratch (model/forward.cpp): kHidden, kNormed, kBlockOut [T, D]; then from kMixer on
// each layer helper's intermediates by index, per token, in units of the compute dtype's `es`
// bytes. An index keeps its largest use. A step of T tokens in `rows` spans.
std::vector<int64_t> mixer_scratch_per_token(const ModelSpec& spec, int64_t T, int64_t rows, Device device,
                                             int64_t es) {
  std::vector<int64_t> widest;
  auto use = [&](std::initializer_list<int64_t> widths) {
    if (widest.size() < widths.size()) widest.resize(widths.size(), 0);
    size_t i = 0;
    for (int64_t w : widths) widest[i] = std::max(widest[i], w), ++i;
  };
  for (const LayerSpec& l : spec.layers) {
    if (const auto* m = std::get_if<Mamba1Dims>(&l.mixer)) {
      const int64_t Di = m->d_inner, N = m->d_state, R = m->dt_rank;
      // xz, u, dt|B|C, (dt, B, C normed: Jamba), delta, y
      if (m->dt_bc_norms) use({2 * Di, Di, R + 2 * N, R, N, N, Di, Di});
      else use({2 * Di, Di, R + 2 * N, 0, 0, 0, Di, Di});
    } else if (const auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
      // zxbcdt, xbc, y, then the gated norm's output, or in decode steps the fp32 partial sums
      // of its squares (defers_gated_norm). T tokens in at most `rows` spans can be a prefill
      // unless T = 1, and the norm's output is the larger of the two.
      const bool decode_only = T == 1 && rows >= 1 && defers_gated_norm(*m2, 1, 1);
      const int64_t last = decode_only ? ssd_gate_partials(device, *m2) * 4 / es : m2->d_inner;
      use({m2->in_proj_dim(), m2->conv_dim(), m2->d_inner, last});
    } else {
      const auto& a = std::get<AttentionDims>(l.mixer);
      use({(a.n_heads + 2 * a.n_kv_heads) * a.head_dim, a.n_heads * a.head_dim});  // qkv, o
    }
    if (const auto* mlp = std::get_if<MlpDims>(&l.ffn)) use({2 * mlp->d_ff, mlp->d_ff});  // gate|up, act
  }
  return widest;
}

// CPU MoE (cpu_moe.cpp): router logits [T, E] fp32, then per expert (one at a time) its rows x,
// gate|up, act and out (at most T rows each: a token picks an expert once).
int64_t cpu_moe_scratch(const ModelSpec& spec, int64_t T, const Allocator& alloc) {
  int64_t most = 0;
  for (const LayerSpec& l : spec.layers)
    if (const auto* m = std::get_if<MoeDims>(&l.ffn)) {
      const int64_t D = spec.d_model, F = m->d_ff;
      const int64_t bytes = add(add(alloc(mul(mul(T, m->n_experts), 4)), mul(2, alloc(mul(mul(T, D), 4)))),
                                add(alloc(mul(mul(T, 2 * F), 4)), alloc(mul(mul(T, F), 4))));
      most = std::max(most, bytes);
    }
  return most;
}

// CUDA launchers' scratch for one call (cuda_backend.cu's Arena hands out 256-byte aligned
// regions of one block). Each is the most any step of T tokens in at most `rows` spans asks.
struct CudaStep {
  int64_t T = 0, rows = 0, context = 0, es = 2;
  int sms = 132;
};

// ssd.cu: chunk length Q = min(chunk_size, longest span); n chunks over the spans of >= 2 tokens,
// at most ceil(T / Q) + spans - 1; per chunk dt, cumsum, base-2 cumsum and state weights per head
// [Q] (fp32, fp64, fp32, fp32), C Bᵀ per group [Q, Q] (bf16 with bf16 activations: the
// tensor-core path, fp32 otherwise) and a state per head [P, N] (fp32), plus on the tensor-core
// path the passed-in states again in bf16.
int64_t cuda_ssd_scratch(const Mamba2Dims& m, const CudaStep& s) {
  if (s.T < 2) return 0;  // decode spans only: no chunks
  const int64_t Q = std::min(m.chunk_size, s.T);
  const int64_t spans = std::min(s.rows, s.T / 2);
  const int64_t n = s.rows == 1 ? ceil_div(s.T, Q) : ceil_div(s.T, Q) + std::max<int64_t>(spans, 1) - 1;
  const int64_t per_head = mul(mul(n, m.n_heads), Q);
  const int64_t states = mul(mul(n, m.n_heads), m.head_dim * m.d_state);
  return 3 * align256(mul(per_head, 4)) + align256(mul(per_head, 8)) + align256(mul(mul(mul(n, m.n_groups), Q), Q) * (s.es == 2 ? 2 : 4)) +
         align256(mul(states, 4)) + (s.es == 2 ? align256(mul(states, 2)) : 0);
}

// selective_scan.cu: spans are cut into pieces (at least 128 tokens) when the spans alone leave
// the GPU short of threads; then a state [Di, N] and a dt sum [Di] per piece (fp32).
int64_t cuda_scan_scratch(const Mamba1Dims& m, const CudaStep& s) {
  const int64_t NL = m.d_state <= 16 ? 16 : 32;
  const int64_t want = int64_t(s.sms) * 2048 * 2;
  if (mul(m.d_inner, NL) * 2 > want || s.T < 256) return 0;  // never split (one span: the least threads)
  int64_t pieces = 0;
  if (s.rows == 1) {  // exact for one span of T tokens
    const int64_t factor = ceil_div(want, m.d_inner * NL);
    const int64_t per_item = ceil_div(std::max<int64_t>(128, ceil_div(s.T, factor)), 32) * 32;
    pieces = ceil_div(s.T, per_item);
  } else {
    pieces = ceil_div(s.T, 128) + std::min(s.rows, s.T) - 1;
  }
  const int64_t h = ceil_div(mul(mul(pieces, m.d_inner), m.d_state), 64) * 64;
  return align256(mul(add(h, mul(pieces, m.d_inner)), 4));
}

// attention.cu: keys are split over blocks when the (query tile, KV head) blocks leave the GPU
// short (decode); each split keeps fp32 partials [64 rows, Dh] and (m, l) per block. The most
// over every count of query tiles that could split, at keys up to `context`.
int64_t cuda_attention_scratch(const AttentionDims& a, const CudaStep& s) {
  constexpr int64_t kRows = 64, kKeys = 32;
  const int64_t key_tiles = ceil_div(s.context, kKeys), want = 2 * int64_t(s.sms);
  if (key_tiles < 16) return 0;
  int64_t most = 0;
  for (int64_t items = 1; items * a.n_kv_heads < want; ++items) {
    const int64_t blocks = items * a.n_kv_heads;
    int64_t splits = std::min(ceil_div(want, blocks), key_tiles / 8);
    const int64_t per_split = ceil_div(key_tiles, splits);
    splits = ceil_div(key_tiles, per_split);
    if (splits < 2) continue;
    const int64_t rows = blocks * splits * kRows;
    most = std::max(most, align256((ceil_div(rows * a.head_dim, 64) * 64 + 2 * rows) * 4));
  }
  // attention_decode.cu (the spans of one token, in the same call): when it splits keys, fp32
  // partials (Dh + 2 floats) per block and query head of its group, for at most one wave of
  // blocks. Its blocks per SM come from the occupancy API at run time (2-3 for the shapes
  // measured); 4 bounds them. A short sequence splits down to 64 keys a split.
  if (s.context > 64) {
    const int64_t parts = 4 * int64_t(s.sms) * (a.n_heads / a.n_kv_heads);
    most += align256((ceil_div(parts * a.head_dim, 64) * 64 + 2 * parts) * 4);
  }
  return most;
}

// moe.cu: router logits [T, E] fp32, routing tables (expert, weight, counts, offsets, cursor,
// pos, token_of), then the M = T * top_k routed rows: x, gate|up, act (compute dtype), out (fp32).
int64_t cuda_moe_scratch(const ModelSpec& spec, const MoeDims& m, const CudaStep& s) {
  const int64_t T = s.T, E = m.n_experts, M = mul(T, m.top_k), D = spec.d_model, F = m.d_ff;
  return align256(mul(T, E) * 4) + 4 * align256(mul(M, 4)) + 2 * align256(E * 4) + align256((E + 1) * 4) +
         align256(mul(mul(M, D), s.es)) + align256(mul(mul(M, 2 * F), s.es)) + align256(mul(mul(M, F), s.es)) +
         align256(mul(mul(M, D), 4));
}

// The arena block: as large as the largest call's regions together.
int64_t cuda_arena(const ModelSpec& spec, const CudaStep& s) {
  int64_t most = 0;
  for (const LayerSpec& l : spec.layers) {
    if (const auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) most = std::max(most, cuda_ssd_scratch(*m2, s));
    else if (const auto* m1 = std::get_if<Mamba1Dims>(&l.mixer)) most = std::max(most, cuda_scan_scratch(*m1, s));
    else most = std::max(most, cuda_attention_scratch(std::get<AttentionDims>(l.mixer), s));
    if (const auto* moe = std::get_if<MoeDims>(&l.ffn)) most = std::max(most, cuda_moe_scratch(spec, *moe, s));
  }
  return most;
}

// The activations of one forward of T tokens in `rows` spans.
struct Step {
  int64_t forward = 0, ops = 0, staging = 0, logits = 0;
  int64_t total() const { return forward + ops + staging + logits; }
};

Step step_memory(const ModelSpec& spec, const MemoryPlanOptions& o, int64_t T, int64_t rows, int64_t blocks_per_seq,
                 bool has_attention, const Allocator& alloc) {
  const int64_t D = spec.d_model, es = int64_t(dtype_size(o.compute_dtype));
  Step s;
  s.forward = mul(3, alloc(mul(mul(T, D), es)));  // residual stream, normed input, block output
  for (int64_t width : mixer_scratch_per_token(spec, T, rows, o.device, es))
    if (width > 0) s.forward = add(s.forward, alloc(mul(mul(T, width), es)));
  if (o.device == Device::Cpu) {
    s.ops = cpu_moe_scratch(spec, T, alloc);
  } else {
    const int64_t arena = cuda_arena(spec, CudaStep{T, rows, o.context, es, o.multiprocessors});
    s.ops = arena > 0 ? alloc(arena) : 0;
    // Staging (cuda_backend.cu): the token ids; the spans and block tables.
    s.staging = alloc(T * 4) + alloc(rows * 16 + (has_attention ? mul(rows, blocks_per_seq) * 4 : 0));
  }
  s.logits = add(alloc(mul(mul(rows, D), es)), alloc(mul(mul(rows, spec.vocab_size), 4)));
  return s;
}

int fused_group(const TensorSpec& t) {
  using R = WeightRole;
  switch (t.role) {
    case R::Q: case R::K: case R::V: return 0;              // one [(Hq + 2 Hkv) Dh, D] matrix
    case R::QBias: case R::KBias: case R::VBias: return 1;
    case R::Gate: case R::Up: return 2;                     // [2F, D], or [E, 2F, D] for experts
    case R::GateBias: case R::UpBias: return 3;
    case R::Down: return t.expert >= 0 ? 4 : -1;            // experts stacked [E, D, F]
    default: return -1;                                     // a buffer of its own
  }
}

}  // namespace

std::vector<int64_t> weight_buffer_bytes(const ModelSpec& spec, DType compute) {
  std::vector<int64_t> out;
  std::map<std::pair<int64_t, int>, int64_t> fused;  // (layer, group) -> bytes
  for (const TensorSpec& t : expected_tensors(spec)) {
    const int64_t bytes = mul(numel(t.shape), int64_t(dtype_size(weight_dtype(t.role, compute))));
    const int group = fused_group(t);
    if (group < 0) out.push_back(bytes);
    else fused[{t.layer, group}] += bytes;
  }
  for (const auto& [key, bytes] : fused) out.push_back(bytes);
  return out;
}

int64_t MemoryPlan::kv_for(int64_t tokens) const {
  if (kv_bytes_per_token == 0) return 0;
  return mul(ceil_div(tokens, kv_block_size) * kv_block_size, kv_bytes_per_token);
}

MemoryPlan plan_memory(const ModelSpec& spec, const MemoryPlanOptions& o) {
  if (o.batch < 1 || o.context < 1 || o.kv_block_size < 1 || o.step_tokens < 1 || o.kv_blocks < 0 || o.extra_slots < 0 ||
      o.step_rows < 0)
    fail(ErrorKind::InvalidArgument, "memory plan: batch ", o.batch, ", context ", o.context, ", kv block size ",
         o.kv_block_size, " and step tokens ", o.step_tokens, " must be positive");
  const Allocator alloc{o.allocation_size};
  const int64_t es = int64_t(dtype_size(o.compute_dtype)), ss = int64_t(dtype_size(o.state_dtype));
  MemoryPlan p;
  p.kv_block_size = o.kv_block_size;
  p.slots = add(o.batch, o.extra_slots);
  const int64_t blocks_per_seq = ceil_div(o.context, o.kv_block_size);
  const int64_t blocks = o.kv_blocks > 0 ? o.kv_blocks : mul(blocks_per_seq, o.batch);

  for (int64_t b : weight_buffer_bytes(spec, o.compute_dtype)) p.weights = add(p.weights, alloc(b));

  bool has_attention = false;
  for (const LayerSpec& l : spec.layers) {
    int64_t conv = 0, ssm = 0;  // per slot, this layer
    if (const auto* m = std::get_if<Mamba1Dims>(&l.mixer)) {
      conv = mul(m->d_inner, m->d_conv - 1) * 4;
      ssm = mul(mul(m->d_inner, m->d_state), ss);
    } else if (const auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
      conv = mul(m2->conv_dim(), m2->d_conv - 1) * 4;
      ssm = mul(mul(mul(m2->n_heads, m2->head_dim), m2->d_state), ss);
    } else {
      const auto& a = std::get<AttentionDims>(l.mixer);
      const int64_t per_token = mul(mul(a.n_kv_heads, a.head_dim), es);  // K or V
      p.kv_bytes_per_token = add(p.kv_bytes_per_token, 2 * per_token);
      p.kv = add(p.kv, mul(2, alloc(mul(mul(blocks, o.kv_block_size), per_token))));
      has_attention = true;
      continue;
    }
    p.conv_state_per_slot += conv;
    p.ssm_state_per_slot += ssm;
    p.state = add(p.state, add(alloc(mul(p.slots, conv)), alloc(mul(p.slots, ssm))));
  }
  p.kv_blocks = has_attention ? blocks : 0;

  const int64_t rows = o.step_rows > 0 ? std::min(o.step_rows, o.step_tokens) : std::min(o.batch, o.step_tokens);
  const Step step = step_memory(spec, o, o.step_tokens, rows, blocks_per_seq, has_attention, alloc);
  const Step decode = o.whole_batch_decode ? step_memory(spec, o, o.batch, o.batch, blocks_per_seq, has_attention, alloc) : Step{};
  const Step& s = decode.total() > step.total() ? decode : step;
  p.forward_scratch = s.forward;
  p.op_scratch = s.ops;
  p.staging = s.staging;
  p.activations = add(add(s.forward, s.ops), s.staging);
  p.logits = s.logits;
  add(add(add(p.weights, p.state), add(p.kv, p.activations)), p.logits);  // overflow check of the total
  return p;
}

int64_t max_batch(const ModelSpec& spec, MemoryPlanOptions o, int64_t budget, bool caches_only, int64_t limit) {
  o.kv_blocks = 0;
  auto fits = [&](int64_t b) {
    o.batch = b;
    try {
      const MemoryPlan p = plan_memory(spec, o);
      return (caches_only ? p.caches() : p.total()) <= budget;
    } catch (const Error&) {
      return false;  // beyond 64 bits: does not fit any budget
    }
  };
  if (!fits(1)) return 0;
  int64_t lo = 1, hi = 2;  // fits(lo); find a hi that does not fit
  while (hi <= limit && fits(hi)) lo = hi, hi *= 2;
  if (hi > limit) {
    if (fits(limit)) return limit;
    hi = limit;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
}

}  // namespace statelm
