// Architecture families: each translates its config.json keys and tensor names into the
// generic ModelSpec. Adding a family (Bamba, Zamba2, ...) is one new file here plus a row in
// the table in arch.cpp — never a new forward.
#pragma once

#include <string>
#include <vector>

#include "model/config_reader.h"
#include "model/model_spec.h"

namespace statelm {

struct ArchFamily {
  const char* name;                      // "mamba2"
  std::vector<std::string> model_types;  // config.json "model_type" values it reads
  ModelSpec (*build)(const ConfigReader& cfg);
};

const std::vector<ArchFamily>& arch_families();

// config.json -> ModelSpec. The family comes from "model_type", or, for the original
// mamba_ssm configs that have none, from "ssm_cfg.layer". Throws Error naming the key at fault.
ModelSpec spec_from_config(const ConfigReader& cfg);
ModelSpec spec_from_config_file(const std::string& config_path);

// Families (one file each).
ModelSpec build_mamba_spec(const ConfigReader& cfg);
ModelSpec build_mamba2_spec(const ConfigReader& cfg);
ModelSpec build_jamba_spec(const ConfigReader& cfg);
ModelSpec build_llama_spec(const ConfigReader& cfg);

// Shared by families: checks that a dimension read from `key` is positive.
int64_t positive(const ConfigReader& cfg, std::string_view key, int64_t value);
// The number of layers read from `key`: positive and at most 16384 (checked before any
// per-layer allocation, so an absurd config cannot exhaust memory).
int64_t layer_count(const ConfigReader& cfg, std::string_view key);
// True for the original state-spaces/mamba config layout (d_model, n_layer, ssm_cfg).
bool is_mamba_ssm_layout(const ConfigReader& cfg);
// The parts of a mamba_ssm-layout config that Mamba-1 and Mamba-2 share: d_model, vocab (padded
// to pad_vocab_size_multiple), tie_embeddings, tensor names; n_layer empty layers to fill in.
ModelSpec mamba_ssm_base_spec(const ConfigReader& cfg);
// The parts of a transformers MambaForCausalLM / Mamba2ForCausalLM config they share.
ModelSpec hf_mamba_base_spec(const ConfigReader& cfg, const char* architecture);

}  // namespace statelm

namespace statelm {
// num_attention_heads / num_key_value_heads / head_dim as transformers spells them (no RoPE).
AttentionDims read_attention_dims(const ConfigReader& cfg, int64_t d_model);
// The "model.layers.{L}." naming transformers uses for Llama-like decoders (Llama, Jamba).
TensorNaming decoder_names();
// What transformers' decoder configs (Llama, Jamba) share: hidden_size, vocab, rms_norm_eps,
// tied embeddings, max_position_embeddings (default_max_positions when absent), the special token
// ids, hidden_act (silu only) and decoder_names(); no layers yet.
ModelSpec decoder_base_spec(const ConfigReader& cfg, const char* architecture, int64_t default_max_positions);
}  // namespace statelm
