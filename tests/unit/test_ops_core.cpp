// The CPU kernels of every non-SSM op (embedding, RMSNorm family, matmul, SwiGLU, add, RoPE,
// paged GQA attention, MoE) against the naive double-precision references of reference_ops.h.
//
// Inputs are random (fixed seeds) with odd sizes, and laid out as the forward lays them out:
// x, q/k/v, gate/up as column slices of wider matrices (row-strided views). The stateful ops get
// a batch of spans of mixed lengths, placed in the flat batch in shuffled order, some fresh and
// some continuing a sequence (pos > 0); the KV cache is paged with block_size 4 and the blocks
// of each sequence in shuffled order, so sequences cross blocks. Every cache cell that no token
// should touch holds a poison value, so reading or writing past a sequence shows up.
// Besides the references, two exact properties: matmul rows and MoE tokens do not depend on
// what else is in the batch (bitwise), which "prefill then decode == one forward" relies on.
// Tolerances are relative to the largest |reference| value of the compared tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "unit/op_test_util.h"
#include "unit/reference_ops.h"

namespace statelm {
namespace {

using test::expect_close;
using test::gather;
using test::random_vector;
using test::Wide;

constexpr double kTol = 2e-6;  // observed ≤ 2e-7 on every op; 1e-5 would let small bugs through
constexpr float kPoison = 100.0f;  // cache cells of no position: a read of one dominates the softmax

Tensor vec_tensor(std::vector<float>& v) { return Tensor::contiguous(v.data(), DType::F32, {int64_t(v.size())}); }

// One span per (len, pos), span i in slot i; their tokens placed in the batch in shuffled order.
struct LenPos { int32_t len, pos; };
std::vector<SeqSpan> place_spans(std::mt19937& rng, const std::vector<LenPos>& seqs) {
  std::vector<int32_t> order(seqs.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<SeqSpan> spans(seqs.size());
  int32_t start = 0;
  for (int32_t i : order) {
    spans[size_t(i)] = {start, seqs[size_t(i)].len, i, seqs[size_t(i)].pos};
    start += seqs[size_t(i)].len;
  }
  return spans;
}
int64_t total_tokens(const std::vector<SeqSpan>& spans) {
  int64_t n = 0;
  for (const SeqSpan& s : spans) n += s.len;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Embedding, norms, element-wise.

TEST(OpsCoreEmbed, CopiesRowsFromStridedTable) {
  std::mt19937 rng(101);
  const int64_t V = 29, D = 37;
  Wide table(rng, V, D), out(rng, 6, D);
  const std::vector<int32_t> ids = {3, 0, 28, 3, 17, 28};
  CpuBackend().embed(ids, table.full, out.full);
  EXPECT_EQ(gather(out.full), ref::embed(gather(table.full), D, ids));
}

TEST(OpsCoreNorm, RmsNormMatchesReference) {
  std::mt19937 rng(102);
  const int64_t D = 37;
  const float eps = 1e-5f;
  for (int64_t T : {1, 3, 7}) {
    Wide x(rng, T, D), out(rng, T, D);
    // A row with mean(x²) ≈ 3e-7, well under eps: only eps inside the sqrt gets it right.
    for (int64_t i = 0; i < D; ++i) x.full.f32()[(T - 1) * x.full.stride[0] + i] *= 1e-3f;
    std::vector<float> w = random_vector(rng, size_t(D), 0.5f, 1.5f);
    const std::vector<float> want = ref::rms_norm(gather(x.full), w, T, D, eps);
    CpuBackend().rms_norm(x.full, vec_tensor(w), eps, out.full);
    expect_close(gather(out.full), want, kTol, "rms_norm T=" + std::to_string(T));
    CpuBackend().rms_norm(x.full, vec_tensor(w), eps, x.full);  // in place, as the forward may
    expect_close(gather(x.full), want, kTol, "rms_norm in place T=" + std::to_string(T));
  }
}

TEST(OpsCoreNorm, AddRmsNormUpdatesResidual) {
  std::mt19937 rng(103);
  const int64_t T = 7, D = 37;
  const float eps = 1e-6f;
  Wide residual(rng, T, D, -3.0f, 3.0f), x(rng, T, D), out(rng, T, D);
  std::vector<float> w = random_vector(rng, size_t(D), 0.5f, 1.5f);
  std::vector<float> want_residual = gather(residual.full);
  const std::vector<float> want = ref::add_rms_norm(want_residual, gather(x.full), w, T, D, eps);
  CpuBackend().add_rms_norm(residual.full, x.full, vec_tensor(w), eps, out.full);
  EXPECT_EQ(gather(residual.full), want_residual);  // one fp32 add per element: exact
  expect_close(gather(out.full), want, kTol, "add_rms_norm out");
}

TEST(OpsCoreNorm, GatedRmsNormPerGroup) {
  std::mt19937 rng(104);
  const int64_t D = 45;
  for (int64_t T : {1, 7})
    for (int64_t group : {D, D / 3}) {
      const std::string what = "T=" + std::to_string(T) + " group=" + std::to_string(group);
      Wide yz(rng, T, 2 * D, -2.0f, 2.0f), out(rng, T, D);
      const Tensor y = yz.cols(0, D), z = yz.cols(D, D);
      std::vector<float> w = random_vector(rng, size_t(D), 0.5f, 1.5f);
      const std::vector<float> want = ref::gated_rms_norm(gather(y), gather(z), w, T, D, group, 1e-5);
      CpuBackend().gated_rms_norm(y, z, vec_tensor(w), group, 1e-5f, out.full);
      expect_close(gather(out.full), want, kTol, what);
    }
}

TEST(OpsCoreElementwise, SwigluAndAdd) {
  std::mt19937 rng(105);
  const int64_t T = 7, F = 29;
  Wide gate_up(rng, T, 2 * F, -4.0f, 4.0f), out(rng, T, F);
  CpuBackend().swiglu(gate_up.full, out.full);
  expect_close(gather(out.full), ref::swiglu(gather(gate_up.full), T, F), kTol, "swiglu");

  Wide acc(rng, T, F), x(rng, T, F);
  std::vector<float> want = gather(acc.full);
  const std::vector<float> xs = gather(x.full);
  for (size_t i = 0; i < want.size(); ++i) want[i] += xs[i];
  CpuBackend().add(acc.full, x.full);
  EXPECT_EQ(gather(acc.full), want);
}

// ---------------------------------------------------------------------------------------------
// Matmul.

TEST(OpsCoreMatmul, MatchesReferenceForEveryRowCount) {
  std::mt19937 rng(106);
  const int64_t K = 45;
  // T crosses the row groups (6 rows) twice; N = 131 leaves a 3-row tail after two 64-row tiles.
  for (int64_t N : {29, 131})
    for (int64_t T = 1; T <= 20; ++T) {
      const bool with_bias = T % 2 == 1;
      Wide x(rng, T, K + 7), out(rng, T, N);
      const Tensor xv = x.cols(3, K);
      std::vector<float> w = random_vector(rng, size_t(N * K), -1.0f, 1.0f);
      std::vector<float> b = with_bias ? random_vector(rng, size_t(N), -1.0f, 1.0f) : std::vector<float>{};
      CpuBackend().matmul(xv, Tensor::contiguous(w.data(), DType::F32, {N, K}), with_bias ? vec_tensor(b) : Tensor{},
                          out.full);
      expect_close(gather(out.full), ref::matmul(gather(xv), w, b, T, K, N), kTol,
                   "T=" + std::to_string(T) + " N=" + std::to_string(N) + (with_bias ? " bias" : ""));
    }
}

// A row's output is the same bits whether it is computed alone, in a group of 5, or among 13.
TEST(OpsCoreMatmul, RowsAreBatchInvariant) {
  if (const char* e = std::getenv("STATELM_CPU_GEMM"); e && std::string(e) == "openblas")
    GTEST_SKIP() << "STATELM_CPU_GEMM=openblas is not batch-invariant by design";
  std::mt19937 rng(107);
  const int64_t T = 13, N = 131;
  for (int64_t K : {45, 301}) {
    Wide x(rng, T, K);
    std::vector<float> w = random_vector(rng, size_t(N * K), -1.0f, 1.0f), b = random_vector(rng, size_t(N), -1, 1);
    const Tensor wt = Tensor::contiguous(w.data(), DType::F32, {N, K});
    std::vector<float> all(size_t(T * N)), part(size_t(5 * N));
    CpuBackend().matmul(x.full, wt, vec_tensor(b), Tensor::contiguous(all.data(), DType::F32, {T, N}));
    for (int64_t r = 0; r < T; ++r) {
      CpuBackend().matmul(x.full.rows(r, 1), wt, vec_tensor(b), Tensor::contiguous(part.data(), DType::F32, {1, N}));
      EXPECT_EQ(std::memcmp(part.data(), &all[size_t(r * N)], size_t(N) * 4), 0)
          << "K=" << K << " row " << r << " alone";
    }
    for (int64_t r0 = 0; r0 + 5 <= T; ++r0) {
      CpuBackend().matmul(x.full.rows(r0, 5), wt, vec_tensor(b), Tensor::contiguous(part.data(), DType::F32, {5, N}));
      EXPECT_EQ(std::memcmp(part.data(), &all[size_t(r0 * N)], size_t(5 * N) * 4), 0)
          << "K=" << K << " rows " << r0 << "..+5";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE.

// Spans of 13, 1 (decode at 20), 7 (continuing at 9), 3 and 1 fresh.
const std::vector<LenPos> kRopeSeqs = {{13, 0}, {1, 20}, {7, 9}, {3, 0}, {1, 0}};

TEST(OpsCoreRope, MatchesReferenceForEveryKind) {
  std::mt19937 rng(108);
  struct Case { const char* name; int64_t Dh; RopeSpec rope; };
  auto spec = [](RopeKind kind, int64_t rotary_dim) {
    RopeSpec r;
    r.kind = kind;
    r.rotary_dim = rotary_dim;
    return r;
  };
  RopeSpec linear = spec(RopeKind::Linear, 16);
  linear.factor = 4.0;
  // original_max 64, factors 1 / 4: wavelengths 6.3 (kept), 19.9 and 62.8 (blended), 199… (divided).
  RopeSpec llama3 = spec(RopeKind::Llama3, 16);
  llama3.factor = 8.0;
  llama3.original_max_position = 64;
  RopeSpec partial = spec(RopeKind::Default, 8);
  partial.theta = 500.0;
  RopeSpec partial_llama3 = llama3;
  partial_llama3.rotary_dim = 10;
  const Case cases[] = {{"none", 16, spec(RopeKind::None, 16)},  {"default", 16, spec(RopeKind::Default, 16)},
                        {"linear", 16, linear},                  {"llama3", 16, llama3},
                        {"partial 8 of 12", 12, partial},        {"llama3 partial 10 of 14", 14, partial_llama3}};
  const int64_t Hq = 6, Hkv = 2;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<SeqSpan> spans = place_spans(rng, kRopeSeqs);
    const int64_t T = total_tokens(spans), Dh = c.Dh;
    Wide qkv(rng, T, (Hq + 2 * Hkv) * Dh);
    const Tensor q = qkv.cols(0, Hq * Dh).unflatten_last(Hq, Dh);
    const Tensor k = qkv.cols(Hq * Dh, Hkv * Dh).unflatten_last(Hkv, Dh);
    const Tensor v = qkv.cols((Hq + Hkv) * Dh, Hkv * Dh);
    const std::vector<float> v_before = gather(v);
    std::vector<std::vector<float>> want_q, want_k;
    for (const SeqSpan& sp : spans) {
      want_q.push_back(gather(q, sp.start, sp.len));
      want_k.push_back(gather(k, sp.start, sp.len));
      ref::rope(want_q.back(), sp.len, Hq, Dh, sp.pos, c.rope);
      ref::rope(want_k.back(), sp.len, Hkv, Dh, sp.pos, c.rope);
    }
    CpuBackend().rope({q, k, c.rope}, {T, spans});
    for (size_t s = 0; s < spans.size(); ++s) {
      const std::string what = "span " + std::to_string(s) + " (pos " + std::to_string(spans[s].pos) + ")";
      expect_close(gather(q, spans[s].start, spans[s].len), want_q[s], kTol, what + " q");
      expect_close(gather(k, spans[s].start, spans[s].len), want_k[s], kTol, what + " k");
    }
    EXPECT_EQ(gather(v), v_before) << "rope touched v";
  }
}

// ---------------------------------------------------------------------------------------------
// Paged attention.

// A paged KV cache for the spans of one batch: each sequence owns ceil((pos + len) / 4) blocks
// drawn from a shuffled pool; table entries past those point at a block of no sequence. The
// first pos positions of each sequence hold a random history; every other cell holds kPoison.
struct PagedCache {
  static constexpr int32_t kBlock = 4;
  int64_t Hkv, Dh, n_blocks = 0;
  int32_t max_blocks = 0;
  std::vector<int32_t> table;
  std::vector<float> k, v;
  std::vector<std::vector<float>> hist_k, hist_v;  // per span: [pos][Hkv][Dh]

  PagedCache(std::mt19937& rng, const std::vector<SeqSpan>& spans, int64_t hkv, int64_t dh) : Hkv(hkv), Dh(dh) {
    for (const SeqSpan& sp : spans) {
      const int32_t need = (sp.pos + sp.len + kBlock - 1) / kBlock;
      n_blocks += need;
      max_blocks = std::max(max_blocks, need + 1);
    }
    ++n_blocks;  // the unowned one
    std::vector<int32_t> pool(static_cast<size_t>(n_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    table.assign(spans.size() * size_t(max_blocks), pool.back());
    size_t next = 0;
    for (size_t s = 0; s < spans.size(); ++s)
      for (int32_t i = 0; i * kBlock < spans[s].pos + spans[s].len; ++i)
        table[s * size_t(max_blocks) + size_t(i)] = pool[next++];
    k.assign(size_t(n_blocks * kBlock * Hkv * Dh), kPoison);
    v = k;
    for (size_t s = 0; s < spans.size(); ++s) {
      hist_k.push_back(random_vector(rng, size_t(spans[s].pos * Hkv * Dh), -1.0f, 1.0f));
      hist_v.push_back(random_vector(rng, size_t(spans[s].pos * Hkv * Dh), -1.0f, 1.0f));
      write(s, 0, spans[s].pos, hist_k[s], hist_v[s]);
    }
  }
  // Offset of (span s's position p, kv head 0) in k / v.
  size_t at(size_t s, int64_t p) const {
    return size_t((int64_t(table[s * size_t(max_blocks) + size_t(p / kBlock)]) * kBlock + p % kBlock) * Hkv * Dh);
  }
  // Positions [p0, p0 + n) of span s from contiguous [n][Hkv][Dh] rows.
  void write(size_t s, int64_t p0, int64_t n, const std::vector<float>& ks, const std::vector<float>& vs) {
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(ks.begin() + i * Hkv * Dh, Hkv * Dh, k.begin() + int64_t(at(s, p0 + i)));
      std::copy_n(vs.begin() + i * Hkv * Dh, Hkv * Dh, v.begin() + int64_t(at(s, p0 + i)));
    }
  }
  Tensor k_tensor() { return Tensor::contiguous(k.data(), DType::F32, {n_blocks, kBlock, Hkv, Dh}); }
  Tensor v_tensor() { return Tensor::contiguous(v.data(), DType::F32, {n_blocks, kBlock, Hkv, Dh}); }
  BatchView batch(int64_t n_tokens, const std::vector<SeqSpan>& spans) const {
    BatchView b;
    b.n_tokens = n_tokens;
    b.spans = spans;
    b.block_tables = table.data();
    b.max_blocks_per_seq = max_blocks;
    b.block_size = kBlock;
    return b;
  }
};

// Runs attention on `seqs` and checks each span's output against the reference and the whole
// cache against the history plus the span's new k/v at positions pos..pos+len-1.
void check_attention(std::mt19937& rng, int64_t Hq, int64_t Hkv, int64_t Dh, const std::vector<LenPos>& seqs) {
  const std::vector<SeqSpan> spans = place_spans(rng, seqs);
  const int64_t T = total_tokens(spans);
  Wide qkv(rng, T, (Hq + 2 * Hkv) * Dh, -2.0f, 2.0f), out(rng, T, Hq * Dh);
  AttentionParams p;
  p.q = qkv.cols(0, Hq * Dh).unflatten_last(Hq, Dh);
  p.k = qkv.cols(Hq * Dh, Hkv * Dh).unflatten_last(Hkv, Dh);
  p.v = qkv.cols((Hq + Hkv) * Dh, Hkv * Dh).unflatten_last(Hkv, Dh);
  p.out = out.full.unflatten_last(Hq, Dh);
  p.scale = float(1.0 / std::sqrt(double(Dh)));
  PagedCache cache(rng, spans, Hkv, Dh);
  PagedCache want_cache = cache;
  p.k_cache = cache.k_tensor();
  p.v_cache = cache.v_tensor();

  std::vector<std::vector<float>> want;
  for (size_t s = 0; s < spans.size(); ++s) {
    const SeqSpan& sp = spans[s];
    std::vector<float> keys = cache.hist_k[s], values = cache.hist_v[s];
    const std::vector<float> new_k = gather(p.k, sp.start, sp.len), new_v = gather(p.v, sp.start, sp.len);
    keys.insert(keys.end(), new_k.begin(), new_k.end());
    values.insert(values.end(), new_v.begin(), new_v.end());
    want.push_back(ref::attention(gather(p.q, sp.start, sp.len), keys, values, sp.len, sp.pos, Hq, Hkv, Dh, p.scale));
    want_cache.write(s, sp.pos, sp.len, new_k, new_v);
  }
  CpuBackend().attention(p, cache.batch(T, spans));
  for (size_t s = 0; s < spans.size(); ++s) {
    const SeqSpan& sp = spans[s];
    const std::string what =
        "span " + std::to_string(s) + " (len " + std::to_string(sp.len) + ", pos " + std::to_string(sp.pos) + ")";
    expect_close(gather(p.out, sp.start, sp.len), want[s], kTol, what);
  }
  EXPECT_EQ(cache.k, want_cache.k) << "k cache";
  EXPECT_EQ(cache.v, want_cache.v) << "v cache";
}

// Prefill chunks crossing blocks (13 fresh; 7 at 9), decodes (1 at 11, 1 at 0), a span of 5 at 3.
const std::vector<LenPos> kAttnSeqs = {{13, 0}, {1, 11}, {7, 9}, {5, 3}, {3, 6}, {1, 0}};

TEST(OpsCoreAttention, GroupedHeadsMatchReferenceOnPagedMixedSpans) {
  std::mt19937 rng(109);
  check_attention(rng, /*Hq=*/6, /*Hkv=*/2, /*Dh=*/9, kAttnSeqs);
}

TEST(OpsCoreAttention, OneKvHeadPerQueryHeadMatchesReference) {
  std::mt19937 rng(110);
  check_attention(rng, /*Hq=*/3, /*Hkv=*/3, /*Dh=*/8, kAttnSeqs);
}

// The queries of a span attend to the span's own earlier tokens, which are only in the cache
// once the op has appended them: 5 new tokens after 3 cached ones, crossing a block boundary.
TEST(OpsCoreAttention, AppendsSpanToCacheBeforeAttending) {
  std::mt19937 rng(111);
  check_attention(rng, /*Hq=*/4, /*Hkv=*/2, /*Dh=*/9, {{5, 3}});
}

// ---------------------------------------------------------------------------------------------
// MoE.

struct MoeSetup {
  int64_t T, D, E, F;
  Wide x, out;
  std::vector<float> router, gate_up, down;
  MoeSetup(std::mt19937& rng, int64_t t, int64_t d, int64_t e, int64_t f)
      : T(t), D(d), E(e), F(f), x(rng, t, d + 4), out(rng, t, d) {
    router = random_vector(rng, size_t(E * D), -1.0f, 1.0f);
    gate_up = random_vector(rng, size_t(E * 2 * F * D), -0.5f, 0.5f);
    down = random_vector(rng, size_t(E * D * F), -0.5f, 0.5f);
  }
  Tensor xv() const { return x.cols(1, D); }
  MoeParams params(int64_t top_k, bool renormalize) {
    MoeParams p;
    p.x = xv();
    p.router = Tensor::contiguous(router.data(), DType::F32, {E, D});
    p.gate_up = Tensor::contiguous(gate_up.data(), DType::F32, {E, 2 * F, D});
    p.down = Tensor::contiguous(down.data(), DType::F32, {E, D, F});
    p.top_k = top_k;
    p.renormalize = renormalize;
    p.out = out.full;
    return p;
  }
  std::vector<float> reference(int64_t top_k, bool renormalize) const {
    return ref::moe(gather(xv()), router, gate_up, down, T, D, E, F, top_k, renormalize);
  }
};

TEST(OpsCoreMoe, MatchesReference) {
  std::mt19937 rng(112);
  for (int64_t top_k : {2, 3})
    for (bool renormalize : {false, true}) {
      MoeSetup m(rng, /*T=*/13, /*D=*/37, /*E=*/5, /*F=*/11);
      CpuBackend().moe(m.params(top_k, renormalize));
      expect_close(gather(m.out.full), m.reference(top_k, renormalize), kTol,
                   "top_k=" + std::to_string(top_k) + (renormalize ? " renormalized" : ""));
    }
}

// A token's output does not depend on which other tokens share its experts' GEMMs.
TEST(OpsCoreMoe, TokenAloneEqualsTokenInBatch) {
  std::mt19937 rng(113);
  MoeSetup m(rng, /*T=*/7, /*D=*/37, /*E=*/5, /*F=*/11);
  MoeParams p = m.params(2, true);
  CpuBackend().moe(p);
  const std::vector<float> batched = gather(m.out.full);
  for (int64_t t = 0; t < m.T; ++t) {
    MoeParams one = p;
    one.x = p.x.rows(t, 1);
    one.out = p.out.rows(t, 1);
    std::fill_n(one.out.f32(), m.D, kPoison);  // the op must overwrite its output, not add to it
    CpuBackend().moe(one);
    EXPECT_EQ(gather(one.out), std::vector<float>(batched.begin() + t * m.D, batched.begin() + (t + 1) * m.D))
        << "token " << t;
  }
}

// Exact ties in p go to the lower expert index: router rows 1 and 3 are equal and the others
// zero, so a token with x·r1 > 0 ties experts 1 and 3 at the top, and one with x·r1 < 0 ties
// experts 0, 2 and 4.
TEST(OpsCoreMoe, TiesGoToLowerExpertIndex) {
  std::mt19937 rng(114);
  for (int64_t top_k : {1, 2}) {
    MoeSetup m(rng, /*T=*/7, /*D=*/37, /*E=*/5, /*F=*/11);
    std::fill(m.router.begin(), m.router.end(), 0.0f);
    const std::vector<float> r = random_vector(rng, size_t(m.D), -1.0f, 1.0f);
    std::copy(r.begin(), r.end(), m.router.begin() + 1 * m.D);
    std::copy(r.begin(), r.end(), m.router.begin() + 3 * m.D);
    CpuBackend().moe(m.params(top_k, false));
    expect_close(gather(m.out.full), m.reference(top_k, false), kTol, "top_k=" + std::to_string(top_k));
  }
}

}  // namespace
}  // namespace statelm
