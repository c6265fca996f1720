#include "model/model_spec.h"

#include <sstream>

#include "core/error.h"

namespace statelm {

namespace {

std::string substitute(std::string pattern, std::string_view key, int64_t value) {
  const std::string v = std::to_string(value);
  for (size_t pos = pattern.find(key); pos != std::string::npos; pos = pattern.find(key, pos + v.size()))
    pattern.replace(pos, key.size(), v);
  return pattern;
}

// Appends the tensors of one layer. `p` is the layer prefix ("backbone.layers.3.").
void add_mixer_tensors(std::vector<TensorSpec>& out, const ModelSpec& s, const std::string& p, const LayerSpec& l) {
  const int64_t d = s.d_model;
  if (auto* m = std::get_if<Mamba1Dims>(&l.mixer)) {
    const std::string q = p + s.names.mamba;
    out.push_back({q + "in_proj.weight", {2 * m->d_inner, d}});
    if (m->proj_bias) out.push_back({q + "in_proj.bias", {2 * m->d_inner}});
    out.push_back({q + "conv1d.weight", {m->d_inner, 1, m->d_conv}});
    if (m->conv_bias) out.push_back({q + "conv1d.bias", {m->d_inner}});
    out.push_back({q + "x_proj.weight", {m->dt_rank + 2 * m->d_state, m->d_inner}});
    out.push_back({q + "dt_proj.weight", {m->d_inner, m->dt_rank}});
    out.push_back({q + "dt_proj.bias", {m->d_inner}});
    out.push_back({q + "A_log", {m->d_inner, m->d_state}});
    out.push_back({q + "D", {m->d_inner}});
    if (m->dt_bc_norms) {
      out.push_back({q + "dt_layernorm.weight", {m->dt_rank}});
      out.push_back({q + "b_layernorm.weight", {m->d_state}});
      out.push_back({q + "c_layernorm.weight", {m->d_state}});
    }
    out.push_back({q + "out_proj.weight", {d, m->d_inner}});
    if (m->proj_bias) out.push_back({q + "out_proj.bias", {d}});
  } else if (auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
    const std::string q = p + s.names.mamba;
    out.push_back({q + "in_proj.weight", {m2->in_proj_dim(), d}});
    if (m2->proj_bias) out.push_back({q + "in_proj.bias", {m2->in_proj_dim()}});
    out.push_back({q + "conv1d.weight", {m2->conv_dim(), 1, m2->d_conv}});
    if (m2->conv_bias) out.push_back({q + "conv1d.bias", {m2->conv_dim()}});
    out.push_back({q + "dt_bias", {m2->n_heads}});
    out.push_back({q + "A_log", {m2->n_heads}});
    out.push_back({q + "D", {m2->n_heads}});
    out.push_back({q + "norm.weight", {m2->d_inner}});
    out.push_back({q + "out_proj.weight", {d, m2->d_inner}});
    if (m2->proj_bias) out.push_back({q + "out_proj.bias", {d}});
  } else if (auto* a = std::get_if<AttentionDims>(&l.mixer)) {
    const std::string q = p + s.names.attention;
    const int64_t qd = a->n_heads * a->head_dim, kvd = a->n_kv_heads * a->head_dim;
    out.push_back({q + "q_proj.weight", {qd, d}});
    if (a->qkv_bias) out.push_back({q + "q_proj.bias", {qd}});
    out.push_back({q + "k_proj.weight", {kvd, d}});
    if (a->qkv_bias) out.push_back({q + "k_proj.bias", {kvd}});
    out.push_back({q + "v_proj.weight", {kvd, d}});
    if (a->qkv_bias) out.push_back({q + "v_proj.bias", {kvd}});
    out.push_back({q + "o_proj.weight", {d, qd}});
    if (a->o_bias) out.push_back({q + "o_proj.bias", {d}});
  }
}

void add_swiglu(std::vector<TensorSpec>& out, const std::string& q, int64_t d, int64_t d_ff, bool bias) {
  out.push_back({q + "gate_proj.weight", {d_ff, d}});
  if (bias) out.push_back({q + "gate_proj.bias", {d_ff}});
  out.push_back({q + "up_proj.weight", {d_ff, d}});
  if (bias) out.push_back({q + "up_proj.bias", {d_ff}});
  out.push_back({q + "down_proj.weight", {d, d_ff}});
  if (bias) out.push_back({q + "down_proj.bias", {d}});
}

void add_ffn_tensors(std::vector<TensorSpec>& out, const ModelSpec& s, const std::string& p, const LayerSpec& l) {
  if (l.ffn_kind() == FfnKind::None) return;
  out.push_back({p + s.names.ffn_norm, {s.d_model}});
  const std::string q = p + s.names.ffn;
  if (auto* mlp = std::get_if<MlpDims>(&l.ffn)) {
    add_swiglu(out, q, s.d_model, mlp->d_ff, mlp->bias);
  } else if (auto* moe = std::get_if<MoeDims>(&l.ffn)) {
    out.push_back({q + s.names.router, {moe->n_experts, s.d_model}});
    for (int64_t e = 0; e < moe->n_experts; ++e)
      add_swiglu(out, q + substitute(s.names.expert, "{E}", e), s.d_model, moe->d_ff, false);
  }
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

const char* mixer_kind_name(MixerKind k) {
  switch (k) {
    case MixerKind::Mamba1: return "mamba1";
    case MixerKind::Mamba2: return "mamba2";
    case MixerKind::Attention: return "attention";
  }
  return "?";
}

const char* ffn_kind_name(FfnKind k) {
  switch (k) {
    case FfnKind::None: return "none";
    case FfnKind::Mlp: return "mlp";
    case FfnKind::Moe: return "moe";
  }
  return "?";
}

std::string ModelSpec::mixer_pattern() const {
  std::string out;
  for (const auto& l : layers) out += l.mixer_kind() == MixerKind::Attention ? 'A' : 'M';
  return out;
}

std::string ModelSpec::ffn_pattern() const {
  std::string out;
  for (const auto& l : layers) out += "-FE"[int(l.ffn_kind())];
  return out;
}

std::vector<TensorSpec> expected_tensors(const ModelSpec& s) {
  std::vector<TensorSpec> out;
  out.push_back({s.names.embedding, {s.vocab_size, s.d_model}});
  for (int64_t i = 0; i < s.n_layers(); ++i) {
    const std::string p = substitute(s.names.layer, "{L}", i);
    const LayerSpec& l = s.layers[size_t(i)];
    out.push_back({p + s.names.mixer_norm, {s.d_model}});
    add_mixer_tensors(out, s, p, l);
    add_ffn_tensors(out, s, p, l);
  }
  out.push_back({s.names.final_norm, {s.d_model}});
  if (!s.tie_embeddings) out.push_back({s.names.lm_head, {s.vocab_size, s.d_model}});
  return out;
}

int64_t parameter_count(const ModelSpec& spec) {
  int64_t n = 0;
  for (const auto& t : expected_tensors(spec)) n += numel(t.shape);
  return n;
}

int64_t active_parameter_count(const ModelSpec& spec) {
  int64_t n = parameter_count(spec);
  for (const auto& l : spec.layers)
    if (auto* moe = std::get_if<MoeDims>(&l.ffn))
      n -= (moe->n_experts - moe->top_k) * 3 * moe->d_ff * spec.d_model;
  return n;
}

MemoryFigures memory_figures(const ModelSpec& spec, DType state_dtype, DType kv_dtype) {
  MemoryFigures f;
  const int64_t sb = int64_t(dtype_size(state_dtype)), kb = int64_t(dtype_size(kv_dtype));
  for (const auto& l : spec.layers) {
    if (auto* m = std::get_if<Mamba1Dims>(&l.mixer)) {
      f.conv_state_bytes += m->d_inner * (m->d_conv - 1) * sb;
      f.ssm_state_bytes += m->d_inner * m->d_state * sb;
    } else if (auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
      f.conv_state_bytes += m2->conv_dim() * (m2->d_conv - 1) * sb;
      f.ssm_state_bytes += m2->n_heads * m2->head_dim * m2->d_state * sb;
    } else if (auto* a = std::get_if<AttentionDims>(&l.mixer)) {
      f.kv_bytes_per_token += 2 * a->n_kv_heads * a->head_dim * kb;
    }
  }
  return f;
}

int64_t MemoryFigures::bytes_for(int64_t batch, int64_t context) const {
  int64_t kv = 0, per_seq = 0, total = 0;
  if (batch < 0 || context < 0 || __builtin_mul_overflow(context, kv_bytes_per_token, &kv) ||
      __builtin_add_overflow(kv, state_bytes(), &per_seq) || __builtin_mul_overflow(batch, per_seq, &total))
    fail(ErrorKind::InvalidArgument, "memory for ", batch, " sequences of ", context, " tokens overflows 64 bits");
  return total;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

}  // namespace statelm
