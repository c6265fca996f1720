// The one generic forward over a ModelSpec's layer stack. A prefill chunk and a decode step
// are the same call: a flat batch of token spans, each continuing its sequence's state.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/model_spec.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace statelm {

// The state one layer reads and updates, as views into the runtime's caches.
struct LayerCaches {
  Tensor conv, ssm;  // Mamba layers: [n_slots, C, K-1], [n_slots, ...]
  Tensor k, v;       // attention layers: [n_blocks, block_size, Hkv, Dh]
};

struct ForwardBatch {
  std::vector<int32_t> tokens;        // flat, all spans back to back
  std::vector<SeqSpan> spans;
  std::vector<int32_t> block_tables;  // spans.size() * max_blocks_per_seq (attention models only)
  int32_t max_blocks_per_seq = 0;
  int32_t block_size = 0;
  bool all_logits = false;            // logits of every token, or of each span's last token only
  int32_t key_capacity = 0;           // BatchView::key_capacity (recorded decode graphs)
};

// Called with (layer, name, tensor) for named intermediates when set: dump any layer's
// output to compare with transformers when a fixture fails.
using DebugHook = std::function<void(int64_t layer, const std::string& name, const Tensor& t)>;

// Whether a Mamba-2 layer's gated norm is split across the SSD and out_proj (ops.h, SsdGate) in
// a step of `tokens` tokens in `spans` spans (the memory planner sizes the scratch by it).
bool defers_gated_norm(const Mamba2Dims& m, int64_t tokens, int64_t spans);

class Forward {
 public:
  Forward(const ModelSpec& spec, const ModelWeights& weights, Backend& backend);

  // Runs the batch and returns host fp32 logits [rows, vocab]: rows = tokens.size() when
  // all_logits, else spans.size(). Updates every layer's caches for the spans' sequences.
  std::vector<float> run(const ForwardBatch& batch, std::span<const LayerCaches> caches);
  // The same, leaving the logits where the backend computes: an fp32 [rows, vocab] tensor valid
  // until the next call (device-side sampling reads it there; only the chosen ids come back).
  Tensor run_device(const ForwardBatch& batch, std::span<const LayerCaches> caches);

  // Error unless the spans tile the tokens in order and every id is in the vocabulary (what
  // run_device checks first; a replayed graph checks it here).
  void check_batch(const ForwardBatch& batch) const;

  void set_debug_hook(DebugHook hook) { debug_ = std::move(hook); }
  bool has_debug_hook() const { return bool(debug_); }

 private:
  // A block's input and output (ResidualAdd). x is the normalised input, or with norm.sumsq
  // defined the residual times the norm's weight, which the block's first linear layer divides
  // by the RMS; the block's last linear layer writes out, or with add.residual defined adds into
  // the residual stream and prepares the next block's x and sums.
  struct BlockIo {
    Tensor x;
    RowRms norm;
    Tensor out;
    ResidualAdd add;
  };
  void mamba1(const Mamba1Dims& m, const Mamba1Weights& w, const LayerCaches& c, const BatchView& b,
              const BlockIo& io, int64_t layer);
  void mamba2(const Mamba2Dims& m, const Mamba2Weights& w, const LayerCaches& c, const BatchView& b,
              const BlockIo& io, int64_t layer);
  void attention(const AttentionDims& a, const AttentionWeights& w, const LayerCaches& c, const BatchView& b,
                 const BlockIo& io, int64_t layer);
  void mlp(const MlpDims& m, const MlpWeights& w, const BlockIo& io);
  // A block's last linear layer (rms: a norm of x left to it): into io.out, or into the residual
  // stream where the boundary after the block is split (io.add). Its first reads io.x divided by
  // io.norm where that is defined (matmul_or_row_rms, matmul_conv1d, matmul_swiglu).
  void linear_out(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms, const BlockIo& io);
  Tensor scratch(size_t index, std::initializer_list<int64_t> shape);
  Tensor scratch(size_t index, std::initializer_list<int64_t> shape, DType dtype);
  Tensor norm_sums(int64_t tokens);
  void dump(int64_t layer, const char* name, const Tensor& t) const {
    if (debug_) debug_(layer, name, t);
  }

  const ModelSpec& spec_;
  const ModelWeights& weights_;
  Backend& backend_;
  std::vector<Buffer> scratch_;
  DebugHook debug_;
};

}  // namespace statelm
