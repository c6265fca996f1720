// Kernel-bench cases of attention (causal prefill and paged GQA decode), the Jamba MoE layer, and
// the GEMMs of the mamba2-2.7b layer, at the shapes of ../shared/bench/peer_bench.py where it has
// them (its shape strings). Bytes and FLOPs beside each case; bf16 activations and weights.
#include <algorithm>
#include <cmath>
#include <set>

#include "bench/cuda/kernel_bench.h"
#include "core/error.h"

namespace statelm::bench {

namespace {

constexpr DType kBf16 = DType::BF16;
constexpr int64_t kHeadDim = 128;

// --- attention ---------------------------------------------------------------------------------

// The paged KV cache of `seqs` sequences of up to `tokens` tokens each: sequence i owns blocks
// [i * per_seq, (i + 1) * per_seq) (a fresh cache hands them out in that order).
struct Paged {
  DevTensor k, v;
  Batch batch;
};
Paged paged_cache(Bench& b, int64_t seqs, int64_t tokens, int64_t hkv, bool random) {
  const int32_t bs = b.options().kv_block_size;
  const int32_t per_seq = int32_t((tokens + bs - 1) / bs);
  Paged pc;
  if (random) {
    pc.k = b.uniform(kBf16, {seqs * per_seq, bs, hkv, kHeadDim}, -1.0f, 1.0f);
    pc.v = b.uniform(kBf16, {seqs * per_seq, bs, hkv, kHeadDim}, -1.0f, 1.0f);
  } else {
    pc.k = b.zeros(kBf16, {seqs * per_seq, bs, hkv, kHeadDim});
    pc.v = b.zeros(kBf16, {seqs * per_seq, bs, hkv, kHeadDim});
  }
  pc.batch.block_size = bs;
  pc.batch.max_blocks_per_seq = per_seq;
  for (int32_t i = 0; i < int32_t(seqs) * per_seq; ++i) pc.batch.block_tables.push_back(i);
  return pc;
}

AttentionParams attention_params(const DevTensor& qkv, const DevTensor& out, const Paged& pc, int64_t hq, int64_t hkv) {
  const int64_t qd = hq * kHeadDim, kvd = hkv * kHeadDim;
  return {qkv.t.cols(0, qd).unflatten_last(hq, kHeadDim),
          qkv.t.cols(qd, kvd).unflatten_last(hkv, kHeadDim),
          qkv.t.cols(qd + kvd, kvd).unflatten_last(hkv, kHeadDim),
          pc.k.t,
          pc.v.t,
          out.t.unflatten_last(hq, kHeadDim),
          1.0f / std::sqrt(float(kHeadDim))};
}

Case attention_prefill(int64_t L, int64_t hkv) {
  const std::string heads = hkv == 32 ? "h32" : str_cat("h32/kv", hkv);
  Case c{"attention_prefill", "attention prefill causal", str_cat("b1 ", heads, " d128 s=", L),
         {{"b", 1}, {"L", L}, {"hq", 32}, {"hkv", hkv}}};
  const int64_t hq = 32;
  // q, k, v read and out written once, k and v stored into the paged cache (bf16):
  //   2 L D (Hq + 2 Hkv + Hq) + 2 L D 2 Hkv
  c.bytes = 2.0 * L * kHeadDim * (2 * hq + 2 * hkv) + 4.0 * L * kHeadDim * hkv;
  // Q K^T and P V over the causal half, as the peer counts it: 4 L^2 Hq D / 2.
  c.flops = 2.0 * double(L) * double(L) * hq * kHeadDim;
  c.run = [L, hq, hkv](Bench& b) {
    DevTensor qkv = b.uniform(kBf16, {L, (hq + 2 * hkv) * kHeadDim}, -1.0f, 1.0f);  // the qkv projection's output
    DevTensor out = b.zeros(kBf16, {L, hq * kHeadDim});
    Paged pc = paged_cache(b, 1, L, hkv, false);
    pc.batch.spans = {{0, int32_t(L), 0, 0}};
    b.prepare(pc.batch);
    const AttentionParams p = attention_params(qkv, out, pc, hq, hkv);
    Measured m;
    m.timing = b.time([&](int) { b.backend().attention(p, pc.batch.view); }, "attention prefill");
    m.note = str_cat("KV block ", pc.batch.block_size);
    return m;
  };
  return c;
}

Case attention_decode(int64_t B, int64_t L) {
  Case c{"attention_decode", "paged GQA decode", str_cat("b=", B, " L=", L, " 32q/8kv d128"),
         {{"b", B}, {"L", L}, {"hq", 32}, {"hkv", 8}}};
  const int64_t hq = 32, hkv = 8;
  // Each sequence reads its L cached keys and values (the new token's among them); q read, out
  // written, the new k and v read and stored (bf16):
  //   2 b L Hkv D 2 + 2 b D (2 Hq + 4 Hkv)
  c.bytes = 4.0 * B * L * hkv * kHeadDim + 2.0 * B * kHeadDim * (2 * hq + 4 * hkv);
  c.flops = 4.0 * B * hq * double(L) * kHeadDim;  // q K^T and p V
  c.run = [B, L, hq, hkv](Bench& b) {
    DevTensor qkv = b.uniform(kBf16, {B, (hq + 2 * hkv) * kHeadDim}, -1.0f, 1.0f);
    DevTensor out = b.zeros(kBf16, {B, hq * kHeadDim});
    Paged pc = paged_cache(b, B, L, hkv, true);
    for (int32_t i = 0; i < int32_t(B); ++i) pc.batch.spans.push_back({i, 1, i, int32_t(L - 1)});
    b.prepare(pc.batch);
    const AttentionParams p = attention_params(qkv, out, pc, hq, hkv);
    Measured m = b.time_graphed([&](int) { b.backend().attention(p, pc.batch.view); }, pc.batch, "attention decode");
    m.note = join_note(m.note, str_cat("KV block ", pc.batch.block_size));
    return m;
  };
  return c;
}

// --- MoE (Jamba-v0.1 layer: d 4096, 16 experts, top-2, SwiGLU ff 14336) -------------------------

constexpr int64_t kMoeD = 4096, kMoeE = 16, kMoeK = 2, kMoeF = 14336;

double moe_bytes(int64_t T, double experts_used) {
  // The router and x read, out written (bf16), and the gate_up [2F, D] and down [D, F] weights of
  // every expert some token picked:  2 (E D + 2 T D) + experts_used 2 (2 F D + D F)
  return 2.0 * (kMoeE * kMoeD + 2.0 * T * kMoeD) + experts_used * 2.0 * 3.0 * kMoeF * kMoeD;
}

Case moe(int64_t T) {
  Case c{"moe", "MoE (Jamba-v0.1 layer)", str_cat("T=", T, " d4096 e16 top2 ff14336"), {{"T", T}}};
  // Experts used: here the expectation under uniform routing, E (1 - (1 - k/E)^T); the run
  // counts the experts its router actually picks and reports that.
  c.bytes = moe_bytes(T, kMoeE * (1.0 - std::pow(1.0 - double(kMoeK) / kMoeE, double(T))));
  // Router 2 T E D; per token and chosen expert gate_up 2 D 2F and down 2 F D: 6 T k D F.
  c.flops = 2.0 * T * kMoeE * kMoeD + 6.0 * T * kMoeK * kMoeD * kMoeF;
  c.run = [T](Bench& b) {
    // x and the router from the host, so the experts picked can be counted there (on the
    // bf16-rounded values the GPU sees; a near-tie could differ, which moves the count by one).
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> x(size_t(T * kMoeD)), router(size_t(kMoeE * kMoeD));
    for (float& v : x) v = bf16_to_f32(f32_to_bf16(dist(b.rng())));
    for (float& v : router) v = bf16_to_f32(f32_to_bf16(dist(b.rng()) / 64.0f));
    std::set<int> used;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<std::pair<double, int>> logits;
      for (int e = 0; e < kMoeE; ++e) {
        double s = 0;
        for (int64_t d = 0; d < kMoeD; ++d) s += double(x[size_t(t * kMoeD + d)]) * router[size_t(e * kMoeD + d)];
        logits.emplace_back(-s, e);
      }
      std::partial_sort(logits.begin(), logits.begin() + kMoeK, logits.end());
      for (int k = 0; k < kMoeK; ++k) used.insert(logits[size_t(k)].second);
    }
    DevTensor xd = b.zeros(kBf16, {T, kMoeD}), rd = b.zeros(kBf16, {kMoeE, kMoeD});
    b.upload(xd.t, x);
    b.upload(rd.t, router);
    const float gu = 1.0f / std::sqrt(float(kMoeD)), dn = 1.0f / std::sqrt(float(kMoeF));
    DevTensor gate_up = b.uniform(kBf16, {kMoeE, 2 * kMoeF, kMoeD}, -gu, gu);
    DevTensor down = b.uniform(kBf16, {kMoeE, kMoeD, kMoeF}, -dn, dn);
    DevTensor out = b.zeros(kBf16, {T, kMoeD});
    const MoeParams p{xd.t, rd.t, gate_up.t, down.t, kMoeK, false, out.t};
    Measured m;
    m.timing = b.time([&](int) { b.backend().moe(p); }, "moe");
    m.bytes = moe_bytes(T, double(used.size()));
    m.note = str_cat(used.size(), " experts used");
    return m;
  };
  return c;
}

// --- GEMMs of the mamba2-2.7b layer (out[M, N] = x[M, K] W[N, K]^T) -----------------------------

Case gemm(const char* which, int64_t M, int64_t N, int64_t K) {
  Case c{"gemm", str_cat("GEMM ", which, " (mamba2-2.7b)"), str_cat("M=", M, " N=", N, " K=", K),
         {{"M", M}, {"N", N}, {"K", K}}};
  c.bytes = 2.0 * (double(M) * K + double(N) * K + double(M) * N);  // x and W read, out written (bf16)
  c.flops = 2.0 * double(M) * N * K;
  c.run = [M, N, K](Bench& b) {
    // Rotating weight copies: a model's next layer has its own weights, never in L2.
    const int nbuf = rotation_count(2.0 * N * K);
    const float s = 1.0f / std::sqrt(float(K));
    DevTensor x = b.uniform(kBf16, {M, K}, -1.0f, 1.0f);
    DevTensor w = b.uniform(kBf16, {nbuf * N, K}, -s, s);
    DevTensor out = b.zeros(kBf16, {M, N});
    auto fn = [&](int i) { b.backend().matmul(x.t, w.t.rows((i % nbuf) * N, N), Tensor{}, out.t); };
    Measured m;
    if (M <= 64) {  // decode-sized: launch-bound eagerly
      Batch none;
      m = b.time_graphed(fn, none, "matmul");
    } else {
      m.timing = b.time(fn, "matmul");
    }
    m.note = join_note(m.note, str_cat(nbuf, " weight copies rotated"));
    return m;
  };
  return c;
}

}  // namespace

// Causal prefill at 64K is the slowest case by far (35 TFLOP a call): it runs last, so that a
// --max-seconds budget cuts it first.
std::vector<Case> dense_cases() {
  std::vector<Case> cs;
  for (int64_t L : {32768, 131072})
    for (int64_t B : {1, 16}) cs.push_back(attention_decode(B, L));
  for (int64_t T : {1, 16, 2048}) cs.push_back(moe(T));
  // mamba2-2.7b: in_proj 2560 -> 10576 (z | xBC | dt), out_proj 5120 -> 2560, LM head 2560 -> 50288.
  for (int64_t M : {1, 2, 4, 8, 16, 32, 64}) {
    cs.push_back(gemm("in_proj", M, 10576, 2560));
    cs.push_back(gemm("out_proj", M, 2560, 5120));
  }
  for (int64_t M : {1, 16, 64}) cs.push_back(gemm("lm_head", M, 50288, 2560));
  for (int64_t M : {2048, 16384}) {
    cs.push_back(gemm("in_proj", M, 10576, 2560));
    cs.push_back(gemm("out_proj", M, 2560, 5120));
  }
  for (int64_t L : {4096, 16384, 65536})
    for (int64_t hkv : {32, 8}) cs.push_back(attention_prefill(L, hkv));
  return cs;
}

}  // namespace statelm::bench
