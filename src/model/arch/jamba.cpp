// Jamba hybrid (JambaForCausalLM): Mamba-1 layers with RMSNorms on dt/B/C, an attention layer
// (no RoPE) every attn_layer_period layers at attn_layer_offset, and a MoE feed-forward every
// expert_layer_period layers at expert_layer_offset (an MLP elsewhere).
#include "core/error.h"
#include "model/arch/arch.h"

namespace statelm {

namespace {
// Per-layer lists, when a config spells the pattern out instead of period/offset.
std::vector<std::string> string_list(const ConfigReader& cfg, std::string_view key) {
  std::vector<std::string> out;
  if (const nlohmann::json* v = cfg.find(key)) {
    cfg.require(v->is_array(), key, "expected a list");
    for (const auto& e : *v) {
      cfg.require(e.is_string(), key, "expected a list of strings");
      out.push_back(e.get<std::string>());
    }
  }
  return out;
}
}  // namespace

ModelSpec build_jamba_spec(const ConfigReader& cfg) {
  ModelSpec s = decoder_base_spec(cfg, "jamba", 262144);
  const int64_t n_layer = layer_count(cfg, "num_hidden_layers");
  s.names.final_norm = "model.final_layernorm.weight";
  s.names.ffn_norm = "pre_ff_layernorm.weight";
  s.names.ffn = "feed_forward.";

  AttentionDims attn = read_attention_dims(cfg, s.d_model);  // rope stays None: Jamba has none
  Mamba1Dims mamba;
  mamba.d_state = positive(cfg, "mamba_d_state", cfg.int_or({"mamba_d_state"}, 16));
  mamba.d_conv = positive(cfg, "mamba_d_conv", cfg.int_or({"mamba_d_conv"}, 4));
  mamba.d_inner = positive(cfg, "mamba_expand", cfg.int_or({"mamba_expand"}, 2)) * s.d_model;
  const nlohmann::json* rank = cfg.find("mamba_dt_rank");
  mamba.dt_rank = (!rank || (rank->is_string() && rank->get<std::string>() == "auto"))
                      ? (s.d_model + 15) / 16
                      : positive(cfg, "mamba_dt_rank", cfg.get_int({"mamba_dt_rank"}));
  mamba.conv_bias = cfg.bool_or({"mamba_conv_bias"}, true);
  mamba.proj_bias = cfg.bool_or({"mamba_proj_bias"}, false);
  mamba.dt_bc_norms = true;
  mamba.inner_norm_eps = s.norm_eps;

  const int64_t d_ff = positive(cfg, "intermediate_size", cfg.get_int({"intermediate_size"}));
  const int64_t n_experts = positive(cfg, "num_experts", cfg.int_or({"num_experts"}, 16));
  cfg.require(n_experts <= 4096, "num_experts", "more than 4096 experts");
  const int64_t top_k = positive(cfg, "num_experts_per_tok", cfg.int_or({"num_experts_per_tok"}, 2));
  cfg.require(top_k <= n_experts, "num_experts_per_tok", "must not exceed num_experts");
  const int64_t attn_period = positive(cfg, "attn_layer_period", cfg.int_or({"attn_layer_period"}, 8));
  const int64_t attn_offset = cfg.int_or({"attn_layer_offset"}, 4);
  const int64_t expert_period = positive(cfg, "expert_layer_period", cfg.int_or({"expert_layer_period"}, 2));
  const int64_t expert_offset = cfg.int_or({"expert_layer_offset"}, 1);
  cfg.require(attn_offset >= 0 && attn_offset < attn_period, "attn_layer_offset", "must be in [0, attn_layer_period)");
  cfg.require(expert_offset >= 0 && expert_offset < expert_period, "expert_layer_offset",
              "must be in [0, expert_layer_period)");
  std::vector<std::string> block_types = string_list(cfg, "layers_block_type");
  cfg.require(block_types.empty() || int64_t(block_types.size()) == n_layer, "layers_block_type",
              "must have num_hidden_layers entries");

  for (int64_t i = 0; i < n_layer; ++i) {
    LayerSpec layer;
    bool is_attention = block_types.empty() ? i % attn_period == attn_offset : block_types[size_t(i)] == "attention";
    if (!block_types.empty())
      cfg.require(block_types[size_t(i)] == "attention" || block_types[size_t(i)] == "mamba", "layers_block_type",
                  "entries must be \"attention\" or \"mamba\"");
    if (is_attention) layer.mixer = attn; else layer.mixer = mamba;
    // transformers builds a MoE block only when the layer has more than one expert.
    if (i % expert_period == expert_offset && n_experts > 1)
      layer.ffn = MoeDims{n_experts, top_k, d_ff, /*renormalize=*/false};
    else
      layer.ffn = MlpDims{d_ff, false};
    s.layers.push_back(layer);
  }
  return s;
}

}  // namespace statelm
