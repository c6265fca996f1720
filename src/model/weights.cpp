#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "core/error.h"

namespace statelm {

namespace {

// Allocates each logical weight (fused where the forward wants it fused) and says where each
// checkpoint tensor goes inside it.
class WeightPlacer {
 public:
  WeightPlacer(const ModelSpec& spec, Backend& backend, ModelWeights& w) : spec_(spec), backend_(backend), w_(w) {
    w_.layers.resize(spec.layers.size());
  }

  // The destination (a row range of a possibly fused tensor) for `t`.
  Tensor destination(const TensorSpec& t) {
    using R = WeightRole;
    const int64_t d = spec_.d_model;
    dtype_ = weight_dtype(t.role, backend_.compute_dtype());
    switch (t.role) {
      case R::Embedding: return make(w_.embedding, {spec_.vocab_size, d});
      case R::FinalNorm: return make(w_.final_norm, {d});
      case R::LmHead: return make(w_.lm_head, {spec_.vocab_size, d});
      default: break;
    }
    LayerWeights& L = w_.layers[size_t(t.layer)];
    const LayerSpec& ls = spec_.layers[size_t(t.layer)];
    switch (t.role) {
      case R::MixerNorm: return make(L.mixer_norm, {d});
      case R::FfnNorm: return make(L.ffn_norm, {d});
      default: break;
    }
    if (auto* m = std::get_if<Mamba1Dims>(&ls.mixer)) {
      Mamba1Weights& W = L.mamba1;
      switch (t.role) {
        case R::InProj: return make(W.in_proj, {2 * m->d_inner, d});
        case R::InProjBias: return make(W.in_proj_bias, {2 * m->d_inner});
        case R::Conv: return make(W.conv, {m->d_inner, m->d_conv});
        case R::ConvBias: return make(W.conv_bias, {m->d_inner});
        case R::XProj: return make(W.x_proj, {m->dt_rank + 2 * m->d_state, m->d_inner});
        case R::DtProj: return make(W.dt_proj, {m->d_inner, m->dt_rank});
        case R::DtProjBias: return make(W.dt_proj_bias, {m->d_inner});
        case R::ALog: return make(W.A, {m->d_inner, m->d_state});
        case R::D: return make(W.D, {m->d_inner});
        case R::DtNorm: return make(W.dt_norm, {m->dt_rank});
        case R::BNorm: return make(W.b_norm, {m->d_state});
        case R::CNorm: return make(W.c_norm, {m->d_state});
        case R::OutProj: return make(W.out_proj, {d, m->d_inner});
        case R::OutProjBias: return make(W.out_proj_bias, {d});
        default: break;
      }
    }
    if (auto* m = std::get_if<Mamba2Dims>(&ls.mixer)) {
      Mamba2Weights& W = L.mamba2;
      switch (t.role) {
        case R::InProj: return make(W.in_proj, {m->in_proj_dim(), d});
        case R::InProjBias: return make(W.in_proj_bias, {m->in_proj_dim()});
        case R::Conv: return make(W.conv, {m->conv_dim(), m->d_conv});
        case R::ConvBias: return make(W.conv_bias, {m->conv_dim()});
        case R::DtBias: return make(W.dt_bias, {m->n_heads});
        case R::ALog: return make(W.A, {m->n_heads});
        case R::D: return make(W.D, {m->n_heads});
        case R::GatedNorm: return make(W.norm, {m->d_inner});
        case R::OutProj: return make(W.out_proj, {d, m->d_inner});
        case R::OutProjBias: return make(W.out_proj_bias, {d});
        default: break;
      }
    }
    if (auto* a = std::get_if<AttentionDims>(&ls.mixer)) {
      AttentionWeights& W = L.attention;
      const int64_t qd = a->n_heads * a->head_dim, kvd = a->n_kv_heads * a->head_dim, all = qd + 2 * kvd;
      switch (t.role) {
        case R::Q: return make(W.qkv, {all, d}).rows(0, qd);
        case R::K: return make(W.qkv, {all, d}).rows(qd, kvd);
        case R::V: return make(W.qkv, {all, d}).rows(qd + kvd, kvd);
        case R::QBias: return make(W.qkv_bias, {all}).rows(0, qd);
        case R::KBias: return make(W.qkv_bias, {all}).rows(qd, kvd);
        case R::VBias: return make(W.qkv_bias, {all}).rows(qd + kvd, kvd);
        case R::O: return make(W.o, {d, qd});
        case R::OBias: return make(W.o_bias, {d});
        default: break;
      }
    }
    if (auto* mlp = std::get_if<MlpDims>(&ls.ffn)) {
      MlpWeights& W = L.mlp;
      const int64_t f = mlp->d_ff;
      switch (t.role) {
        case R::Gate: return make(W.gate_up, {2 * f, d}).rows(0, f);
        case R::Up: return make(W.gate_up, {2 * f, d}).rows(f, f);
        case R::GateBias: return make(W.gate_up_bias, {2 * f}).rows(0, f);
        case R::UpBias: return make(W.gate_up_bias, {2 * f}).rows(f, f);
        case R::Down: return make(W.down, {d, f});
        case R::DownBias: return make(W.down_bias, {d});
        default: break;
      }
    }
    if (auto* moe = std::get_if<MoeDims>(&ls.ffn)) {
      MoeWeights& W = L.moe;
      const int64_t f = moe->d_ff, e = t.expert, n = moe->n_experts;
      auto expert = [&](Tensor& all, std::initializer_list<int64_t> shape) {
        Tensor stacked = make(all, shape);
        return Tensor::contiguous(static_cast<char*>(stacked.data) + size_t(e * stacked.stride[0]) * dtype_size(stacked.dtype),
                                  stacked.dtype, {stacked.shape[1], stacked.shape[2]}, stacked.device);
      };
      switch (t.role) {
        case R::Router: return make(W.router, {n, d});
        case R::Gate: return expert(W.gate_up, {n, 2 * f, d}).rows(0, f);
        case R::Up: return expert(W.gate_up, {n, 2 * f, d}).rows(f, f);
        case R::Down: return expert(W.down, {n, d, f});
        default: break;
      }
    }
    fail(ErrorKind::Internal, "no place for weight ", t.name);
  }

 private:
  // Allocates `slot` on first use (the backend's zeroed memory), in the current role's dtype.
  Tensor make(Tensor& slot, std::initializer_list<int64_t> shape) {
    if (!slot.defined()) {
      Tensor shape_only = Tensor::contiguous(nullptr, dtype_, shape, backend_.device());
      Buffer b = backend_.allocate(shape_only.nbytes());
      slot = Tensor::contiguous(b.data(), dtype_, shape, backend_.device());
      w_.bytes += b.bytes();
      w_.storage.push_back(std::move(b));
    }
    return slot;
  }

  const ModelSpec& spec_;
  Backend& backend_;
  ModelWeights& w_;
  DType dtype_ = DType::F32;  // of the weight being placed
};

// Turns raw checkpoint values into what the forward uses (A = -exp(A_log)).
void transform(WeightRole role, std::vector<float>& v) {
  if (role == WeightRole::ALog)
    for (float& x : v) x = -std::exp(x);
}

void finish(const ModelSpec& spec, ModelWeights& w) {
  if (spec.tie_embeddings) w.lm_head = w.embedding;
}

}  // namespace

DType weight_dtype(WeightRole role, DType compute) {
  using R = WeightRole;
  switch (role) {
    case R::Embedding: case R::LmHead: case R::InProj: case R::XProj: case R::DtProj: case R::OutProj: case R::Q:
    case R::K: case R::V: case R::O: case R::Gate: case R::Up: case R::Down: case R::Router:
      return compute;
    default:
      return DType::F32;
  }
}

ModelWeights load_weights(const ModelSpec& spec, const Checkpoint& checkpoint, Backend& backend) {
  ModelWeights w;
  WeightPlacer placer(spec, backend, w);
  std::vector<float> host;
  for (const TensorSpec& t : expected_tensors(spec)) {
    TensorRef ref = checkpoint.require(t);
    const size_t n = size_t(ref.info->numel());
    host.resize(n);
    convert_to_f32(*ref.info->dtype, ref.data, host.data(), n);
    transform(t.role, host);
    backend.upload(placer.destination(t), host.data());
  }
  finish(spec, w);
  return w;
}

namespace {

// A counter-based generator: element i of tensor t is a pure function of (seed, t, i), so the
// tensors fill in parallel with the same values whatever the thread count. What benchmarks of
// real sizes need (a 52B Jamba is 52e9 draws: a sequential normal generator takes half an hour)
// — not statistical quality: the matrices are uniform with the N(0, 1/fan_in) init's variance.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline float unit_uniform(uint64_t key, uint64_t i) { return float(splitmix64(key ^ splitmix64(i)) >> 40) * 0x1.0p-24f; }

float random_value(WeightRole role, float fan_in, uint64_t key, uint64_t i) {
  using R = WeightRole;
  const float u = unit_uniform(key, i);
  switch (role) {
    case R::MixerNorm: case R::FfnNorm: case R::FinalNorm: case R::GatedNorm: case R::DtNorm: case R::BNorm:
    case R::CNorm: return 1.0f + 0.1f * (u - 0.5f);
    case R::ALog: return std::log(1.0f + 15.0f * u);  // A in [-16, -1]
    case R::DtBias: case R::DtProjBias: {  // softplus^-1 of dt in [1e-3, 1e-1], log-uniform
      const float dt = std::exp(std::log(1e-3f) + u * (std::log(1e-1f) - std::log(1e-3f)));
      return dt + std::log(-std::expm1(-dt));
    }
    case R::D: return 1.0f;
    default: return (2.0f * u - 1.0f) * std::sqrt(3.0f / fan_in);  // std 1/sqrt(fan_in)
  }
}

}  // namespace

ModelWeights random_weights(const ModelSpec& spec, Backend& backend, uint64_t seed, const RandomTiling& tiling) {
  ModelWeights w;
  WeightPlacer placer(spec, backend, w);
  std::vector<float> host;
  const size_t workers = std::max(1u, std::thread::hardware_concurrency());
  const bool tile_large = parameter_count(spec) > tiling.above_parameters;
  const size_t tile = std::max<size_t>(1, tiling.tile);
  uint64_t index = 0;
  for (const TensorSpec& t : expected_tensors(spec)) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= size_t(d);
    const Tensor dst = placer.destination(t);
    const bool tiled = tile_large && n >= 2 * tile && dst.is_contiguous();
    const size_t drawn = tiled ? tile : n;
    host.resize(drawn);
    const uint64_t key = splitmix64(seed * 0x100000001b3ull + index++);
    const float fan_in = float(t.shape.back());
    const size_t per = (drawn + workers - 1) / workers;
    std::vector<std::thread> pool;
    for (size_t k = 0; k < workers && k * per < drawn; ++k)
      pool.emplace_back([&, k] {
        for (size_t i = k * per; i < std::min(drawn, (k + 1) * per); ++i) host[i] = random_value(t.role, fan_in, key, i);
      });
    for (auto& th : pool) th.join();
    transform(t.role, host);
    if (!tiled) {
      backend.upload(dst, host.data());
      continue;
    }
    // element i = element i mod tile: the window, then doubling copies of what is filled.
    const Tensor flat = Tensor::contiguous(dst.data, dst.dtype, {int64_t(n)}, dst.device);
    backend.upload(flat.rows(0, int64_t(tile)), host.data());
    for (size_t done = tile; done < n;) {
      const size_t k = std::min(done, n - done);
      backend.copy(flat.rows(int64_t(done), int64_t(k)), flat.rows(0, int64_t(k)));
      done += k;
    }
  }
  finish(spec, w);
  return w;
}

}  // namespace statelm
