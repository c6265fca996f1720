#include "model/arch/arch.h"

#include "core/error.h"

namespace statelm {

const std::vector<ArchFamily>& arch_families() {
  static const std::vector<ArchFamily> families = {
      {"mamba", {"mamba", "falcon_mamba"}, build_mamba_spec},
      {"mamba2", {"mamba2"}, build_mamba2_spec},
      {"jamba", {"jamba"}, build_jamba_spec},
      {"llama", {"llama"}, build_llama_spec},
  };
  return families;
}

int64_t positive(const ConfigReader& cfg, std::string_view key, int64_t value) {
  cfg.require(value > 0, key, str_cat("must be positive, got ", value));
  // 2^24 bounds every real dimension (vocabularies, widths, expert counts) by far, and keeps all
  // products of a few dimensions inside int64.
  cfg.require(value <= (int64_t(1) << 24), key, str_cat("is implausibly large (", value, ")"));
  return value;
}

int64_t layer_count(const ConfigReader& cfg, std::string_view key) {
  int64_t n = positive(cfg, key, cfg.get_int({key}));
  cfg.require(n <= 16384, key, str_cat("more than 16384 layers (", n, ")"));
  return n;
}

namespace {
// After a family built a spec: refuse sizes whose byte counts would not fit the planner's int64
// arithmetic. Computed in double first, so that the check itself cannot overflow.
void check_spec_size(const ConfigReader& cfg, const ModelSpec& spec) {
  double params = 0;
  for (const auto& t : expected_tensors(spec)) {
    double n = 1;
    for (int64_t d : t.shape) n *= double(d);
    params += n;
  }
  if (params > 1e14)
    fail(ErrorKind::Unsupported, cfg.source(), ": the model would have ", params, " parameters (limit 1e14)");
}
}  // namespace

bool is_mamba_ssm_layout(const ConfigReader& cfg) {
  return !cfg.has("model_type") && cfg.has("d_model") && cfg.has("n_layer");
}

ModelSpec spec_from_config(const ConfigReader& cfg) {
  std::string type;
  if (cfg.has("model_type")) {
    type = cfg.get_string({"model_type"});
  } else if (is_mamba_ssm_layout(cfg)) {
    type = cfg.child("ssm_cfg").string_or({"layer"}, "Mamba1") == "Mamba2" ? "mamba2" : "mamba";
  } else {
    cfg.fail_key("model_type", "missing (and not an original mamba_ssm config with d_model/n_layer)");
  }
  std::string supported;
  for (const auto& fam : arch_families()) {
    for (const auto& t : fam.model_types) {
      if (t == type) {
        ModelSpec spec = fam.build(cfg);
        spec.source = cfg.source();
        check_spec_size(cfg, spec);
        return spec;
      }
      supported += (supported.empty() ? "" : ", ") + t;
    }
  }
  fail(ErrorKind::Unsupported, cfg.source(), ": model_type \"", type, "\" is not supported (supported: ", supported, ")");
}

ModelSpec spec_from_config_file(const std::string& config_path) {
  return spec_from_config(ConfigReader::from_file(config_path));
}

}  // namespace statelm
