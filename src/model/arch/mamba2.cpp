// Mamba-2 (SSD): transformers' Mamba2ForCausalLM and mamba_ssm's original layout.
//
// One semantic difference between the two: mamba_ssm's gated RMSNorm normalises each of the
// n_groups groups of channels separately, transformers' over all of d_inner at once; the spec
// records which (norm_group_size) so both reproduce their own reference exactly.
#include <cmath>

#include "core/error.h"
#include "model/arch/arch.h"

namespace statelm {

namespace {
// time_step_limit / dt_limit: [min, max]; (0, inf) means no clamping.
void read_dt_limit(const ConfigReader& cfg, std::string_view key, Mamba2Dims& m) {
  const nlohmann::json* v = cfg.find(key);
  if (!v) return;
  cfg.require(v->is_array() && v->size() == 2, key, "expected [min, max]");
  // Reuse ConfigReader's number parsing (it understands {"__float__": "Infinity"}).
  ConfigReader pair(nlohmann::json{{"min", (*v)[0]}, {"max", (*v)[1]}}, cfg.source());
  double lo = pair.get_float({"min"}), hi = pair.get_float({"max"});
  cfg.require(lo >= 0 && hi >= lo, key, "expected 0 <= min <= max");
  m.dt_limited = !(lo == 0.0 && std::isinf(hi));
  m.dt_min = float(lo);
  m.dt_max = float(hi);
}
}  // namespace

ModelSpec build_mamba2_spec(const ConfigReader& cfg) {
  Mamba2Dims m;
  ModelSpec s;
  const ConfigReader* dims = &cfg;
  ConfigReader ssm = cfg.child("ssm_cfg");
  if (is_mamba_ssm_layout(cfg)) {
    s = mamba_ssm_base_spec(cfg);
    dims = &ssm;
    m.d_state = positive(ssm, "d_state", ssm.int_or({"d_state"}, 128));
    m.d_conv = positive(ssm, "d_conv", ssm.int_or({"d_conv"}, 4));
    m.d_inner = positive(ssm, "expand", ssm.int_or({"expand"}, 2)) * s.d_model;
    m.head_dim = positive(ssm, "headdim", ssm.int_or({"headdim"}, 64));
    m.n_groups = positive(ssm, "ngroups", ssm.int_or({"ngroups"}, 1));
    m.chunk_size = positive(ssm, "chunk_size", ssm.int_or({"chunk_size"}, 256));
    m.conv_bias = ssm.bool_or({"conv_bias"}, true);
    m.proj_bias = ssm.bool_or({"bias"}, false);
    ssm.require(ssm.int_or({"d_ssm"}, m.d_inner) == m.d_inner, "d_ssm", "d_ssm != d_inner is not supported");
    ssm.require(ssm.bool_or({"rmsnorm"}, true), "rmsnorm", "Mamba-2 without the gated RMSNorm is not supported");
    ssm.require(!ssm.bool_or({"norm_before_gate"}, false), "norm_before_gate", "norm_before_gate=true is not supported");
    cfg.require(m.head_dim > 0 && m.d_inner % m.head_dim == 0, "ssm_cfg.headdim", "must divide d_inner");
    m.n_heads = m.d_inner / m.head_dim;
    m.norm_group_size = m.d_inner / m.n_groups;
    m.norm_eps = 1e-5f;
    read_dt_limit(ssm, "dt_limit", m);
  } else {
    s = hf_mamba_base_spec(cfg, "mamba2");
    s.tie_embeddings = cfg.bool_or({"tie_word_embeddings"}, false);
    m.d_state = positive(cfg, "state_size", cfg.int_or({"state_size"}, 128));
    m.d_conv = positive(cfg, "conv_kernel", cfg.int_or({"conv_kernel"}, 4));
    m.d_inner = positive(cfg, "expand", cfg.int_or({"expand"}, 2)) * s.d_model;
    m.n_heads = positive(cfg, "num_heads", cfg.int_or({"num_heads"}, 128));
    m.head_dim = positive(cfg, "head_dim", cfg.int_or({"head_dim"}, 64));
    m.n_groups = positive(cfg, "n_groups", cfg.int_or({"n_groups"}, 8));
    m.chunk_size = positive(cfg, "chunk_size", cfg.int_or({"chunk_size"}, 256));
    m.conv_bias = cfg.bool_or({"use_conv_bias"}, true);
    m.proj_bias = cfg.bool_or({"use_bias"}, false);
    cfg.require(cfg.bool_or({"rms_norm"}, true), "rms_norm", "Mamba-2 without the gated RMSNorm is not supported");
    cfg.require(m.n_heads * m.head_dim == m.d_inner, "num_heads",
                str_cat("num_heads * head_dim = ", m.n_heads * m.head_dim, " must equal expand * hidden_size = ", m.d_inner));
    m.norm_group_size = m.d_inner;
    m.norm_eps = s.norm_eps;
    read_dt_limit(cfg, "time_step_limit", m);
  }
  dims->require(m.n_heads % m.n_groups == 0, is_mamba_ssm_layout(cfg) ? "ngroups" : "n_groups",
                str_cat("must divide the number of heads (", m.n_heads, ")"));
  s.architecture = "mamba2";
  for (auto& layer : s.layers) layer.mixer = m;
  return s;
}

}  // namespace statelm
