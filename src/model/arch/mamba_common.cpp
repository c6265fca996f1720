// What the Mamba-1 and Mamba-2 families share: the backbone around the mixers, in both the
// transformers layout (MambaForCausalLM / Mamba2ForCausalLM) and the original mamba_ssm one
// (d_model, n_layer, ssm_cfg, pad_vocab_size_multiple, "backbone.embedding.weight").
#include <cmath>

#include "core/error.h"
#include "model/arch/arch.h"

namespace statelm {

namespace {
TensorNaming backbone_names(const char* embedding) {
  TensorNaming n;
  n.embedding = embedding;
  n.final_norm = "backbone.norm_f.weight";
  n.lm_head = "lm_head.weight";
  n.layer = "backbone.layers.{L}.";
  n.mixer_norm = "norm.weight";
  n.mamba = "mixer.";
  return n;
}
}  // namespace

ModelSpec mamba_ssm_base_spec(const ConfigReader& cfg) {
  ModelSpec s;
  s.layout = "mamba_ssm";
  s.d_model = positive(cfg, "d_model", cfg.get_int({"d_model"}));
  int64_t n_layer = layer_count(cfg, "n_layer");
  int64_t vocab = positive(cfg, "vocab_size", cfg.get_int({"vocab_size"}));
  int64_t pad = cfg.int_or({"pad_vocab_size_multiple"}, 8);
  positive(cfg, "pad_vocab_size_multiple", pad);
  if (vocab % pad != 0) vocab += pad - vocab % pad;  // mamba_ssm pads the embedding rows
  s.vocab_size = vocab;
  s.tie_embeddings = cfg.bool_or({"tie_embeddings"}, true);
  s.residual_in_fp32 = cfg.bool_or({"residual_in_fp32"}, true);
  s.norm_eps = 1e-5f;  // mamba_ssm's create_block default; not stored in its config
  cfg.require(cfg.bool_or({"rms_norm"}, true), "rms_norm", "LayerNorm blocks are not supported (only RMSNorm)");
  cfg.require(cfg.int_or({"d_intermediate"}, 0) == 0, "d_intermediate",
              "mamba_ssm blocks with an MLP are not supported yet");
  const nlohmann::json* attn = cfg.find("attn_layer_idx");
  cfg.require(!attn || (attn->is_array() && attn->empty()), "attn_layer_idx",
              "mamba_ssm hybrids with attention layers are not supported yet");
  s.names = backbone_names("backbone.embedding.weight");
  s.layers.resize(size_t(n_layer));
  s.eos_token_ids = {0};  // GPT-NeoX <|endoftext|>, what the mamba_ssm checkpoints use
  return s;
}

ModelSpec hf_mamba_base_spec(const ConfigReader& cfg, const char* architecture) {
  ModelSpec s;
  s.architecture = architecture;
  s.layout = "transformers";
  s.d_model = positive(cfg, "hidden_size", cfg.get_int({"hidden_size"}));
  int64_t n_layer = layer_count(cfg, "num_hidden_layers");
  s.vocab_size = positive(cfg, "vocab_size", cfg.get_int({"vocab_size"}));
  s.norm_eps = float(cfg.float_or({"layer_norm_epsilon"}, 1e-5));
  s.residual_in_fp32 = cfg.bool_or({"residual_in_fp32"}, true);
  s.bos_token_ids = cfg.int_list_or({"bos_token_id"});
  s.eos_token_ids = cfg.int_list_or({"eos_token_id"});
  s.pad_token_id = cfg.int_or({"pad_token_id"}, -1);
  s.names = backbone_names("backbone.embeddings.weight");
  s.layers.resize(size_t(n_layer));
  return s;
}

}  // namespace statelm
