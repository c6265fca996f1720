// Config reading and naming conventions shared by transformers' decoder families (Llama, Jamba).
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

ModelSpec decoder_base_spec(const ConfigReader& cfg, const char* architecture, int64_t default_max_positions) {
  ModelSpec s;
  s.architecture = architecture;
  s.layout = "transformers";
  s.d_model = positive(cfg, "hidden_size", cfg.get_int({"hidden_size"}));
  s.vocab_size = positive(cfg, "vocab_size", cfg.get_int({"vocab_size"}));
  s.norm_eps = float(cfg.float_or({"rms_norm_eps"}, 1e-6));
  s.tie_embeddings = cfg.bool_or({"tie_word_embeddings"}, false);
  s.max_position_embeddings = cfg.int_or({"max_position_embeddings"}, default_max_positions);
  s.bos_token_ids = cfg.int_list_or({"bos_token_id"});
  s.eos_token_ids = cfg.int_list_or({"eos_token_id"});
  s.pad_token_id = cfg.int_or({"pad_token_id"}, -1);
  std::string act = cfg.string_or({"hidden_act"}, "silu");
  if (act != "silu")
    fail(ErrorKind::Unsupported, cfg.source(), ": hidden_act \"", act, "\" is not supported (supported: silu)");
  s.names = decoder_names();
  return s;
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
