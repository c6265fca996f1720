// Llama-style decoder (LlamaForCausalLM): GQA attention with RoPE + SwiGLU MLP in every layer.
// The Transformer baseline statelm is measured against at long context.
#include <cmath>

#include "core/error.h"
#include "model/arch/arch.h"

namespace statelm {

namespace {
// RoPE parameters: transformers >= 5 writes "rope_parameters"; older configs "rope_theta" and
// "rope_scaling".
RopeSpec read_rope(const ConfigReader& cfg, int64_t head_dim) {
  RopeSpec r;
  r.kind = RopeKind::Default;
  const char* section = cfg.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  ConfigReader rp = cfg.child(section);
  r.theta = cfg.float_or({"rope_theta"}, 10000.0);
  r.theta = rp.float_or({"rope_theta"}, r.theta);
  std::string type = rp.string_or({"rope_type", "type"}, "default");
  if (type == "default") {
    r.kind = RopeKind::Default;
  } else if (type == "linear") {
    r.kind = RopeKind::Linear;
    r.factor = rp.get_float({"factor"});
  } else if (type == "llama3") {
    r.kind = RopeKind::Llama3;
    r.factor = rp.get_float({"factor"});
    r.low_freq_factor = rp.get_float({"low_freq_factor"});
    r.high_freq_factor = rp.get_float({"high_freq_factor"});
    r.original_max_position = rp.get_int({"original_max_position_embeddings"});
  } else {
    fail(ErrorKind::Unsupported, cfg.source(), ": ", section, ".rope_type \"", type,
         "\" is not supported (supported: default, linear, llama3)");
  }
  cfg.require(r.theta > 0, "rope_theta", "must be positive");
  double partial = cfg.float_or({"partial_rotary_factor"}, 1.0);
  r.rotary_dim = int64_t(double(head_dim) * partial);
  cfg.require(r.rotary_dim > 0 && r.rotary_dim % 2 == 0 && r.rotary_dim <= head_dim, "partial_rotary_factor",
              "must give an even number of rotary dims <= head_dim");
  return r;
}
}  // namespace

ModelSpec build_llama_spec(const ConfigReader& cfg) {
  ModelSpec s = decoder_base_spec(cfg, "llama", 2048);
  const int64_t n_layer = layer_count(cfg, "num_hidden_layers");

  AttentionDims attn = read_attention_dims(cfg, s.d_model);
  attn.rope = read_rope(cfg, attn.head_dim);
  MlpDims mlp;
  mlp.d_ff = positive(cfg, "intermediate_size", cfg.get_int({"intermediate_size"}));
  mlp.bias = cfg.bool_or({"mlp_bias"}, false);
  s.layers.assign(size_t(n_layer), LayerSpec{attn, mlp});
  return s;
}

}  // namespace statelm
