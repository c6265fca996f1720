// Mamba-1 (selective scan): transformers' MambaForCausalLM and mamba_ssm's original layout.
#include <cmath>

#include "core/error.h"
#include "model/arch/arch.h"

namespace statelm {

namespace {
// dt_rank "auto" means ceil(d_model / 16) in both transformers and mamba_ssm.
int64_t read_dt_rank(const ConfigReader& cfg, std::string_view key, int64_t d_model) {
  const nlohmann::json* v = cfg.find(key);
  if (!v || (v->is_string() && v->get<std::string>() == "auto")) return (d_model + 15) / 16;
  return positive(cfg, key, cfg.get_int({key}));
}
}  // namespace

ModelSpec build_mamba_spec(const ConfigReader& cfg) {
  Mamba1Dims m;
  ModelSpec s;
  if (is_mamba_ssm_layout(cfg)) {
    s = mamba_ssm_base_spec(cfg);
    ConfigReader ssm = cfg.child("ssm_cfg");
    m.d_state = positive(ssm, "d_state", ssm.int_or({"d_state"}, 16));
    m.d_conv = positive(ssm, "d_conv", ssm.int_or({"d_conv"}, 4));
    int64_t expand = positive(ssm, "expand", ssm.int_or({"expand"}, 2));
    m.d_inner = expand * s.d_model;
    m.dt_rank = read_dt_rank(ssm, "dt_rank", s.d_model);
    m.conv_bias = ssm.bool_or({"conv_bias"}, true);
    m.proj_bias = ssm.bool_or({"bias"}, false);
  } else {
    s = hf_mamba_base_spec(cfg, "mamba");
    s.tie_embeddings = cfg.bool_or({"tie_word_embeddings"}, true);
    m.d_state = positive(cfg, "state_size", cfg.int_or({"state_size"}, 16));
    m.d_conv = positive(cfg, "conv_kernel", cfg.int_or({"conv_kernel"}, 4));
    int64_t expand = cfg.int_or({"expand"}, 2);
    m.d_inner = positive(cfg, "intermediate_size", cfg.int_or({"intermediate_size"}, expand * s.d_model));
    m.dt_rank = read_dt_rank(cfg, "time_step_rank", s.d_model);
    m.conv_bias = cfg.bool_or({"use_conv_bias"}, true);
    m.proj_bias = cfg.bool_or({"use_bias"}, false);
  }
  s.architecture = "mamba";
  for (auto& layer : s.layers) layer.mixer = m;
  return s;
}

}  // namespace statelm
