// Attention and naming conventions shared by transformers' decoder families (Llama, Jamba).
#include "core/error.h"
#include "model/arch/arch.h"

namespace statelm {

AttentionDims read_attention_dims(const ConfigReader& cfg, int64_t d_model) {
  AttentionDims a;
  a.n_heads = positive(cfg, "num_attention_heads", cfg.get_int({"num_attention_heads"}));
  a.n_kv_heads = positive(cfg, "num_key_value_heads", cfg.int_or({"num_key_value_heads"}, a.n_heads));
  cfg.require(a.n_heads % a.n_kv_heads == 0, "num_key_value_heads",
              str_cat("must divide num_attention_heads (", a.n_heads, ")"));
  if (cfg.has("head_dim")) {
    a.head_dim = positive(cfg, "head_dim", cfg.get_int({"head_dim"}));
  } else {
    cfg.require(d_model % a.n_heads == 0, "num_attention_heads", "must divide hidden_size when head_dim is absent");
    a.head_dim = d_model / a.n_heads;
  }
  a.qkv_bias = a.o_bias = cfg.bool_or({"attention_bias"}, false);
  return a;
}

TensorNaming decoder_names() {
  TensorNaming n;
  n.embedding = "model.embed_tokens.weight";
  n.final_norm = "model.norm.weight";
  n.lm_head = "lm_head.weight";
  n.layer = "model.layers.{L}.";
  n.mixer_norm = "input_layernorm.weight";
  n.ffn_norm = "post_attention_layernorm.weight";
  n.mamba = "mamba.";
  n.attention = "self_attn.";
  n.ffn = "mlp.";
  n.router = "router.weight";
  n.expert = "experts.{E}.";
  return n;
}

}  // namespace statelm
