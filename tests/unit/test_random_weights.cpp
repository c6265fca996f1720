// random_weights: the same values whatever the thread count, and the tiling that lets a 52B
// shape fill in seconds (a window of draws repeated by backend copies) leaves the window's
// draws as they were and repeats them exactly, in fused and stacked weights alike.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_backend.h"
#include "model/model_files.h"
#include "model/weights.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

std::vector<float> values(const Tensor& t) {
  const float* p = t.f32();
  return std::vector<float>(p, p + t.numel());
}

TEST(RandomWeights, TilingRepeatsTheWindowOfFreshDraws) {
  for (const char* model : {"mamba2-tiny", "jamba-tiny"}) {
    const ModelSpec spec = open_model_files(test::fixture(std::string("models/") + model).string(), false).spec;
    CpuBackend cpu;
    const size_t tile = 96;
    const ModelWeights fresh = random_weights(spec, cpu, 7);
    const ModelWeights tiled = random_weights(spec, cpu, 7, RandomTiling{0, tile});
    const ModelWeights kept = random_weights(spec, cpu, 7, RandomTiling{parameter_count(spec), tile});
    int checked = 0;
    // `part`: elements of one checkpoint tensor inside the weight (a stacked expert), 0: all.
    auto compare = [&](const Tensor& f, const Tensor& t, const Tensor& k, const std::string& what, size_t part = 0) {
      if (!f.defined()) return;
      const auto fv = values(f), tv = values(t), kv = values(k);
      EXPECT_EQ(fv, kv) << what << ": a model not above the threshold is not tiled";
      if (part == 0) part = fv.size();
      if (part < 2 * tile) {
        EXPECT_EQ(fv, tv) << what << ": too small to tile";
        return;
      }
      ++checked;
      for (size_t p0 = 0; p0 < tv.size(); p0 += part) {
        for (size_t i = 0; i < part; ++i) ASSERT_EQ(tv[p0 + i], tv[p0 + i % tile]) << what << " element " << p0 + i;
        EXPECT_EQ(std::vector<float>(fv.begin() + p0, fv.begin() + p0 + tile),
                  std::vector<float>(tv.begin() + p0, tv.begin() + p0 + tile))
            << what << ": the window holds the untiled draws";
      }
      EXPECT_NE(fv, tv) << what;
    };
    compare(fresh.embedding, tiled.embedding, kept.embedding, "embedding");
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      const auto &f = fresh.layers[l], &t = tiled.layers[l], &k = kept.layers[l];
      compare(f.mamba2.in_proj, t.mamba2.in_proj, k.mamba2.in_proj, "mamba2 in_proj");
      compare(f.mamba1.in_proj, t.mamba1.in_proj, k.mamba1.in_proj, "mamba1 in_proj");
      compare(f.mamba1.A, t.mamba1.A, k.mamba1.A, "mamba1 A (fp32, transformed)");
      if (const auto* moe = std::get_if<MoeDims>(&spec.layers[l].ffn))
        compare(f.moe.down, t.moe.down, k.moe.down, "moe down (stacked experts)", size_t(spec.d_model * moe->d_ff));
    }
    EXPECT_GT(checked, 0) << model;
  }
}

}  // namespace
}  // namespace statelm
