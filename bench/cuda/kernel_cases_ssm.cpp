// Kernel-bench cases of the SSM families: Mamba-2 SSD (chunked prefill scan and decode state
// update), the Mamba-1 selective scan, and the causal conv1d, at the shapes of
// ../shared/bench/peer_bench.py (its shape strings, so rows can be matched with the peer's).
//
// Each case states the bytes the op must move and the FLOPs it must do beside its shape;
// activations are bf16 (2 B), small per-channel parameters and the recurrent state fp32 (4 B)
// unless the case says otherwise. Inputs are laid out as the forward lays them out
// (src/model/forward.cpp): x, B and C as column slices of the conv output, the conv's input as a
// slice of in_proj's output, z as a slice of [x | z].
#include <cmath>

#include "bench/cuda/kernel_bench.h"
#include "core/error.h"

namespace statelm::bench {

namespace {

constexpr DType kBf16 = DType::BF16;
constexpr DType kF32 = DType::F32;

// mamba2-2.7b layer (TARGETS.md): d_model 2560, expand 2, headdim 64 (80 heads), d_state 128,
// 1 group, chunk 256, conv width 4.
constexpr int64_t kDi = 5120, kH = 80, kP = 64, kN = 128, kG = 1, kChunk = 256, kK = 4;
constexpr int64_t kConvDim = kDi + 2 * kG * kN;        // 5376 channels through the conv: x | B | C
constexpr int64_t kInProj = 2 * kDi + 2 * kG * kN + kH;  // 10576: z | xBC | dt

// mamba-2.8b layer (Mamba-1): d_inner 5120, d_state 16, dt_rank 160.
constexpr int64_t kM1Di = 5120, kM1N = 16, kM1R = 160;

// Per-head parameters as a Mamba-2 checkpoint holds them: A = -exp(A_log) in [-16, -1],
// dt_bias the inverse softplus of dt in [1e-3, 0.1], D ~ 1.
struct HeadParams {
  DevTensor A, dt_bias, D;
};
HeadParams head_params(Bench& b, int64_t n) {
  return {b.uniform(kF32, {n}, -16.0f, -1.0f), b.uniform(kF32, {n}, -6.9f, -2.25f), b.uniform(kF32, {n}, 0.5f, 1.5f)};
}

// FLOPs of the chunked SSD over L tokens of one sequence. Per chunk of q tokens, with the
// intra-chunk matmuls dense as the chunked algorithm runs them (the causal mask not subtracted):
//   C B^T                      2 G q q N
//   (C B^T ∘ decay) x          2 H q q P
//   chunk state x^T (B ∘ decay) 2 H q P N
//   y += C S_prev              2 H q P N
//   state passing              2 H P N
double ssd_chunked_flops(int64_t L) {
  double f = 0;
  for (int64_t at = 0; at < L; at += kChunk) {
    const double q = double(std::min(kChunk, L - at));
    f += 2 * kG * q * q * kN + 2 * kH * q * q * kP + 4 * kH * q * kP * kN + 2.0 * kH * kP * kN;
  }
  return f;
}

// One prefill span of L tokens from position 0, in slot 0.
Batch prefill_batch(int64_t L) {
  Batch batch;
  batch.spans = {{0, int32_t(L), 0, 0}};
  return batch;
}

// b decode spans of one token each, sequence i in slot i, continuing a state of `pos` tokens.
Batch decode_batch(int64_t b, int32_t pos) {
  Batch batch;
  for (int32_t i = 0; i < int32_t(b); ++i) batch.spans.push_back({i, 1, i, pos});
  return batch;
}

// A decode case's timing over `nbuf` copies of the recurrent state (rotation_count): call i
// points `state` at copy i % nbuf (the b slots' rows of `states`) and runs `op`, so that
// repeated calls read the state from HBM and not from L2.
template <typename Op>
Measured time_rotated_states(Bench& b, Batch& batch, const DevTensor& states, int nbuf, int64_t B, Tensor& state,
                             Op&& op, const char* what) {
  Measured m = b.time_graphed(
      [&](int i) {
        state = states.t.rows((i % nbuf) * B, B);
        op();
      },
      batch, what);
  m.note = join_note(m.note, str_cat(nbuf, " state copies rotated"));
  return m;
}

// --- Mamba-2 SSD -------------------------------------------------------------------------------

// The SSD's inputs over T tokens: x, B and C as column slices of the conv output, dt, y, and the
// per-head parameters; the state is the case's own.
struct SsdInputs {
  DevTensor xbc, dt, y;
  HeadParams hp;
};
SsdInputs ssd_inputs(Bench& b, int64_t T) {
  return {b.uniform(kBf16, {T, kConvDim}, -1.0f, 1.0f),  // conv output [T, x | B | C]
          b.uniform(kBf16, {T, kH}, -1.0f, 1.0f), b.zeros(kBf16, {T, kDi}), head_params(b, kH)};
}
SsdParams ssd_params(const SsdInputs& in) {
  SsdParams p;
  p.x = in.xbc.t.cols(0, kDi).unflatten_last(kH, kP);
  p.B = in.xbc.t.cols(kDi, kG * kN).unflatten_last(kG, kN);
  p.C = in.xbc.t.cols(kDi + kG * kN, kG * kN).unflatten_last(kG, kN);
  p.dt = in.dt.t;
  p.dt_bias = in.hp.dt_bias.t;
  p.A = in.hp.A.t;
  p.D = in.hp.D.t;
  p.out = in.y.t.unflatten_last(kH, kP);
  p.chunk_size = kChunk;
  return p;
}

Case ssd_prefill(int64_t L) {
  Case c{"ssd_prefill", "SSD chunk scan (1 layer)", str_cat("b1 L=", L, " h80 p64 n128 cs256"), {{"b", 1}, {"L", L}}};
  // x, dt, B, C read once and y written once (bf16), the final state written (fp32):
  //   2 L (H P + H + 2 G N + H P) + 4 H P N
  c.bytes = 2.0 * L * (2 * kH * kP + kH + 2 * kG * kN) + 4.0 * kH * kP * kN;
  c.flops = ssd_chunked_flops(L);
  c.run = [L](Bench& b) {
    SsdInputs in = ssd_inputs(b, L);
    DevTensor state = b.zeros(kF32, {1, kH, kP, kN});
    Batch batch = prefill_batch(L);
    b.prepare(batch);
    SsdParams p = ssd_params(in);
    p.state = state.t;
    Measured m;
    m.timing = b.time([&](int) { b.backend().ssd(p, batch.view); }, "ssd prefill");
    return m;
  };
  return c;
}

Case ssd_decode(int64_t B, DType state_dtype) {
  const std::string sd(dtype_name(state_dtype));
  Case c{"ssd_decode", "Mamba-2 state update", str_cat("b=", B, " h80 p64 n128"), {{"b", B}}, "state " + sd};
  const double esz = double(dtype_size(state_dtype));
  // The state read and written once; x, dt, B, C read and y written (bf16):
  //   2 b H P N esz + 2 b (H P + H + 2 G N + H P)
  c.bytes = 2.0 * B * kH * kP * kN * esz + 2.0 * B * (2 * kH * kP + kH + 2 * kG * kN);
  // Per state element: h = exp(dt A) h + (dt x) B (3), y += C h (2).
  c.flops = 5.0 * B * kH * kP * kN;
  c.run = [B, state_dtype, esz](Bench& b) {
    const int nbuf = rotation_count(double(B) * kH * kP * kN * esz);
    SsdInputs in = ssd_inputs(b, B);
    DevTensor states = b.uniform(state_dtype, {nbuf * B, kH, kP, kN}, -1.0f, 1.0f);
    Batch batch = decode_batch(B, 100);
    b.prepare(batch);
    SsdParams p = ssd_params(in);
    return time_rotated_states(b, batch, states, nbuf, B, p.state, [&] { b.backend().ssd(p, batch.view); },
                               "ssd decode");
  };
  return c;
}

// --- Mamba-1 selective scan --------------------------------------------------------------------

struct Mamba1Inputs {
  DevTensor xz, u, dbc, delta, y, delta_bias, A, D;
};
Mamba1Inputs mamba1_inputs(Bench& b, int64_t T) {
  return {b.uniform(kBf16, {T, 2 * kM1Di}, -1.0f, 1.0f),       // in_proj output [x | z]
          b.uniform(kBf16, {T, kM1Di}, -1.0f, 1.0f),           // conv output u
          b.uniform(kBf16, {T, kM1R + 2 * kM1N}, -1.0f, 1.0f), // x_proj output [dt | B | C]
          b.uniform(kBf16, {T, kM1Di}, -1.0f, 1.0f),           // dt_proj output
          b.zeros(kBf16, {T, kM1Di}),
          b.uniform(kF32, {kM1Di}, -6.9f, -2.25f),
          b.uniform(kF32, {kM1Di, kM1N}, -16.0f, -1.0f),
          b.uniform(kF32, {kM1Di}, 0.5f, 1.5f)};
}
SelectiveScanParams mamba1_params(const Mamba1Inputs& in) {
  SelectiveScanParams p;
  p.u = in.u.t;
  p.delta = in.delta.t;
  p.delta_bias = in.delta_bias.t;
  p.A = in.A.t;
  p.B = in.dbc.t.cols(kM1R, kM1N);
  p.C = in.dbc.t.cols(kM1R + kM1N, kM1N);
  p.D = in.D.t;
  p.z = in.xz.t.cols(kM1Di, kM1Di);
  p.out = in.y.t;
  return p;
}

Case mamba1_prefill(int64_t L) {
  Case c{"mamba1_prefill", "Mamba-1 selective scan (mamba-2.8b layer)", str_cat("b1 L=", L, " d5120 n16"),
         {{"b", 1}, {"L", L}}};
  // u, delta, z read and y written (bf16), B and C read, A read and the final state written (fp32):
  //   2 L (4 Di + 2 N) + 4 Di N + 4 Di N
  c.bytes = 2.0 * L * (4 * kM1Di + 2 * kM1N) + 8.0 * kM1Di * kM1N;
  // Per (token, channel, state): exp(dt A) (counted as 1), h = dA h + (dt u) B (3), y += C h (2).
  c.flops = 6.0 * L * kM1Di * kM1N;
  c.run = [L](Bench& b) {
    Mamba1Inputs in = mamba1_inputs(b, L);
    DevTensor state = b.zeros(kF32, {1, kM1Di, kM1N});
    Batch batch = prefill_batch(L);
    b.prepare(batch);
    SelectiveScanParams p = mamba1_params(in);
    p.state = state.t;
    Measured m;
    m.timing = b.time([&](int) { b.backend().selective_scan(p, batch.view); }, "selective_scan prefill");
    return m;
  };
  return c;
}

Case mamba1_decode(int64_t B) {
  Case c{"mamba1_decode", "Mamba-1 state update (mamba-2.8b layer)", str_cat("b=", B, " d5120 n16"), {{"b", B}},
         "state float32"};
  // The state read and written (fp32), A read once, u, delta, z, B, C read and y written (bf16):
  //   8 b Di N + 4 Di N + 2 b (4 Di + 2 N)
  c.bytes = 8.0 * B * kM1Di * kM1N + 4.0 * kM1Di * kM1N + 2.0 * B * (4 * kM1Di + 2 * kM1N);
  c.flops = 6.0 * B * kM1Di * kM1N;
  c.run = [B](Bench& b) {
    const int nbuf = rotation_count(4.0 * B * kM1Di * kM1N);
    Mamba1Inputs in = mamba1_inputs(b, B);
    DevTensor states = b.uniform(kF32, {nbuf * B, kM1Di, kM1N}, -1.0f, 1.0f);
    Batch batch = decode_batch(B, 100);
    b.prepare(batch);
    SelectiveScanParams p = mamba1_params(in);
    return time_rotated_states(b, batch, states, nbuf, B, p.state,
                               [&] { b.backend().selective_scan(p, batch.view); }, "selective_scan decode");
  };
  return c;
}

// --- conv1d (the mamba2-2.7b xBC conv: 5376 channels, width 4, SiLU) -----------------------------

// The conv's input as a slice of in_proj's output over T tokens, its output, weight and bias;
// the state is the case's own.
struct ConvInputs {
  DevTensor zxbcdt, out, w, bias;
};
ConvInputs conv_inputs(Bench& b, int64_t T) {
  return {b.uniform(kBf16, {T, kInProj}, -1.0f, 1.0f), b.zeros(kBf16, {T, kConvDim}),
          b.uniform(kF32, {kConvDim, kK}, -0.5f, 0.5f), b.uniform(kF32, {kConvDim}, -0.5f, 0.5f)};
}
Conv1dParams conv_params(const ConvInputs& in, const Tensor& state) {
  return {in.zxbcdt.t.cols(kDi, kConvDim), in.w.t, in.bias.t, state, in.out.t, true};
}

Case conv1d_prefill(int64_t L) {
  Case c{"conv1d_prefill", "conv1d prefill (mamba2-2.7b xBC)", str_cat("b1 L=", L, " c5376 k4"), {{"b", 1}, {"L", L}}};
  // x read and out written (bf16), weight + bias read and the last K-1 inputs stored (fp32):
  //   2 L C + 2 L C + 4 C (K + 1) + 4 C (K - 1)
  c.bytes = 4.0 * L * kConvDim + 4.0 * kConvDim * (kK + 1) + 4.0 * kConvDim * (kK - 1);
  c.flops = 2.0 * L * kConvDim * kK;  // one multiply-add per tap
  c.run = [L](Bench& b) {
    ConvInputs in = conv_inputs(b, L);
    DevTensor state = b.zeros(kF32, {1, kConvDim, kK - 1});
    Batch batch = prefill_batch(L);
    b.prepare(batch);
    Conv1dParams p = conv_params(in, state.t);
    Measured m;
    m.timing = b.time([&](int) { b.backend().conv1d(p, batch.view); }, "conv1d prefill");
    return m;
  };
  return c;
}

Case conv1d_decode(int64_t B) {
  Case c{"conv1d_decode", "conv1d decode step (mamba2-2.7b xBC)", str_cat("b=", B, " c5376 k4"), {{"b", B}},
         "state float32"};
  // x read and out written (bf16), the conv state read and written (fp32), weight + bias read:
  //   4 b C + 8 b C (K - 1) + 4 C (K + 1)
  c.bytes = 4.0 * B * kConvDim + 8.0 * B * kConvDim * (kK - 1) + 4.0 * kConvDim * (kK + 1);
  c.flops = 2.0 * B * kConvDim * kK;
  c.run = [B](Bench& b) {
    const int nbuf = rotation_count(4.0 * B * kConvDim * (kK - 1));
    ConvInputs in = conv_inputs(b, B);
    DevTensor states = b.uniform(kF32, {nbuf * B, kConvDim, kK - 1}, -1.0f, 1.0f);
    Batch batch = decode_batch(B, 100);
    b.prepare(batch);
    Conv1dParams p = conv_params(in, Tensor{});
    return time_rotated_states(b, batch, states, nbuf, B, p.state, [&] { b.backend().conv1d(p, batch.view); },
                               "conv1d decode");
  };
  return c;
}

}  // namespace

std::vector<Case> ssm_cases() {
  std::vector<Case> cs;
  for (int64_t L : {4096, 16384, 65536}) cs.push_back(ssd_prefill(L));
  for (DType sd : {DType::F32, DType::BF16})
    for (int64_t B : {1, 16, 128}) cs.push_back(ssd_decode(B, sd));
  for (int64_t L : {4096, 16384}) cs.push_back(mamba1_prefill(L));
  for (int64_t B : {1, 16, 128}) cs.push_back(mamba1_decode(B));
  for (int64_t L : {4096, 16384, 65536}) cs.push_back(conv1d_prefill(L));
  for (int64_t B : {1, 16, 128}) cs.push_back(conv1d_decode(B));
  return cs;
}

}  // namespace statelm::bench
