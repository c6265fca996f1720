// ModelSpec: a model as data — a stack of layers, each a mixer (Mamba-1 | Mamba-2 | Attention)
// and an optional feed-forward (MLP | MoE), plus embedding, final norm and LM head.
//
// Architecture files (src/model/arch/) translate a config.json into this; the forward, the
// state cache and the memory planner only ever read a ModelSpec. Dimensions are int64 because
// products of them (bytes of a KV cache at 1M tokens) overflow 32 bits.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "core/dtype.h"

namespace statelm {

// Mamba-1 selective-scan mixer (MambaForCausalLM, Jamba's Mamba layers).
//   in_proj [2*d_inner, d_model] -> x, z; conv1d [d_inner, 1, d_conv]; x_proj [dt_rank + 2*d_state, d_inner]
//   dt_proj [d_inner, dt_rank] (+bias); A_log [d_inner, d_state]; D [d_inner]; out_proj [d_model, d_inner]
struct Mamba1Dims {
  int64_t d_inner = 0, d_state = 0, d_conv = 0, dt_rank = 0;
  bool conv_bias = true;
  bool proj_bias = false;  // in_proj / out_proj biases
  bool dt_bc_norms = false;  // Jamba: RMSNorm on dt, B and C (dt_layernorm, b_layernorm, c_layernorm)
  float inner_norm_eps = 1e-6f;
};

// Mamba-2 SSD mixer (Mamba2ForCausalLM, mamba_ssm Mamba2).
//   in_proj [2*d_inner + 2*n_groups*d_state + n_heads, d_model] -> z, xBC, dt
//   conv1d over xBC (conv_dim = d_inner + 2*n_groups*d_state); A_log, D, dt_bias [n_heads]
//   gated RMSNorm [d_inner] over groups of norm_group_size channels; out_proj [d_model, d_inner]
struct Mamba2Dims {
  int64_t d_inner = 0, d_state = 0, d_conv = 0, n_heads = 0, head_dim = 0, n_groups = 1;
  int64_t chunk_size = 256;
  int64_t norm_group_size = 0;  // transformers: d_inner (one group); mamba_ssm: d_inner / n_groups
  bool conv_bias = true;
  bool proj_bias = false;
  float dt_min = 0.0f, dt_max = 0.0f;  // time_step_limit: dt is clamped to [dt_min, dt_max]
  bool dt_limited = false;             // false when the limit is (0, inf)
  float norm_eps = 1e-5f;

  int64_t conv_dim() const { return d_inner + 2 * n_groups * d_state; }
  int64_t in_proj_dim() const { return 2 * d_inner + 2 * n_groups * d_state + n_heads; }
};

enum class RopeKind { None, Default, Linear, Llama3 };

struct RopeSpec {
  RopeKind kind = RopeKind::None;
  double theta = 10000.0;
  double factor = 1.0;                   // linear / llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int64_t original_max_position = 8192;  // llama3
  int64_t rotary_dim = 0;                // dims rotated (= head_dim unless partial rotary)
};

// Multi-head attention with grouped KV heads (GQA); q [n_heads*head_dim, d_model].
struct AttentionDims {
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  bool qkv_bias = false, o_bias = false;
  RopeSpec rope;
};

// SwiGLU MLP: down(silu(gate(x)) * up(x)).
struct MlpDims {
  int64_t d_ff = 0;
  bool bias = false;
};

// Mixture of experts of SwiGLU MLPs: router [n_experts, d_model] -> softmax -> top_k.
struct MoeDims {
  int64_t n_experts = 0, top_k = 0, d_ff = 0;
  bool renormalize = false;  // Jamba: top-k softmax weights are used as they are (no renormalise)
};

using MixerSpec = std::variant<Mamba1Dims, Mamba2Dims, AttentionDims>;
using FfnSpec = std::variant<std::monostate, MlpDims, MoeDims>;

enum class MixerKind { Mamba1, Mamba2, Attention };
enum class FfnKind { None, Mlp, Moe };

struct LayerSpec {
  MixerSpec mixer;
  FfnSpec ffn;

  MixerKind mixer_kind() const { return MixerKind(mixer.index()); }
  FfnKind ffn_kind() const { return FfnKind(ffn.index()); }
  bool is_mamba() const { return mixer_kind() != MixerKind::Attention; }
};

const char* mixer_kind_name(MixerKind k);  // "mamba1", "mamba2", "attention"
const char* ffn_kind_name(FfnKind k);      // "none", "mlp", "moe"

// Where each weight of the generic layer stack lives in the checkpoint: tables of names, one
// per architecture family. "{L}" stands for the layer index, "{E}" for the expert index.
struct TensorNaming {
  std::string embedding;   // "backbone.embeddings.weight"
  std::string final_norm;  // "backbone.norm_f.weight"
  std::string lm_head;     // "lm_head.weight"
  std::string layer;       // "backbone.layers.{L}."
  std::string mixer_norm;  // "norm.weight" | "input_layernorm.weight"
  std::string ffn_norm;    // "pre_ff_layernorm.weight" | "post_attention_layernorm.weight"
  std::string mamba;       // "mixer." | "mamba."
  std::string attention;   // "self_attn."
  std::string ffn;         // "mlp." | "feed_forward."
  std::string router;      // "router.weight" (within ffn)
  std::string expert;      // "experts.{E}." (within ffn)
};

struct ModelSpec {
  std::string architecture;  // "mamba", "mamba2", "jamba", "llama"
  std::string layout;        // "transformers" | "mamba_ssm"
  std::string source;        // the config.json it came from
  int64_t d_model = 0;
  int64_t vocab_size = 0;      // rows of the embedding / LM head (padded vocab for mamba_ssm)
  float norm_eps = 1e-5f;      // block and final RMSNorm epsilon
  bool tie_embeddings = false;
  bool residual_in_fp32 = true;
  int64_t max_position_embeddings = 0;  // 0 = unbounded (pure SSM)
  std::vector<int64_t> bos_token_ids, eos_token_ids;
  int64_t pad_token_id = -1;
  std::vector<LayerSpec> layers;
  TensorNaming names;

  int64_t n_layers() const { return int64_t(layers.size()); }
  // "MMMMAMMM"-style pattern of mixers, and "-E-E"-style of feed-forwards.
  std::string mixer_pattern() const;
  std::string ffn_pattern() const;
};

// What a checkpoint tensor is for in the generic layer stack; the weight loader places each
// by its role, so expected_tensors() is the one table of names, shapes and meanings.
enum class WeightRole {
  Embedding, FinalNorm, LmHead, MixerNorm, FfnNorm,
  // Mamba-1 / Mamba-2 mixers
  InProj, InProjBias, Conv, ConvBias, XProj, DtProj, DtProjBias, ALog, D, DtBias, DtNorm, BNorm, CNorm, GatedNorm,
  OutProj, OutProjBias,
  // attention
  Q, QBias, K, KBias, V, VBias, O, OBias,
  // MLP and MoE experts
  Gate, GateBias, Up, UpBias, Down, DownBias, Router,
};

// One tensor the checkpoint must hold, with its expected shape and role.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  WeightRole role = WeightRole::Embedding;
  int64_t layer = -1;   // -1 outside the layer stack
  int64_t expert = -1;  // MoE expert index, -1 elsewhere
};

// Every tensor the layer stack reads, in a stable order (embedding first, LM head last).
std::vector<TensorSpec> expected_tensors(const ModelSpec& spec);

// Parameter count implied by the spec (tied LM head counted once).
int64_t parameter_count(const ModelSpec& spec);
// Parameters touched per token: MoE layers count only top_k of their experts.
int64_t active_parameter_count(const ModelSpec& spec);

// Memory the runtime needs, from the spec alone.
struct MemoryFigures {
  int64_t conv_state_bytes = 0;   // per sequence: sum over Mamba layers of conv channels * (d_conv - 1)
  int64_t ssm_state_bytes = 0;    // per sequence: Mamba-1 d_inner*d_state, Mamba-2 heads*head_dim*d_state
  int64_t kv_bytes_per_token = 0; // sum over attention layers of 2 * n_kv_heads * head_dim
  int64_t state_bytes() const { return conv_state_bytes + ssm_state_bytes; }
  // Bytes for `batch` sequences of `context` tokens each (state + KV); Error(InvalidArgument)
  // when that does not fit in int64.
  int64_t bytes_for(int64_t batch, int64_t context) const;
};
// state_dtype is the SSM state's; the conv windows are always fp32 (see runtime/state_cache.h).
MemoryFigures memory_figures(const ModelSpec& spec, DType state_dtype, DType kv_dtype);

// "[2, 64]"
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace statelm
