// The generic forward: embedding, then per layer
//   x = norm(h); h += mixer(x);   (mixer: Mamba-1 | Mamba-2 | attention)
//   x = norm(h); h += ffn(x);     (ffn: none | SwiGLU MLP | MoE)
// then the final norm and the LM head. No per-architecture code: everything comes from the
// ModelSpec. Shapes: T tokens in the flat batch, D = d_model.
#include "model/forward.h"

#include <cmath>

#include "core/error.h"

namespace statelm {

Forward::Forward(const ModelSpec& spec, const ModelWeights& weights, Backend& backend)
    : spec_(spec), weights_(weights), backend_(backend) {}

// Reusable activation buffers, one per purpose, grown as needed (no allocation per step
// once the largest batch has been seen). Activations are in the backend's compute dtype
// (fp32 on the CPU, bf16 by default on CUDA); the logits are always fp32.
Tensor Forward::scratch(size_t index, std::initializer_list<int64_t> shape) {
  return scratch(index, shape, backend_.compute_dtype());
}

Tensor Forward::scratch(size_t index, std::initializer_list<int64_t> shape, DType dtype) {
  Tensor t = Tensor::contiguous(nullptr, dtype, shape, backend_.device());
  if (scratch_.size() <= index) scratch_.resize(index + 1);
  if (scratch_[index].bytes() < t.nbytes()) scratch_[index] = backend_.allocate(t.nbytes());
  t.data = scratch_[index].data();
  return t;
}

namespace {
// Scratch buffer ids; a layer's helpers use ids from kMixer on.
enum : size_t { kHidden, kNormed, kBlockOut, kLogitsIn, kLogits, kMixer };
}  // namespace

// The fp32 partial sums of a decode step's split block boundaries (ResidualAdd), one boundary at
// a time, in the final norm's buffer: [T, D] of the compute dtype, free until the last block
// has read them (the memory planner counts no buffer of their own).
Tensor Forward::norm_sums(int64_t T) {
  const int64_t D = spec_.d_model, partials = backend_.residual_sumsq_partials(D);
  const Tensor room = scratch(kLogitsIn, {T, D});
  STATELM_CHECK(partials * 4 <= D * int64_t(dtype_size(room.dtype)), "forward: ", partials,
                " partial sums of squares a row do not fit a row of ", D, " ", dtype_name(room.dtype));
  return Tensor::contiguous(room.data, DType::F32, {T, partials}, backend_.device());
}

void Forward::linear_out(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms, const BlockIo& io) {
  if (io.add.residual.defined()) backend_.matmul_residual(x, w, bias, rms, io.add, io.out);
  else backend_.matmul_or_row_rms(x, w, bias, rms, io.out);
}

void Forward::mamba1(const Mamba1Dims& m, const Mamba1Weights& w, const LayerCaches& c, const BatchView& b,
                     const BlockIo& io, int64_t layer) {
  const int64_t T = b.n_tokens, Di = m.d_inner, N = m.d_state, R = m.dt_rank;
  Tensor xz = scratch(kMixer, {T, 2 * Di});  // [T, 2Di] = x | z
  Tensor u = scratch(kMixer + 1, {T, Di});    // conv + SiLU of the x half
  backend_.matmul_conv1d(io.x, w.in_proj, w.in_proj_bias, io.norm, xz,
                         {xz.cols(0, Di), w.conv, w.conv_bias, c.conv, u, true}, b);
  Tensor dbc = scratch(kMixer + 2, {T, R + 2 * N});  // [T, R + 2N] = dt | B | C
  backend_.matmul(u, w.x_proj, Tensor{}, dbc);
  Tensor dt = dbc.cols(0, R), B = dbc.cols(R, N), C = dbc.cols(R + N, N);
  if (m.dt_bc_norms) {  // Jamba: RMSNorm on each of dt, B, C before use
    Tensor dtn = scratch(kMixer + 3, {T, R}), bn = scratch(kMixer + 4, {T, N}), cn = scratch(kMixer + 5, {T, N});
    backend_.rms_norm(dt, w.dt_norm, m.inner_norm_eps, dtn);
    backend_.rms_norm(B, w.b_norm, m.inner_norm_eps, bn);
    backend_.rms_norm(C, w.c_norm, m.inner_norm_eps, cn);
    dt = dtn, B = bn, C = cn;
  }
  Tensor delta = scratch(kMixer + 6, {T, Di});  // dt_proj without its bias (added inside the scan)
  backend_.matmul(dt, w.dt_proj, Tensor{}, delta);
  Tensor y = scratch(kMixer + 7, {T, Di});
  backend_.selective_scan({u, delta, w.dt_proj_bias, w.A, B, C, w.D, xz.cols(Di, Di), c.ssm, y}, b);
  dump(layer, "mamba1_scan", y);
  linear_out(y, w.out_proj, w.out_proj_bias, RowRms{}, io);
}

void Forward::mamba2(const Mamba2Dims& m, const Mamba2Weights& w, const LayerCaches& c, const BatchView& b,
                     const BlockIo& io, int64_t layer) {
  const int64_t T = b.n_tokens, Di = m.d_inner, GN = m.n_groups * m.d_state, H = m.n_heads, conv_dim = m.conv_dim();
  Tensor zxbcdt = scratch(kMixer, {T, m.in_proj_dim()});  // [T, Di | Di + 2GN | H] = z | xBC | dt
  Tensor xbc = scratch(kMixer + 1, {T, conv_dim});         // conv + SiLU of xBC
  backend_.matmul_conv1d(io.x, w.in_proj, w.in_proj_bias, io.norm, zxbcdt,
                         {zxbcdt.cols(Di, conv_dim), w.conv, w.conv_bias, c.conv, xbc, true}, b);
  SsdParams p;
  p.x = xbc.cols(0, Di).unflatten_last(H, m.head_dim);                // [T, H, P]
  p.B = xbc.cols(Di, GN).unflatten_last(m.n_groups, m.d_state);       // [T, G, N]
  p.C = xbc.cols(Di + GN, GN).unflatten_last(m.n_groups, m.d_state);  // [T, G, N]
  p.dt = zxbcdt.cols(Di + conv_dim, H);                                // [T, H]
  p.dt_bias = w.dt_bias;
  p.A = w.A;
  p.D = w.D;
  p.state = c.ssm;
  Tensor y = scratch(kMixer + 2, {T, Di});
  p.out = y.unflatten_last(H, m.head_dim);
  p.dt_min = m.dt_min;
  p.dt_max = m.dt_max;
  p.dt_limited = m.dt_limited;
  p.chunk_size = m.chunk_size;
  dump(layer, "mamba2_xbc", xbc);  // the SSD's inputs: reference recurrences replay them
  dump(layer, "mamba2_dt", p.dt);
  // Decode: the SSD gates its output and sums the squares; out_proj divides by the RMS. No
  // kernel reads y back just to normalise it (ops.h, SsdGate).
  const bool split_norm = defers_gated_norm(m, T, int64_t(b.spans.size()));
  if (split_norm) {
    Tensor sums = scratch(kMixer + 3, {T, backend_.ssd_gate_partials(H, m.head_dim)}, DType::F32);
    p.gate = {zxbcdt.cols(0, Di), w.norm, sums};
  }
  backend_.ssd(p, b);
  dump(layer, split_norm ? "mamba2_ssd_gated" : "mamba2_ssd", y);
  if (split_norm) return linear_out(y, w.out_proj, w.out_proj_bias, {p.gate.sumsq, Di, m.norm_eps}, io);
  Tensor gated = scratch(kMixer + 3, {T, Di});
  backend_.gated_rms_norm(y, zxbcdt.cols(0, Di), w.norm, m.norm_group_size, m.norm_eps, gated);
  linear_out(gated, w.out_proj, w.out_proj_bias, RowRms{}, io);
}

// Whether a Mamba-2 layer runs its gated norm split across the SSD and out_proj (SsdGate): in
// decode steps (one token per span: the norm kernel would be a launch of its own there, at a
// few microseconds a layer) and with one norm group (a per-group divisor does not factor out of
// out_proj's product). Prefill keeps the norm kernel: cheap next to its GEMMs.
bool defers_gated_norm(const Mamba2Dims& m, int64_t tokens, int64_t spans) {
  return tokens == spans && m.norm_group_size == m.d_inner;
}

void Forward::attention(const AttentionDims& a, const AttentionWeights& w, const LayerCaches& c, const BatchView& b,
                        const BlockIo& io, int64_t layer) {
  const int64_t T = b.n_tokens, Dh = a.head_dim, qd = a.n_heads * Dh, kvd = a.n_kv_heads * Dh;
  Tensor qkv = scratch(kMixer, {T, qd + 2 * kvd});  // [T, q | k | v]
  backend_.matmul_or_row_rms(io.x, w.qkv, w.qkv_bias, io.norm, qkv);
  Tensor q = qkv.cols(0, qd).unflatten_last(a.n_heads, Dh);
  Tensor k = qkv.cols(qd, kvd).unflatten_last(a.n_kv_heads, Dh);
  Tensor v = qkv.cols(qd + kvd, kvd).unflatten_last(a.n_kv_heads, Dh);
  Tensor o = scratch(kMixer + 1, {T, qd});
  // The rotation travels with the attention op: a CUDA decode step rotates q and the new k as
  // its attention kernel reads them, with no rope kernel of its own.
  AttentionParams p{q, k, v, c.k, c.v, o.unflatten_last(a.n_heads, Dh), 1.0f / std::sqrt(float(Dh)), a.rope};
  backend_.attention(p, b);
  dump(layer, "attention", o);
  linear_out(o, w.o, w.o_bias, RowRms{}, io);
}

void Forward::mlp(const MlpDims& m, const MlpWeights& w, const BlockIo& io) {
  const int64_t T = io.x.shape[0];
  Tensor gu = scratch(kMixer, {T, 2 * m.d_ff});
  Tensor act = scratch(kMixer + 1, {T, m.d_ff});
  backend_.matmul_swiglu(io.x, w.gate_up, w.gate_up_bias, io.norm, gu, act);
  linear_out(act, w.down, w.down_bias, RowRms{}, io);
}

std::vector<float> Forward::run(const ForwardBatch& fb, std::span<const LayerCaches> caches) {
  const Tensor logits = run_device(fb, caches);
  std::vector<float> host(size_t(logits.numel()));
  backend_.download(logits, host.data());
  return host;
}

void Forward::check_batch(const ForwardBatch& fb) const {
  const int64_t T = int64_t(fb.tokens.size()), V = spec_.vocab_size;
  STATELM_CHECK(T > 0 && !fb.spans.empty(), "empty forward batch");
  int64_t covered = 0;
  for (const SeqSpan& s : fb.spans) {
    STATELM_CHECK(s.start == covered && s.len > 0 && s.pos >= 0, "spans must tile the batch in order");
    covered += s.len;
  }
  STATELM_CHECK(covered == T, "spans cover ", covered, " of ", T, " tokens");
  for (int32_t id : fb.tokens)
    if (id < 0 || id >= V) fail(ErrorKind::InvalidArgument, "token id ", id, " is outside the vocabulary [0, ", V, ")");
}

Tensor Forward::run_device(const ForwardBatch& fb, std::span<const LayerCaches> caches) {
  const int64_t T = int64_t(fb.tokens.size()), D = spec_.d_model, V = spec_.vocab_size;
  STATELM_CHECK(caches.size() == spec_.layers.size(), "one LayerCaches per layer");
  check_batch(fb);

  BatchView b;
  b.n_tokens = T;
  b.spans = fb.spans;
  b.block_tables = fb.block_tables.empty() ? nullptr : fb.block_tables.data();
  b.max_blocks_per_seq = fb.max_blocks_per_seq;
  b.block_size = fb.block_size;
  b.key_capacity = fb.key_capacity;
  backend_.prepare_batch(b);  // a device backend copies spans and block tables over, once

  Tensor h = scratch(kHidden, {T, D});       // residual stream [T, D]
  Tensor x = scratch(kNormed, {T, D});       // normed input of the next block
  Tensor y = scratch(kBlockOut, {T, D});     // block output, added to h
  backend_.embed(fb.tokens, weights_.embedding, h);
  dump(-1, "embedding", h);
  bool pending = false;  // y holds a block output not yet added to h
  auto norm_into_x = [&](const Tensor& weight) {
    if (pending) backend_.add_rms_norm(h, y, weight, spec_.norm_eps, x);
    else backend_.rms_norm(h, weight, spec_.norm_eps, x);
    pending = false;
  };
  // A decode step splits its block boundaries across the linear layers on either side
  // (ResidualAdd): the block ahead adds into h, writes h times the next norm's weight into x and
  // sums the squares into `sums`; the next block's first linear layer divides by the RMS, and no
  // norm kernel runs between them. Not next to MoE (its router and experts read x normalised),
  // not before the LM head (one norm a step), and not under a debug hook (it reads each block's
  // output in y).
  const bool split = T == int64_t(fb.spans.size()) && !debug_ && backend_.splits_block_norms(T, D);
  const Tensor sums = split ? norm_sums(T) : Tensor{};
  bool summed = false;  // x is h times the norm's weight and sums holds h's squares: divide by the RMS
  auto is_mlp = [&](size_t i) { return spec_.layers[i].ffn_kind() == FfnKind::Mlp; };
  // The norm weight of the block after layer i's mixer (ffn false) or its ffn where that block
  // starts with a linear layer (a mixer or an MLP; not MoE, not the final norm), else none.
  auto next_linear_norm = [&](size_t i, bool ffn) -> const Tensor* {
    if (!ffn && spec_.layers[i].ffn_kind() != FfnKind::None) return is_mlp(i) ? &weights_.layers[i].ffn_norm : nullptr;
    return i + 1 < spec_.layers.size() ? &weights_.layers[i + 1].mixer_norm : nullptr;
  };
  // The input of layer i's mixer or ffn block (normalised by norm_weight, here or in its first
  // linear layer) and where its output goes: into h when the boundary after it is split.
  auto block_io = [&](const Tensor& norm_weight, size_t i, bool ffn) {
    BlockIo io;
    if (summed) io.norm = {sums, D, spec_.norm_eps};
    else norm_into_x(norm_weight);
    io.x = x;
    io.out = y;
    const Tensor* next_norm = split && (!ffn || is_mlp(i)) ? next_linear_norm(i, ffn) : nullptr;
    if (next_norm) io.add = {h, sums, *next_norm, x};
    return io;
  };
  auto finish_block = [&](const BlockIo& io) {
    summed = io.add.residual.defined();
    pending = !summed;
  };
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    const LayerSpec& ls = spec_.layers[i];
    const LayerWeights& lw = weights_.layers[i];
    const int64_t layer = int64_t(i);
    const BlockIo mixer_io = block_io(lw.mixer_norm, i, false);
    if (auto* m1 = std::get_if<Mamba1Dims>(&ls.mixer)) mamba1(*m1, lw.mamba1, caches[i], b, mixer_io, layer);
    else if (auto* m2 = std::get_if<Mamba2Dims>(&ls.mixer)) mamba2(*m2, lw.mamba2, caches[i], b, mixer_io, layer);
    else attention(std::get<AttentionDims>(ls.mixer), lw.attention, caches[i], b, mixer_io, layer);
    finish_block(mixer_io);
    dump(layer, "mixer_out", y);
    if (ls.ffn_kind() != FfnKind::None) {
      const BlockIo ffn_io = block_io(lw.ffn_norm, i, true);
      if (auto* mlp_dims = std::get_if<MlpDims>(&ls.ffn)) {
        mlp(*mlp_dims, lw.mlp, ffn_io);
      } else {
        const auto& moe = std::get<MoeDims>(ls.ffn);
        backend_.moe({ffn_io.x, lw.moe.router, lw.moe.gate_up, lw.moe.down, moe.top_k, moe.renormalize, y});
      }
      finish_block(ffn_io);
      dump(layer, "ffn_out", y);
    }
  }
  // Final norm and LM head on the rows that need logits: every token's, or each span's last.
  const int64_t rows = fb.all_logits ? T : int64_t(fb.spans.size());
  Tensor last = scratch(kLogitsIn, {rows, D});
  if (rows == T) {  // all tokens, or a decode batch (one token per span): one fused launch
    if (pending) backend_.add_rms_norm(h, y, weights_.final_norm, spec_.norm_eps, last);
    else backend_.rms_norm(h, weights_.final_norm, spec_.norm_eps, last);
  } else {
    if (pending) backend_.add(h, y);
    for (int64_t s = 0; s < rows; ++s) {  // gather each span's last token
      const SeqSpan& sp = fb.spans[size_t(s)];
      backend_.rms_norm(h.rows(sp.start + sp.len - 1, 1), weights_.final_norm, spec_.norm_eps, last.rows(s, 1));
    }
  }
  Tensor logits = scratch(kLogits, {rows, V}, DType::F32);
  backend_.matmul(last, weights_.lm_head, Tensor{}, logits);
  return logits;
}

}  // namespace statelm
