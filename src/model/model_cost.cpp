#include "model/model_cost.h"

#include <cmath>
#include <variant>

namespace statelm {

namespace {

bool is_linear(WeightRole r) {
  switch (r) {
    case WeightRole::InProj: case WeightRole::XProj: case WeightRole::DtProj: case WeightRole::OutProj:
    case WeightRole::Q: case WeightRole::K: case WeightRole::V: case WeightRole::O:
    case WeightRole::Gate: case WeightRole::Up: case WeightRole::Down: case WeightRole::Router:
      return true;
    default:
      return false;
  }
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// Parameters of the model split by how a step touches them.
struct ParamSplit {
  double dense_linear = 0;     // every token multiplies by these
  double expert_linear = 0;    // MoE experts, all of them
  double other = 0;            // norms, conv, A, D, biases: read once per step, ~no FLOPs
  double lm_head = 0;          // vocab x d_model
  int64_t experts = 0, top_k = 0, moe_layers = 0;
};

ParamSplit split_params(const ModelSpec& spec) {
  ParamSplit p;
  for (const TensorSpec& t : expected_tensors(spec)) {
    const double n = double(numel(t.shape));
    if (t.role == WeightRole::Embedding) continue;  // a lookup of T rows, counted separately
    if (t.role == WeightRole::LmHead) p.lm_head += n;
    else if (is_linear(t.role) && t.expert >= 0) p.expert_linear += n;
    else if (is_linear(t.role)) p.dense_linear += n;
    else p.other += n;
  }
  if (spec.tie_embeddings) p.lm_head = double(spec.vocab_size * spec.d_model);
  for (const LayerSpec& l : spec.layers)
    if (const auto* m = std::get_if<MoeDims>(&l.ffn)) {
      p.experts = m->n_experts;
      p.top_k = m->top_k;
      ++p.moe_layers;
    }
  return p;
}

// Expected share of a layer's experts that `tokens` tokens reach with uniform routing.
double expert_share_touched(const ParamSplit& p, int64_t tokens) {
  if (p.experts == 0) return 0;
  const double miss = 1.0 - double(p.top_k) / double(p.experts);
  return 1.0 - std::pow(miss, double(tokens));
}

// Per-token state elements of the recurrence (SSM) and per-position attention width.
struct MixerShape {
  double ssm_elements = 0;   // sum over Mamba layers of the SSM state size (elements)
  double conv_elements = 0;  // conv windows (elements)
  double attn_qk = 0;        // sum over attention layers of Hq * Dh
  double kv_elements = 0;    // per token: sum over attention layers of 2 * Hkv * Dh
};

MixerShape mixer_shape(const ModelSpec& spec) {
  MixerShape s;
  for (const LayerSpec& l : spec.layers) {
    if (const auto* m1 = std::get_if<Mamba1Dims>(&l.mixer)) {
      s.ssm_elements += double(m1->d_inner * m1->d_state);
      s.conv_elements += double(m1->d_inner * (m1->d_conv - 1));
    } else if (const auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
      s.ssm_elements += double(m2->n_heads * m2->head_dim * m2->d_state);
      s.conv_elements += double(m2->conv_dim() * (m2->d_conv - 1));
    } else {
      const auto& a = std::get<AttentionDims>(l.mixer);
      s.attn_qk += double(a.n_heads * a.head_dim);
      s.kv_elements += double(2 * a.n_kv_heads * a.head_dim);
    }
  }
  return s;
}

}  // namespace

StepCost prefill_cost(const ModelSpec& spec, int64_t pos, int64_t tokens, int64_t steps, const CostDtypes& d) {
  const ParamSplit p = split_params(spec);
  const MixerShape m = mixer_shape(spec);
  const double T = double(tokens), P = double(pos);
  const double active_experts = p.experts ? p.expert_linear * double(p.top_k) / double(p.experts) : 0.0;
  StepCost c;
  c.flops = 2.0 * T * (p.dense_linear + active_experts) + 2.0 * p.lm_head;
  c.flops += 4.0 * m.ssm_elements * T;
  // Causal attention: query t (0-based in the span) sees pos + t + 1 keys; QK^T and PV.
  c.flops += 4.0 * m.attn_qk * (T * P + T * (T + 1) / 2);
  const double per_step_tokens = T / double(std::max<int64_t>(1, steps));
  c.weight_bytes = double(steps) * d.weight_bytes *
                   (p.dense_linear + p.other + p.lm_head + p.expert_linear * expert_share_touched(p, int64_t(per_step_tokens)));
  c.weight_bytes += d.weight_bytes * T * double(spec.d_model);  // embedding rows
  c.state_bytes = double(steps) * 2.0 * (d.state_bytes * m.ssm_elements + 4.0 * m.conv_elements);
  c.kv_bytes = d.kv_bytes * m.kv_elements * (T + P * double(steps));
  return c;
}

StepCost decode_cost(const ModelSpec& spec, int64_t batch, int64_t context, const CostDtypes& d) {
  const ParamSplit p = split_params(spec);
  const MixerShape m = mixer_shape(spec);
  const double B = double(batch), L = double(context);
  const double active_experts = p.experts ? p.expert_linear * double(p.top_k) / double(p.experts) : 0.0;
  StepCost c;
  c.flops = 2.0 * B * (p.dense_linear + active_experts + p.lm_head) + 4.0 * m.ssm_elements * B +
            4.0 * m.attn_qk * B * (L + 1);
  c.weight_bytes = d.weight_bytes * (p.dense_linear + p.other + p.lm_head + p.expert_linear * expert_share_touched(p, batch) +
                                     B * double(spec.d_model));
  c.state_bytes = B * 2.0 * (d.state_bytes * m.ssm_elements + 4.0 * m.conv_elements);
  c.kv_bytes = B * d.kv_bytes * m.kv_elements * (L + 1);
  return c;
}

int64_t activation_bytes(const ModelSpec& spec, int64_t tokens, int64_t rows, int64_t bytes) {
  int64_t mixer = 0, ffn = 0;
  for (const LayerSpec& l : spec.layers) {
    if (const auto* m1 = std::get_if<Mamba1Dims>(&l.mixer)) {
      // in_proj (x | z), conv output, x_proj (dt | B | C), delta, scan output
      mixer = std::max(mixer, 2 * m1->d_inner + m1->d_inner + (m1->dt_rank + 2 * m1->d_state) + 2 * m1->d_inner);
    } else if (const auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
      // in_proj (z | xBC | dt), conv output, SSD output, gated norm
      mixer = std::max(mixer, m2->in_proj_dim() + m2->conv_dim() + 2 * m2->d_inner);
    } else {
      const auto& a = std::get<AttentionDims>(l.mixer);
      mixer = std::max(mixer, (a.n_heads + 2 * a.n_kv_heads) * a.head_dim + a.n_heads * a.head_dim);
    }
    if (const auto* mlp = std::get_if<MlpDims>(&l.ffn)) ffn = std::max(ffn, 3 * mlp->d_ff);
    else if (const auto* moe = std::get_if<MoeDims>(&l.ffn))
      ffn = std::max(ffn, moe->n_experts + moe->top_k * (3 * moe->d_ff + spec.d_model));  // router + routed rows
  }
  const int64_t per_token = 3 * spec.d_model + std::max(mixer, ffn);
  return tokens * per_token * bytes + rows * (spec.d_model * bytes + spec.vocab_size * 4);
}

}  // namespace statelm
