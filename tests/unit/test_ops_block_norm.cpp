// A decode step's block norm split across the linear layers on either side (ops.h, ResidualAdd),
// on the CPU reference: the producer's matmul_residual then the consumers' matmul_row_rms and
// matmul_swiglu (dividing by the RMS) must give what add_rms_norm then the plain products give;
// and Forward's decode steps with the split (no debug hook) must give the logits of the same
// steps without it (a debug hook turns it off) for every fixture family, MoE neighbours included.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "model/forward.h"
#include "model/model_files.h"
#include "model/weights.h"
#include "runtime/kv_cache.h"
#include "runtime/state_cache.h"
#include "unit/op_test_util.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

using test::expect_close;
using test::random_vector;

Tensor host(std::vector<float>& v, std::initializer_list<int64_t> shape) {
  return Tensor::contiguous(v.data(), DType::F32, shape, Device::Cpu);
}

TEST(BlockNormSplit, EqualsAddRmsNormThenProducts) {
  std::mt19937 rng(11);
  CpuBackend cpu;
  const int64_t T = 3, K = 13, D = 10, N = 7, F = 5, G = 4;
  const float eps = 1e-6f;
  auto rnd = [&](int64_t n, float lo = -1.0f, float hi = 1.0f) { return random_vector(rng, size_t(n), lo, hi); };
  std::vector<float> a = rnd(T * K), w1 = rnd(D * K), b1 = rnd(D), h0 = rnd(T * D), g = rnd(D, 0.5f, 1.5f);
  std::vector<float> w2 = rnd(N * D), b2 = rnd(N), w3 = rnd(2 * F * D), gated = rnd(T * G, 0.1f, 2.0f);
  for (bool with_gate : {false, true}) {
    SCOPED_TRACE(with_gate ? "producer after a gated norm" : "plain producer");
    const RowRms in = with_gate ? RowRms{host(gated, {T, G}), K, 1e-5f} : RowRms{};
    // Composed: the product, add_rms_norm, the products of the normalised rows.
    std::vector<float> y(size_t(T * D)), h = h0, x(size_t(T * D)), out2(size_t(T * N)), gu(size_t(T * 2 * F)),
        out3(size_t(T * F));
    if (with_gate) cpu.matmul_row_rms(host(a, {T, K}), host(w1, {D, K}), host(b1, {D}), in, host(y, {T, D}));
    else cpu.matmul(host(a, {T, K}), host(w1, {D, K}), host(b1, {D}), host(y, {T, D}));
    cpu.add_rms_norm(host(h, {T, D}), host(y, {T, D}), host(g, {D}), eps, host(x, {T, D}));
    cpu.matmul(host(x, {T, D}), host(w2, {N, D}), host(b2, {N}), host(out2, {T, N}));
    cpu.matmul_swiglu(host(x, {T, D}), host(w3, {2 * F, D}), Tensor{}, RowRms{}, host(gu, {T, 2 * F}),
                      host(out3, {T, F}));
    // Split: the product into the residual with its squares summed, the division in the consumers.
    std::vector<float> room(size_t(T * D)), hs = h0, xs(size_t(T * D)), sums(size_t(T * 2), -7.0f),
        s2(size_t(T * N)), s3(size_t(T * F));
    const Tensor sums_t = host(sums, {T, 2}).cols(0, cpu.residual_sumsq_partials(D));
    cpu.matmul_residual(host(a, {T, K}), host(w1, {D, K}), host(b1, {D}), in,
                        {host(hs, {T, D}), sums_t, host(g, {D}), host(xs, {T, D})}, host(room, {T, D}));
    const RowRms norm{sums_t, D, eps};
    cpu.matmul_row_rms(host(xs, {T, D}), host(w2, {N, D}), host(b2, {N}), norm, host(s2, {T, N}));
    cpu.matmul_swiglu(host(xs, {T, D}), host(w3, {2 * F, D}), Tensor{}, norm, host(gu, {T, 2 * F}), host(s3, {T, F}));
    expect_close(hs, h, 1e-6, "residual");
    expect_close(s2, out2, 1e-5, "consumer");
    expect_close(s3, out3, 1e-5, "swiglu consumer");
    for (int64_t t = 0; t < T; ++t) EXPECT_EQ(sums[size_t(t * 2 + 1)], -7.0f) << "a column past the partials";
  }
}

// Decode steps of one fixture model twice from the same state: with a debug hook (which keeps
// every norm a pass of its own) and without (split wherever two linear layers meet).
class BlockNormSplitFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(BlockNormSplitFixture, DecodeStepsMatchTheUnsplitForward) {
  CpuBackend backend;
  const ModelFiles files = open_model_files(test::fixture("models/" + GetParam()).string());
  const ModelSpec& spec = files.spec;
  const ModelWeights weights = load_weights(spec, *files.checkpoint, backend);
  const int32_t n = 3, blocks = 8, block_size = 16;
  struct Caches {
    StateCache states;
    KvCache kv;
    std::vector<LayerCaches> layers;
  };
  auto make_caches = [&] {
    auto c = std::make_unique<Caches>(Caches{StateCache(spec, backend, n), KvCache(spec, backend, blocks * n, block_size), {}});
    for (size_t i = 0; i < spec.layers.size(); ++i)
      c->layers.push_back(
          LayerCaches{c->states.conv(int64_t(i)), c->states.ssm(int64_t(i)), c->kv.k(int64_t(i)), c->kv.v(int64_t(i))});
    return c;
  };
  auto split_caches = make_caches(), plain_caches = make_caches();
  Forward split(spec, weights, backend), plain(spec, weights, backend);
  plain.set_debug_hook([](int64_t, const std::string&, const Tensor&) {});
  std::mt19937 rng(5);
  auto batch = [&](const std::vector<int32_t>& lens, const std::vector<int32_t>& pos) {
    ForwardBatch b;
    b.block_size = block_size;
    b.max_blocks_per_seq = blocks;
    for (int32_t s = 0; s < n; ++s) {
      b.spans.push_back(SeqSpan{int32_t(b.tokens.size()), lens[size_t(s)], s, pos[size_t(s)]});
      for (int32_t t = 0; t < lens[size_t(s)]; ++t) b.tokens.push_back(int32_t(rng() % uint32_t(spec.vocab_size)));
      for (int32_t i = 0; i < blocks; ++i) b.block_tables.push_back(s * blocks + i);
    }
    return b;
  };
  const ForwardBatch prefill = batch({5, 9, 2}, {0, 0, 0});
  EXPECT_EQ(split.run(prefill, split_caches->layers), plain.run(prefill, plain_caches->layers));
  std::vector<int32_t> pos{5, 9, 2};
  for (int step = 0; step < 3; ++step) {
    const ForwardBatch b = batch({1, 1, 1}, pos);
    const std::vector<float> got = split.run(b, split_caches->layers), want = plain.run(b, plain_caches->layers);
    EXPECT_LT(test::relative_error(got, want), 1e-5) << "step " << step;
    for (int32_t& p : pos) ++p;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BlockNormSplitFixture,
                         ::testing::Values("mamba-tiny", "mamba-tiny-ssm", "mamba2-tiny", "mamba2-tiny-ssm",
                                           "jamba-tiny", "llama-tiny", "llama3-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

}  // namespace
}  // namespace statelm
