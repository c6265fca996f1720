// The work a forward step must do, from the ModelSpec alone: FLOPs and bytes. These are the
// denominators of every "fraction of the machine's limit" that `statelm bench` prints, so they
// count what the step cannot avoid, not what an implementation happens to do:
//   - FLOPs: 2 per multiply-add of every linear layer on every token (MoE: top_k experts), the
//     LM head on each row that needs logits, causal attention (QK^T and PV over the positions
//     each query sees) and the SSM recurrence (state update + readout: 4 per state element);
//   - bytes: every weight the step touches read once (MoE: the experts the batch is expected
//     to reach), each sequence's recurrent state read and written once, the KV cache read once
//     per sequence and the new K/V written. Activations are not counted (they stay in cache or
//     are a small share at these shapes).
#pragma once

#include <cstdint>

#include "model/model_spec.h"

namespace statelm {

struct StepCost {
  double flops = 0;
  double weight_bytes = 0, state_bytes = 0, kv_bytes = 0;
  double bytes() const { return weight_bytes + state_bytes + kv_bytes; }
};

struct CostDtypes {
  double weight_bytes = 2;  // per parameter (bf16 on the GPU, 4 on the CPU)
  double state_bytes = 4;   // per SSM state element (conv window counted at 4)
  double kv_bytes = 2;      // per K or V element
};

// One sequence prefilling `tokens` new tokens after `pos` it already holds (logits of its
// last token only), in `steps` forward calls (chunked prefill reads the weights once per call).
StepCost prefill_cost(const ModelSpec& spec, int64_t pos, int64_t tokens, int64_t steps, const CostDtypes& d);
// One decode step of `batch` sequences, each holding `context` tokens.
StepCost decode_cost(const ModelSpec& spec, int64_t batch, int64_t context, const CostDtypes& d);

// Activation memory of one forward over `tokens` tokens (the generic forward's scratch
// buffers: residual stream, the widest mixer's and feed-forward's intermediates, and the
// logits of `rows` rows in fp32), at `bytes` per activation element. The memory planner sets
// this aside for a prefill chunk.
int64_t activation_bytes(const ModelSpec& spec, int64_t tokens, int64_t rows, int64_t bytes);

}  // namespace statelm
