// The op set: everything a backend must provide to run any ModelSpec. The forward
// (src/model/forward.cpp) is written once against this interface; the CPU backend is the
// reference, the CUDA backend the product on GPUs.
//
// Every op works on a flat, unpadded batch of tokens from many sequences: BatchView says which
// tokens belong to which sequence (SeqSpan), which state slot that sequence owns, and how many
// tokens it had before this batch. A decode step is a span of length 1; a prefill chunk a longer
// one; both can share one call. Stateful ops (conv1d, scans, attention) read and update the
// per-slot state / KV cache in place, so a span continues exactly where its sequence stopped.
// The recurrent state may be fp32 or bf16; the ops compute in fp32 and round a bf16 state once
// per span (when the span's new state is stored).
#pragma once

#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "model/model_spec.h"

namespace statelm {

struct SeqSpan {
  int32_t start = 0;  // first token of the span in the flat batch
  int32_t len = 0;    // tokens of this sequence in this batch (1 for a decode step)
  int32_t slot = 0;   // state slot owned by the sequence (conv + SSM state rows)
  int32_t pos = 0;    // tokens the sequence already holds in its state / KV cache
};

struct BatchView {
  int64_t n_tokens = 0;
  std::span<const SeqSpan> spans;  // host copy: CPU ops read it, CUDA ops plan launches with it
  const SeqSpan* device_spans = nullptr;  // the same on the device (CUDA)
  // Paged KV cache of the attention layers: block_tables[s * max_blocks_per_seq + i] is the
  // block holding tokens [i * block_size, (i + 1) * block_size) of span s's sequence.
  const int32_t* block_tables = nullptr;
  const int32_t* device_block_tables = nullptr;
  int32_t max_blocks_per_seq = 0;
  int32_t block_size = 0;
  // Keys an attention launch is planned for (how it splits the key range): at least every
  // span's pos + len; 0 = exactly that. A recorded graph plans for a capacity so that it stays
  // valid while its sequences grow (the kernels skip keys past each span's own end).
  int32_t key_capacity = 0;
};

// Causal depthwise conv1d over each span, continuing from the slot's conv state, then the
// state is replaced by the span's last K-1 inputs. out[t, c] = act(bias[c] + sum_k w[c, k] *
// x[t - (K-1) + k, c]) where inputs before the span come from the state.
struct Conv1dParams {
  Tensor x;       // [T, C]            (row-strided view allowed)
  Tensor weight;  // [C, K]
  Tensor bias;    // [C] or undefined
  Tensor state;   // [n_slots, C, K-1] fp32 or bf16, oldest input first
  Tensor out;     // [T, C]
  bool silu = true;
};

// Mamba-1 selective scan, per channel d and state n:
//   dt = softplus(delta[t, d] + delta_bias[d])
//   h[d, n] <- exp(dt * A[d, n]) * h[d, n] + dt * B[t, n] * u[t, d]
//   y[t, d] = (sum_n C[t, n] * h[d, n] + D[d] * u[t, d]) * silu(z[t, d])
struct SelectiveScanParams {
  Tensor u;           // [T, Di]   conv output
  Tensor delta;       // [T, Di]   dt_proj output without its bias
  Tensor delta_bias;  // [Di]
  Tensor A;           // [Di, N]   = -exp(A_log)
  Tensor B, C;        // [T, N]    (row-strided views into x_proj's output allowed)
  Tensor D;           // [Di]
  Tensor z;           // [T, Di]   gate; undefined = no gate
  Tensor state;       // [n_slots, Di, N] fp32 or bf16
  Tensor out;         // [T, Di]
};

// Mamba-2 SSD, per head h (group g = h / (H / G)), head channel p and state n:
//   dt = clamp(softplus(dt_raw[t, h] + dt_bias[h]), dt_min, dt_max)
//   S[h, p, n] <- exp(dt * A[h]) * S[h, p, n] + dt * B[t, g, n] * x[t, h, p]
//   y[t, h, p] = sum_n C[t, g, n] * S[h, p, n] + D[h] * x[t, h, p]
// Prefill spans use the chunked algorithm (chunk_size), decode spans the recurrence; both give
// the same result to rounding.
//
// Optional gate (SsdGate): Mamba-2's gated RMS norm split across the SSD and the linear layer
// after it, so that no kernel of a decode step reads y back just to normalise it. With gate.z
// defined, out receives y * silu(z) * weight instead of y, and the sum of squares of
// y * silu(z) over all of a token's H * P channels goes to gate.sumsq[t, :] as partial sums
// (Backend::ssd_gate_partials columns, every one written: a backend's kernels may each sum their
// own channels, without atomics or a zeroed buffer); the 1 / rms factor is a per-token scalar, so
// Backend::matmul_row_rms applies it to the product instead (one norm group only: a per-group
// factor would not factor out of the product).
struct SsdGate {
  Tensor z;       // [T, H * P]  the gate (compute dtype); undefined = no gate
  Tensor weight;  // [H * P]     the norm's weight, fp32
  Tensor sumsq;   // [T, ssd_gate_partials(H, P)] fp32
};

struct SsdParams {
  Tensor x;        // [T, H, P]
  Tensor dt;       // [T, H]    raw, before bias and softplus
  Tensor dt_bias;  // [H]
  Tensor A;        // [H]       = -exp(A_log)
  Tensor B, C;     // [T, G, N]
  Tensor D;        // [H]
  Tensor state;    // [n_slots, H, P, N] fp32 or bf16
  Tensor out;      // [T, H, P]
  float dt_min = 0.0f, dt_max = 0.0f;
  bool dt_limited = false;
  int64_t chunk_size = 256;
  SsdGate gate;
};

// The root mean square of a row whose squares were summed elsewhere (SsdGate, ResidualAdd):
// rms[t] = sqrt(sum_j sumsq[t, j] / n + eps).
struct RowRms {
  Tensor sumsq;  // [T, partials] fp32
  int64_t n = 0;
  float eps = 0.0f;
};

// A decode step's pre-norm block boundary split across the linear layers on either side of it
// (Forward; Backend::splits_block_norms): the block's last linear layer adds its product into the
// residual stream, writes the new rows times the next norm's weight, and sums their squares; the
// next block's first linear layer takes those rows and divides by the RMS (matmul_row_rms,
// matmul_swiglu). Neither the add nor the norm is a pass of its own.
struct ResidualAdd {
  Tensor residual;  // [T, N] residual[t] = round(residual[t] + round(product[t])), in its dtype
  Tensor sumsq;     // [T, residual_sumsq_partials(N)] fp32: partial sums of the new rows' squares
  Tensor weight;    // [N] fp32: the next block's norm weight
  Tensor normed;    // [T, N] round(residual[t] ∘ weight): the next block's input, before 1/rms
};

// Rotary embedding of q and k in place; token t of span s is at position spans[s].pos + t.
// Non-interleaved (rotate_half) layout, as transformers' Llama.
struct RopeParams {
  Tensor q;  // [T, Hq, Dh]
  Tensor k;  // [T, Hkv, Dh]
  RopeSpec rope;
};

// Causal attention with grouped KV heads over the paged cache. q and k are first rotated by
// `rope` (as Backend::rope; None: taken as they are); the span's new k/v are written into the
// cache at positions pos..pos+len-1; each query then attends to positions 0..its own.
// out = softmax(q k^T * scale) v. With a rope, what q and k hold afterwards is unspecified
// (rotated or not, per backend and span): the op may rotate them in place or on the fly, as a
// CUDA decode step does, where a kernel of its own for it would cost more than the rotation.
struct AttentionParams {
  Tensor q;        // [T, Hq, Dh]
  Tensor k, v;     // [T, Hkv, Dh]
  Tensor k_cache;  // [n_blocks, block_size, Hkv, Dh]
  Tensor v_cache;  // [n_blocks, block_size, Hkv, Dh]
  Tensor out;      // [T, Hq, Dh]
  float scale = 1.0f;
  RopeSpec rope;   // kind None: no rotation
};

// Mixture of SwiGLU experts: p = softmax(x router^T); the top_k experts by p each add
// p_e * down_e(silu(gate_e(x)) * up_e(x)) (p renormalised over the top_k only if renormalize).
struct MoeParams {
  Tensor x;        // [T, D]
  Tensor router;   // [E, D]
  Tensor gate_up;  // [E, 2F, D]  gate rows then up rows, per expert
  Tensor down;     // [E, D, F]
  int64_t top_k = 2;
  bool renormalize = false;
  Tensor out;      // [T, D]
};

// One row of Backend::sample: the filters of one sequence's next token (runtime/sampler.h has
// the user-facing SamplingParams) and the coordinates of its random draw. What token a row gets
// is defined exactly in ops/sampling_math.h, so every backend draws the same one.
struct SampleRow {
  int32_t logits_row = 0;              // which row of the logits
  float temperature = 1.0f;            // 0 = greedy: the highest logit (ties: the lowest id)
  int32_t top_k = 0;                   // 0 = off
  float top_p = 1.0f;                  // 1 = off
  float min_p = 0.0f;                  // 0 = off
  float repetition_penalty = 1.0f;     // 1 = off
  std::span<const int32_t> penalized;  // host ids the penalty applies to (a repeated id counts once)
  uint64_t seed = 0;
  uint64_t step = 0;                   // which draw of the seed's stream: tokens the sequence sampled so far
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual Device device() const = 0;
  // Element type of weight matrices and activations on this backend: F32 on the CPU; BF16 by
  // default on CUDA. Small per-channel parameters stay F32 everywhere (model/weights.h) and the
  // recurrent state has its own dtype (RunnerOptions::state_dtype).
  virtual DType compute_dtype() const { return DType::F32; }
  // Bytes this backend can still allocate now (device memory free plus what its allocator
  // holds in reserve); 0 = host memory, which the caller measures itself (core/system_memory.h).
  virtual size_t available_memory() const { return 0; }
  // Called once per forward before any op of the batch runs: a device backend copies the spans
  // and block tables to the device here and sets batch.device_spans / device_block_tables.
  // The copies stay valid until the next prepare_batch.
  virtual void prepare_batch(BatchView& batch) {}

  // Graphs: record every kernel one forward queues, then replay them with new token ids, spans
  // and block tables of the same sizes in one launch (what makes a decode step of a deep model
  // cost its memory traffic rather than its launches). Between begin_graph() and end_graph()
  // the caller runs the forward once; nothing executes then. end_graph() returns the graph's id,
  // or -1 when the forward could not be recorded (the caller then runs it eagerly).
  // A graph stays valid while memory_epoch() is unchanged (no scratch buffer was replaced).
  virtual bool supports_graphs() const { return false; }
  virtual void begin_graph(size_t n_ids, size_t n_spans, size_t table_entries) {}
  virtual int end_graph() { return -1; }
  virtual void abort_graph() {}
  virtual void replay_graph(int graph, std::span<const int32_t> ids, std::span<const SeqSpan> spans,
                            std::span<const int32_t> block_tables) {}
  virtual void drop_graphs() {}
  virtual uint64_t memory_epoch() const { return 0; }

  // Zero-filled memory where this backend computes.
  virtual Buffer allocate(size_t bytes) = 0;
  // Copies host fp32 values into `dst` (converting to dst.dtype), e.g. weights at load.
  virtual void upload(const Tensor& dst, const float* host) = 0;
  // Copies `src` to host fp32 memory (a bf16 tensor is widened, exactly).
  virtual void download(const Tensor& src, float* host) = 0;
  virtual void fill_zero(const Tensor& t) = 0;
  // dst = src: contiguous tensors of the same shape and dtype on this backend (a state slot
  // copied into another, e.g. a prefix checkpoint).
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;

  // out[t] = table[ids[t]]; ids are host indices already checked against the vocabulary.
  virtual void embed(std::span<const int32_t> ids, const Tensor& table, const Tensor& out) = 0;
  // out[t] = x[t] / rms(x[t]) * weight, over the last dimension.
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) = 0;
  // residual += x, then out = rms_norm(residual): the pre-norm block boundary in one pass.
  virtual void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                            const Tensor& out) = 0;
  // out = rms_norm(y * silu(z)) with the mean square taken over groups of group_size channels.
  virtual void gated_rms_norm(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t group_size, float eps,
                              const Tensor& out) = 0;
  // out[T, N] = x[T, K] w[N, K]^T (+ bias[N]); weights are stored as transformers stores them.
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) = 0;
  // out[t] = (x[t] w^T) / rms[t] (+ bias): a linear layer after an RMS norm whose division was
  // left out of x (SsdGate, ResidualAdd); equal to normalising x first, since the product is
  // linear in x[t].
  virtual void matmul_row_rms(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                              const Tensor& out) = 0;
  // matmul_row_rms where rms.sumsq is defined, else matmul.
  void matmul_or_row_rms(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms, const Tensor& out) {
    if (rms.sumsq.defined()) matmul_row_rms(x, w, bias, rms, out);
    else matmul(x, w, bias, out);
  }
  // The last linear layer of a block whose boundary norm is split (ResidualAdd): the product
  // (matmul, or matmul_row_rms where rms.sumsq is defined) goes into add.residual, add.normed
  // receives the new rows times add.weight and add.sumsq the partial sums of their squares
  // (every column written).
  // out [T, N] is room for the product where the backend does not fuse the add; its contents are
  // unspecified after.
  virtual void matmul_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                               const ResidualAdd& add, const Tensor& out) = 0;
  // Columns of ResidualAdd::sumsq that matmul_residual writes for N output features.
  virtual int64_t residual_sumsq_partials(int64_t n) const { return 1; }
  // Whether Forward may split the block norms of a decode step of `tokens` one-token spans over
  // rows of d_model features (ResidualAdd): where this backend's decode kernels fold the add
  // into the linear layer (a split that ran as extra passes would only add work).
  virtual bool splits_block_norms(int64_t tokens, int64_t d_model) const { return true; }
  // out[T, F] = silu(gate_up[:, :F]) * gate_up[:, F:].
  virtual void swiglu(const Tensor& gate_up, const Tensor& out) = 0;
  // out[T, F] = swiglu(x w^T + bias), w = [gate; up] of 2F rows: a SwiGLU MLP's first half, its
  // input normalised by rms as matmul_row_rms does where rms.sumsq is defined. gate_up [T, 2F] is
  // room for the product where the backend does not fuse the two (a CUDA decode step fuses
  // them: one launch less per layer); its contents are unspecified after.
  virtual void matmul_swiglu(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                             const Tensor& gate_up, const Tensor& out) {
    matmul_or_row_rms(x, w, bias, rms, gate_up);
    swiglu(gate_up, out);
  }
  // acc += x.
  virtual void add(const Tensor& acc, const Tensor& x) = 0;

  virtual void conv1d(const Conv1dParams& p, const BatchView& batch) = 0;
  // out = x w^T (+ bias, divided by rms as matmul_row_rms where rms.sumsq is defined), then
  // conv1d(conv) with conv.x a column range of out: a Mamba block's in_proj and its conv. A
  // backend may fold the conv into the product's epilogue (CUDA decode steps: one launch less a
  // layer).
  virtual void matmul_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                             const Tensor& out, const Conv1dParams& conv, const BatchView& batch) {
    matmul_or_row_rms(x, w, bias, rms, out);
    conv1d(conv, batch);
  }
  virtual void selective_scan(const SelectiveScanParams& p, const BatchView& batch) = 0;
  virtual void ssd(const SsdParams& p, const BatchView& batch) = 0;
  // Columns of SsdGate::sumsq that ssd writes for `heads` heads of `head_dim` channels.
  virtual int64_t ssd_gate_partials(int64_t heads, int64_t head_dim) const { return 1; }
  virtual void rope(const RopeParams& p, const BatchView& batch) = 0;
  virtual void attention(const AttentionParams& p, const BatchView& batch) = 0;
  virtual void moe(const MoeParams& p) = 0;

  // out_ids[r] = the token drawn for rows[r] from row rows[r].logits_row of `logits` (fp32
  // [n, vocab] on this backend): repetition penalty -> temperature -> top-k -> top-p -> min-p ->
  // draw, as transformers orders them. The logits are not modified; only the ids reach the host.
  virtual void sample(const Tensor& logits, std::span<const SampleRow> rows, std::span<int32_t> out_ids) = 0;
};

}  // namespace statelm
