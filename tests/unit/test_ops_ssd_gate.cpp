// Mamba-2's gated norm split across the SSD and out_proj (ops.h, SsdGate and matmul_row_rms), on
// the CPU reference: the split must give what the composed ops give (ssd, gated_rms_norm over
// one group, matmul), for decode batches and for batches with prefill spans, and the state must
// not notice the gate. matmul_row_rms also adds partial sums spread over several columns (the
// CUDA backend's layout).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "unit/op_test_util.h"

namespace statelm {
namespace {

using test::expect_close;
using test::gather;
using test::random_vector;
using test::Wide;

struct GateCase {
  int64_t H = 3, P = 5, G = 1, N = 7, D = 11, slots = 5;
};

// Runs one batch twice from the same state: composed (ssd, gated_rms_norm, matmul) and split
// (ssd with the gate, matmul_row_rms); compares out_proj's output and the final states.
void check_split_equals_composed(const std::vector<SeqSpan>& spans, int64_t partials, uint32_t seed) {
  const GateCase c;
  const int64_t Di = c.H * c.P;
  int64_t T = 0;
  for (const SeqSpan& s : spans) T += s.len;
  std::mt19937 rng(seed);
  CpuBackend cpu;
  Wide x(rng, T, Di), B(rng, T, c.G * c.N), C(rng, T, c.G * c.N), dt(rng, T, c.H), z(rng, T, Di, -3.0f, 3.0f);
  std::vector<float> A = random_vector(rng, size_t(c.H), -1.5f, -0.2f), Dsk = random_vector(rng, size_t(c.H), -1, 1);
  std::vector<float> dt_bias = random_vector(rng, size_t(c.H), -0.5f, 0.5f);
  std::vector<float> norm_w = random_vector(rng, size_t(Di), 0.5f, 1.5f);
  std::vector<float> w = random_vector(rng, size_t(c.D * Di), -0.3f, 0.3f), bias = random_vector(rng, size_t(c.D), -1, 1);
  const std::vector<float> state0 = random_vector(rng, size_t(c.slots * c.H * c.P * c.N), -1, 1);

  auto run = [&](bool split, std::vector<float>& state, std::vector<float>& out) {
    std::vector<float> y(size_t(T * Di)), normed(size_t(T * Di)), sums(size_t(T * partials), 123.0f);
    out.assign(size_t(T * c.D), 0.0f);
    SsdParams p;
    p.x = x.full.unflatten_last(c.H, c.P);
    p.B = B.full.unflatten_last(c.G, c.N);
    p.C = C.full.unflatten_last(c.G, c.N);
    p.dt = dt.full;
    p.dt_bias = Tensor::contiguous(dt_bias.data(), DType::F32, {c.H});
    p.A = Tensor::contiguous(A.data(), DType::F32, {c.H});
    p.D = Tensor::contiguous(Dsk.data(), DType::F32, {c.H});
    p.state = Tensor::contiguous(state.data(), DType::F32, {c.slots, c.H, c.P, c.N});
    p.out = Tensor::contiguous(y.data(), DType::F32, {T, c.H, c.P});
    p.chunk_size = 4;
    const Tensor zt = z.full, wt = Tensor::contiguous(w.data(), DType::F32, {c.D, Di});
    const Tensor nw = Tensor::contiguous(norm_w.data(), DType::F32, {Di});
    const Tensor bt = Tensor::contiguous(bias.data(), DType::F32, {c.D});
    const Tensor outt = Tensor::contiguous(out.data(), DType::F32, {T, c.D});
    const Tensor yt = Tensor::contiguous(y.data(), DType::F32, {T, Di});
    const BatchView batch{T, spans};
    if (split) {
      const Tensor st = Tensor::contiguous(sums.data(), DType::F32, {T, partials});
      p.gate = {zt, nw, st};
      cpu.ssd(p, batch);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 1; j < partials; ++j) EXPECT_EQ(sums[size_t(t * partials + j)], 0.0f) << "partial " << j;
      cpu.matmul_row_rms(yt, wt, bt, {st, Di, 1e-5f}, outt);
    } else {
      cpu.ssd(p, batch);
      const Tensor nt = Tensor::contiguous(normed.data(), DType::F32, {T, Di});
      cpu.gated_rms_norm(yt, zt, nw, Di, 1e-5f, nt);
      cpu.matmul(nt, wt, bt, outt);
    }
  };
  std::vector<float> s_split = state0, s_comp = state0, o_split, o_comp;
  run(true, s_split, o_split);
  run(false, s_comp, o_comp);
  expect_close(o_split, o_comp, 1e-5, "out_proj output");
  EXPECT_EQ(s_split, s_comp) << "the gate changed the state";
}

TEST(SsdGate, DecodeBatchEqualsComposedOps) {
  check_split_equals_composed({{0, 1, 3, 4}, {1, 1, 0, 0}, {2, 1, 4, 9}}, 1, 1);
  check_split_equals_composed({{0, 1, 2, 7}}, 4, 2);  // four partial columns: the CPU fills one
}

TEST(SsdGate, PrefillSpansEqualComposedOps) {
  check_split_equals_composed({{0, 9, 1, 0}, {9, 1, 3, 5}, {10, 3, 0, 2}}, 2, 3);
}

// matmul_row_rms divides each row by sqrt(sum of its partials / n + eps) before the bias.
TEST(SsdGate, MatmulRowRmsAddsEveryPartial) {
  std::mt19937 rng(4);
  CpuBackend cpu;
  const int64_t T = 3, K = 9, N = 5, S = 4;
  std::vector<float> x = random_vector(rng, size_t(T * K), -1, 1), w = random_vector(rng, size_t(N * K), -1, 1);
  std::vector<float> b = random_vector(rng, size_t(N), -1, 1), ss = random_vector(rng, size_t(T * S), 0.1f, 2.0f);
  std::vector<float> out(size_t(T * N)), want(size_t(T * N));
  cpu.matmul_row_rms(Tensor::contiguous(x.data(), DType::F32, {T, K}), Tensor::contiguous(w.data(), DType::F32, {N, K}),
                     Tensor::contiguous(b.data(), DType::F32, {N}),
                     {Tensor::contiguous(ss.data(), DType::F32, {T, S}), 6, 0.25f},
                     Tensor::contiguous(out.data(), DType::F32, {T, N}));
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0.0;
    for (int64_t j = 0; j < S; ++j) sum += ss[size_t(t * S + j)];
    const double rms = std::sqrt(sum / 6.0 + 0.25);
    for (int64_t n = 0; n < N; ++n) {
      double dot = 0.0;
      for (int64_t k = 0; k < K; ++k) dot += double(x[size_t(t * K + k)]) * w[size_t(n * K + k)];
      want[size_t(t * N + n)] = float(dot / rms + b[size_t(n)]);
    }
  }
  expect_close(out, want, 1e-6, "matmul_row_rms");
}

}  // namespace
}  // namespace statelm
