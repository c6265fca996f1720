// Model weights placed on a backend, by role, in the layouts the forward wants:
//   - q, k, v fused into one [(Hq + 2 Hkv) Dh, D] matrix (one GEMM per attention layer);
//   - gate and up fused into one [2F, D] matrix (one GEMM per MLP), experts stacked [E, ...];
//   - A = -exp(A_log) precomputed (it is a constant of the model, not of the input);
//   - conv1d weights [C, 1, K] seen as [C, K].
// Element types (weight_dtype): the matrices that feed a GEMM or the embedding lookup (in_proj,
// x_proj, dt_proj, out_proj, q/k/v/o, gate/up/down, router, embedding, LM head) are stored in the
// backend's compute dtype — fp32 on the CPU whatever the checkpoint holds (DESIGN.md: converted
// at load), bf16 by default on CUDA, where streaming them is most of a decode step. Everything
// else stays fp32 on every backend: norm weights, biases, conv1d weights and bias, A, D,
// dt_bias. They are < 1% of the bytes, the kernels that read them compute in fp32 anyway, and
// rounding them (A = -exp(A_log) in particular, which sets the decay of every state) would cost
// accuracy for nothing. So kernels take those parameters as fp32 (cuda_kernels.h allows both).
#pragma once

#include <vector>

#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "ops/ops.h"

namespace statelm {

struct Mamba1Weights {
  Tensor in_proj, in_proj_bias, conv, conv_bias, x_proj, dt_proj, dt_proj_bias, A, D;
  Tensor dt_norm, b_norm, c_norm;  // Jamba only
  Tensor out_proj, out_proj_bias;
};

struct Mamba2Weights {
  Tensor in_proj, in_proj_bias, conv, conv_bias, dt_bias, A, D, norm, out_proj, out_proj_bias;
};

struct AttentionWeights {
  Tensor qkv, qkv_bias, o, o_bias;
};

struct MlpWeights {
  Tensor gate_up, gate_up_bias, down, down_bias;
};

struct MoeWeights {
  Tensor router, gate_up /* [E, 2F, D] */, down /* [E, D, F] */;
};

struct LayerWeights {
  Tensor mixer_norm, ffn_norm;
  Mamba1Weights mamba1;
  Mamba2Weights mamba2;
  AttentionWeights attention;
  MlpWeights mlp;
  MoeWeights moe;
};

struct ModelWeights {
  Tensor embedding, final_norm, lm_head;  // lm_head aliases embedding when tied
  std::vector<LayerWeights> layers;
  std::vector<Buffer> storage;
  size_t bytes = 0;
};

// The dtype a weight of `role` is stored in on a backend computing in `compute` (see above).
DType weight_dtype(WeightRole role, DType compute);

// Loads every tensor of `spec` from the checkpoint (already validated by open_model_files).
ModelWeights load_weights(const ModelSpec& spec, const Checkpoint& checkpoint, Backend& backend);

// When and how random_weights repeats a window: a model of more than `above_parameters` fills
// each matrix of at least 2 * `tile` elements with its first `tile` draws over and over, copied
// on the backend (element i = element i mod tile). 52e9 values generated on the host, converted
// to bf16 and sent over PCIe take minutes; the copies take milliseconds, and a benchmark's time
// does not depend on the values. Smaller models keep a fresh draw for every element.
struct RandomTiling {
  int64_t above_parameters = 8'000'000'000;
  size_t tile = size_t(1) << 22;
};

// Random weights of the right shapes (benchmarks of real model sizes without a checkpoint):
// matrices with the N(0, 1/fan_in) init's variance (uniform), norms near 1, A_log and dt_bias in
// their usual init ranges. Counter-based and multi-threaded; above 8B parameters each large
// matrix repeats one window of draws (RandomTiling): a 52B shape fills in seconds.
ModelWeights random_weights(const ModelSpec& spec, Backend& backend, uint64_t seed, const RandomTiling& tiling = {});

}  // namespace statelm
