// CPU benchmarks (Google Benchmark): each op and the end-to-end paths on the mamba2-130m shape
// with random weights, beside the machine's own limits measured in the same run:
//   - memory bandwidth: a multi-threaded copy (bytes read + written per second);
//   - OpenBLAS sgemm GFLOP/s at the prefill GEMM shapes.
// Counters: bytes moved or FLOPs done per iteration, as rates, so the table says how close each
// case is to the limit. Usage: build/bench/statelm_bench_cpu [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "runtime/model_runner.h"

namespace statelm {
namespace {

const std::string kConfig = std::string(STATELM_SOURCE_DIR) + "/bench/configs/mamba2-130m.json";

std::vector<float> random_vector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// The roofline for decode: how fast this machine streams memory with all cores.
void BM_MemoryCopyBandwidth(benchmark::State& state) {
  const size_t bytes = size_t(1) << 29;  // 512 MiB each way, far beyond the caches
  Buffer a = host_buffer(bytes), b = host_buffer(bytes);
  std::memset(a.data(), 1, bytes);
  for (auto _ : state) {
#pragma omp parallel
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      const size_t chunk = bytes / size_t(n);
      std::memcpy(static_cast<char*>(b.data()) + chunk * size_t(t), static_cast<char*>(a.data()) + chunk * size_t(t), chunk);
    }
    benchmark::ClobberMemory();
  }
  state.counters["bytes/s"] = benchmark::Counter(double(2 * bytes), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MemoryCopyBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);

// Decode only reads weights: the read-only streaming rate is its real ceiling.
void BM_MemoryReadBandwidth(benchmark::State& state) {
  const size_t n = size_t(1) << 27;  // 512 MiB of floats
  Buffer a = host_buffer(n * sizeof(float));
  float* p = static_cast<float*>(a.data());
  for (size_t i = 0; i < n; ++i) p[i] = 1.0f;
  typedef float vec __attribute__((vector_size(64)));
  for (auto _ : state) {
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      const size_t per = n / size_t(omp_get_num_threads()), begin = per * size_t(omp_get_thread_num());
      vec acc[4] = {};  // four independent chains: the loads, not the adds, must be the limit
      for (size_t i = begin; i + 64 <= begin + per; i += 64)
        for (int a = 0; a < 4; ++a) {
          vec v;
          __builtin_memcpy(&v, p + i + 16 * a, sizeof v);
          acc[a] += v;
        }
      for (int a = 0; a < 4; ++a)
        for (int l = 0; l < 16; ++l) total += acc[a][l];
    }
    benchmark::DoNotOptimize(total);
  }
  state.counters["bytes/s"] = benchmark::Counter(double(n * sizeof(float)), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MemoryReadBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);

// matmul x[T, K] w[N, K]^T at the model's in_proj shape (K = 768, N = 3352), or with
// range(1) = 1 at the LM head's (N = 50280: 154 MB of weights, streamed from DRAM).
void matmul_case(benchmark::State& state, bool openblas) {
  const int64_t t = state.range(0), k = 768, n = state.range(1) ? 50280 : 2 * 1536 + 2 * 128 + 24;
  auto x = random_vector(size_t(t * k), 1), w = random_vector(size_t(n * k), 2), out = std::vector<float>(size_t(t * n));
  CpuBackend cpu;
  Tensor X = Tensor::contiguous(x.data(), DType::F32, {t, k}), W = Tensor::contiguous(w.data(), DType::F32, {n, k}),
         O = Tensor::contiguous(out.data(), DType::F32, {t, n});
  for (auto _ : state) {
    if (openblas)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(t), int(n), int(k), 1.0f, x.data(), int(k), w.data(), int(k),
                  0.0f, out.data(), int(n));
    else
      cpu.matmul(X, W, Tensor{}, O);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(double(2 * t * n * k), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_bytes/s"] = benchmark::Counter(double(n * k * 4), benchmark::Counter::kIsIterationInvariantRate);
}
void BM_Matmul_statelm(benchmark::State& s) { matmul_case(s, false); }
void BM_Matmul_OpenBLAS(benchmark::State& s) { matmul_case(s, true); }
BENCHMARK(BM_Matmul_statelm)->ArgsProduct({{1, 4, 64, 512}, {0}})->Args({1, 1})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Matmul_OpenBLAS)->ArgsProduct({{1, 4, 64, 512}, {0}})->Args({1, 1})->Unit(benchmark::kMicrosecond)->UseRealTime();

// SSD over one span of L tokens (prefill, chunked) or a batch of decode steps, one layer.
void BM_SsdPrefill(benchmark::State& state) {
  const int64_t L = state.range(0), H = 24, P = 64, N = 128;
  auto x = random_vector(size_t(L * H * P), 1), dt = random_vector(size_t(L * H), 2, 0.5f),
       B = random_vector(size_t(L * N), 3), C = random_vector(size_t(L * N), 4), y = std::vector<float>(size_t(L * H * P));
  auto A = std::vector<float>(size_t(H), -1.0f), D = std::vector<float>(size_t(H), 1.0f), bias = std::vector<float>(size_t(H), -2.0f);
  std::vector<float> S(size_t(H * P * N));
  CpuBackend cpu;
  SsdParams p;
  p.x = Tensor::contiguous(x.data(), DType::F32, {L, H, P});
  p.dt = Tensor::contiguous(dt.data(), DType::F32, {L, H});
  p.dt_bias = Tensor::contiguous(bias.data(), DType::F32, {H});
  p.A = Tensor::contiguous(A.data(), DType::F32, {H});
  p.B = Tensor::contiguous(B.data(), DType::F32, {L, 1, N});
  p.C = Tensor::contiguous(C.data(), DType::F32, {L, 1, N});
  p.D = Tensor::contiguous(D.data(), DType::F32, {H});
  p.state = Tensor::contiguous(S.data(), DType::F32, {1, H, P, N});
  p.out = Tensor::contiguous(y.data(), DType::F32, {L, H, P});
  p.chunk_size = 256;
  SeqSpan span{0, int32_t(L), 0, 0};
  BatchView b;
  b.n_tokens = L;
  b.spans = std::span(&span, 1);
  for (auto _ : state) {
    std::fill(S.begin(), S.end(), 0.0f);
    cpu.ssd(p, b);
  }
  // Chunked SSD: per chunk of Q tokens, C Bᵀ (Q²N), masked (.)·X (Q²HP), chunk states (QNHP x2).
  const double q = 256, chunks = double(L) / q;
  const double flops = chunks * (2 * q * q * N + 2 * q * q * H * P + 4 * q * N * H * P);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tok/s"] = benchmark::Counter(double(L), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_SsdPrefill)->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

struct Model130m {
  CpuBackend backend;
  std::unique_ptr<ModelRunner> runner;
  Model130m() {
    RunnerOptions o;
    o.random_weights = true;
    o.max_sequences = 1;
    runner = std::make_unique<ModelRunner>(kConfig, backend, o);
  }
};
Model130m& model() {
  static Model130m m;
  return m;
}

// End to end: prefill of L tokens (one forward over the span, logits of the last token).
void BM_Prefill_Mamba2_130m(benchmark::State& state) {
  ModelRunner& r = *model().runner;
  std::vector<int32_t> ids(size_t(state.range(0)));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919) % 50000);
  for (auto _ : state) {
    Sequence s = r.open();
    Sequence* p[] = {&s};
    benchmark::DoNotOptimize(r.step(p, std::span(&ids, 1)));
    r.close(s);
  }
  const double flops_per_token = 2.0 * double(parameter_count(r.spec()));
  state.counters["tok/s"] = benchmark::Counter(double(ids.size()), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops_per_token * double(ids.size()), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Prefill_Mamba2_130m)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// End to end: one decode step (batch 1): streams every weight once plus the state.
void BM_Decode_Mamba2_130m(benchmark::State& state) {
  ModelRunner& r = *model().runner;
  Sequence s = r.open();
  Sequence* p[] = {&s};
  std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8};
  r.step(p, std::span(&prompt, 1));
  std::vector<int32_t> next = {42};
  for (auto _ : state) benchmark::DoNotOptimize(r.step(p, std::span(&next, 1)));
  r.close(s);
  const double bytes = double(r.weight_bytes()) + 2.0 * double(memory_figures(r.spec(), DType::F32, DType::F32).state_bytes());
  state.counters["tok/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Decode_Mamba2_130m)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace
}  // namespace statelm

BENCHMARK_MAIN();
