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

// Collects the tensors of one layer with their roles; names are prefix + suffix.
struct LayerTensors {
  std::vector<TensorSpec>& out;
  int64_t layer;
  int64_t expert = -1;
  void add(const std::string& name, std::vector<int64_t> shape, WeightRole role) {
    out.push_back(TensorSpec{name, std::move(shape), role, layer, expert});
  }
};

// Appends the tensors of one layer. `p` is the layer prefix ("backbone.layers.3.").
void add_mixer_tensors(LayerTensors& out, const ModelSpec& s, const std::string& p, const LayerSpec& l) {
  using R = WeightRole;
  const int64_t d = s.d_model;
  if (auto* m = std::get_if<Mamba1Dims>(&l.mixer)) {
    const std::string q = p + s.names.mamba;
    out.add(q + "in_proj.weight", {2 * m->d_inner, d}, R::InProj);
    if (m->proj_bias) out.add(q + "in_proj.bias", {2 * m->d_inner}, R::InProjBias);
    out.add(q + "conv1d.weight", {m->d_inner, 1, m->d_conv}, R::Conv);
    if (m->conv_bias) out.add(q + "conv1d.bias", {m->d_inner}, R::ConvBias);
    out.add(q + "x_proj.weight", {m->dt_rank + 2 * m->d_state, m->d_inner}, R::XProj);
    out.add(q + "dt_proj.weight", {m->d_inner, m->dt_rank}, R::DtProj);
    out.add(q + "dt_proj.bias", {m->d_inner}, R::DtProjBias);
    out.add(q + "A_log", {m->d_inner, m->d_state}, R::ALog);
    out.add(q + "D", {m->d_inner}, R::D);
    if (m->dt_bc_norms) {
      out.add(q + "dt_layernorm.weight", {m->dt_rank}, R::DtNorm);
      out.add(q + "b_layernorm.weight", {m->d_state}, R::BNorm);
      out.add(q + "c_layernorm.weight", {m->d_state}, R::CNorm);
    }
    out.add(q + "out_proj.weight", {d, m->d_inner}, R::OutProj);
    if (m->proj_bias) out.add(q + "out_proj.bias", {d}, R::OutProjBias);
  } else if (auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
    const std::string q = p + s.names.mamba;
    out.add(q + "in_proj.weight", {m2->in_proj_dim(), d}, R::InProj);
    if (m2->proj_bias) out.add(q + "in_proj.bias", {m2->in_proj_dim()}, R::InProjBias);
    out.add(q + "conv1d.weight", {m2->conv_dim(), 1, m2->d_conv}, R::Conv);
    if (m2->conv_bias) out.add(q + "conv1d.bias", {m2->conv_dim()}, R::ConvBias);
    out.add(q + "dt_bias", {m2->n_heads}, R::DtBias);
    out.add(q + "A_log", {m2->n_heads}, R::ALog);
    out.add(q + "D", {m2->n_heads}, R::D);
    out.add(q + "norm.weight", {m2->d_inner}, R::GatedNorm);
    out.add(q + "out_proj.weight", {d, m2->d_inner}, R::OutProj);
    if (m2->proj_bias) out.add(q + "out_proj.bias", {d}, R::OutProjBias);
  } else if (auto* a = std::get_if<AttentionDims>(&l.mixer)) {
    const std::string q = p + s.names.attention;
    const int64_t qd = a->n_heads * a->head_dim, kvd = a->n_kv_heads * a->head_dim;
    out.add(q + "q_proj.weight", {qd, d}, R::Q);
    if (a->qkv_bias) out.add(q + "q_proj.bias", {qd}, R::QBias);
    out.add(q + "k_proj.weight", {kvd, d}, R::K);
    if (a->qkv_bias) out.add(q + "k_proj.bias", {kvd}, R::KBias);
    out.add(q + "v_proj.weight", {kvd, d}, R::V);
    if (a->qkv_bias) out.add(q + "v_proj.bias", {kvd}, R::VBias);
    out.add(q + "o_proj.weight", {d, qd}, R::O);
    if (a->o_bias) out.add(q + "o_proj.bias", {d}, R::OBias);
  }
}

void add_swiglu(LayerTensors& out, const std::string& q, int64_t d, int64_t d_ff, bool bias) {
  using R = WeightRole;
  out.add(q + "gate_proj.weight", {d_ff, d}, R::Gate);
  if (bias) out.add(q + "gate_proj.bias", {d_ff}, R::GateBias);
  out.add(q + "up_proj.weight", {d_ff, d}, R::Up);
  if (bias) out.add(q + "up_proj.bias", {d_ff}, R::UpBias);
  out.add(q + "down_proj.weight", {d, d_ff}, R::Down);
  if (bias) out.add(q + "down_proj.bias", {d}, R::DownBias);
}

void add_ffn_tensors(LayerTensors& out, const ModelSpec& s, const std::string& p, const LayerSpec& l) {
  if (l.ffn_kind() == FfnKind::None) return;
  out.add(p + s.names.ffn_norm, {s.d_model}, WeightRole::FfnNorm);
  const std::string q = p + s.names.ffn;
  if (auto* mlp = std::get_if<MlpDims>(&l.ffn)) {
    add_swiglu(out, q, s.d_model, mlp->d_ff, mlp->bias);
  } else if (auto* moe = std::get_if<MoeDims>(&l.ffn)) {
    out.add(q + s.names.router, {moe->n_experts, s.d_model}, WeightRole::Router);
    for (int64_t e = 0; e < moe->n_experts; ++e) {
      out.expert = e;
      add_swiglu(out, q + substitute(s.names.expert, "{E}", e), s.d_model, moe->d_ff, false);
    }
    out.expert = -1;
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
  out.push_back({s.names.embedding, {s.vocab_size, s.d_model}, WeightRole::Embedding});
  for (int64_t i = 0; i < s.n_layers(); ++i) {
    const std::string p = substitute(s.names.layer, "{L}", i);
    const LayerSpec& l = s.layers[size_t(i)];
    LayerTensors layer{out, i};
    layer.add(p + s.names.mixer_norm, {s.d_model}, WeightRole::MixerNorm);
    add_mixer_tensors(layer, s, p, l);
    add_ffn_tensors(layer, s, p, l);
  }
  out.push_back({s.names.final_norm, {s.d_model}, WeightRole::FinalNorm});
  if (!s.tie_embeddings) out.push_back({s.names.lm_head, {s.vocab_size, s.d_model}, WeightRole::LmHead});
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
      f.conv_state_bytes += m->d_inner * (m->d_conv - 1) * 4;  // the conv window is always fp32
      f.ssm_state_bytes += m->d_inner * m->d_state * sb;
    } else if (auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
      f.conv_state_bytes += m2->conv_dim() * (m2->d_conv - 1) * 4;
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
