#include "runtime/engine_bench.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "core/error.h"

namespace statelm {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = pick(rng);
  return ids;
}

// Repeats `fn` (which ends with a device->host copy, so it is complete when it returns) until
// ~0.2 s have passed, at least 3 times; returns the fastest repetition.
template <typename Fn>
double best_time(Fn&& fn) {
  fn();  // warm-up: first-touch, autotuning, lazy initialisation
  double best = 1e30, total = 0;
  for (int i = 0; i < 3 || (total < 0.2 && i < 1000); ++i) {
    const auto t0 = Clock::now();
    fn();
    const double s = seconds_since(t0);
    best = std::min(best, s);
    total += s;
  }
  return best;
}

}  // namespace

Roofline measure_roofline(Backend& backend, DType dtype, size_t copy_bytes, int64_t n) {
  Roofline r;
  float probe = 0;
  {
    const int64_t elems = int64_t(copy_bytes / sizeof(float));
    Buffer a = backend.allocate(copy_bytes), b = backend.allocate(copy_bytes);
    Tensor src = Tensor::contiguous(a.data(), DType::F32, {elems}, backend.device());
    Tensor dst = Tensor::contiguous(b.data(), DType::F32, {elems}, backend.device());
    const double s = best_time([&] {
      backend.copy(dst, src);
      backend.download(dst.rows(elems - 1, 1), &probe);
    });
    r.copy_bytes_per_s = 2.0 * double(copy_bytes) / s;
  }
  {
    const size_t bytes = size_t(n * n) * dtype_size(dtype);
    Buffer xa = backend.allocate(bytes), wa = backend.allocate(bytes), oa = backend.allocate(bytes);
    Tensor x = Tensor::contiguous(xa.data(), dtype, {n, n}, backend.device());
    Tensor w = Tensor::contiguous(wa.data(), dtype, {n, n}, backend.device());
    Tensor o = Tensor::contiguous(oa.data(), dtype, {n, n}, backend.device());
    // Non-zero inputs: some GPUs run measurably faster on zeros.
    std::vector<float> host(size_t(n * n));
    std::mt19937_64 rng(1);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (auto& v : host) v = dist(rng);
    backend.upload(x, host.data());
    backend.upload(w, host.data());
    const double s = best_time([&] {
      backend.matmul(x, w, Tensor{}, o);
      backend.download(o.rows(n - 1, 1).cols(n - 1, 1), &probe);
    });
    r.matmul_flops_per_s = 2.0 * double(n) * double(n) * double(n) / s;
    r.matmul_shape = str_cat(n, "x", n, "x", n, " ", dtype_name(dtype));
  }
  return r;
}

CostDtypes cost_dtypes(ModelRunner& runner) {
  const ModelSpec& spec = runner.spec();
  CostDtypes d;
  d.weight_bytes = double(runner.weight_bytes()) / double(std::max<int64_t>(1, parameter_count(spec)));
  d.state_bytes = double(dtype_size(runner.states().dtype()));
  // KV element size from the cache's own block size: bytes per block / (tokens * elements).
  const MemoryFigures f32 = memory_figures(spec, DType::F32, DType::F32);
  if (f32.kv_bytes_per_token > 0 && runner.kv().block_size() > 0)
    d.kv_bytes = 4.0 * double(runner.kv().bytes_per_block()) / double(runner.kv().block_size()) /
                 double(f32.kv_bytes_per_token);
  return d;
}

BenchResult bench_prefill(ModelRunner& runner, int64_t tokens, int64_t chunk, int repeats, uint64_t seed, bool warmup) {
  if (tokens < 1 || chunk < 1) fail(ErrorKind::InvalidArgument, "bench: prefill tokens and chunk must be positive");
  if (!runner.fits(tokens)) fail(ErrorKind::InvalidArgument, "bench: a prefill of ", tokens, " tokens does not fit (max context ", runner.max_context(), ")");
  std::mt19937_64 rng(seed);
  const auto ids = random_tokens(tokens, runner.spec().vocab_size, rng);
  const int64_t steps = (tokens + chunk - 1) / chunk;
  auto once = [&] {
    auto seq = runner.try_open(tokens);
    if (!seq) fail(ErrorKind::OutOfMemory, "bench: no free state slot / KV blocks for the prefill");
    Sequence* seqs[] = {&*seq};
    try {
      for (int64_t begin = 0; begin < tokens; begin += chunk) {
        std::vector<int32_t> part(ids.begin() + begin, ids.begin() + std::min(tokens, begin + chunk));
        runner.step(seqs, std::span(&part, 1));
      }
    } catch (...) {
      runner.close(*seq);
      throw;
    }
    runner.close(*seq);
  };
  if (warmup) once();
  std::vector<double> times;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto t0 = Clock::now();
    once();
    times.push_back(seconds_since(t0));
  }
  BenchResult b;
  b.kind = "prefill";
  b.context = tokens;
  b.tokens = tokens;
  b.steps = steps;
  b.seconds = median(times);
  b.cost = prefill_cost(runner.spec(), 0, tokens, steps, cost_dtypes(runner));
  return b;
}

BenchResult bench_decode(ModelRunner& runner, int64_t batch, int64_t context, int64_t steps, int repeats, uint64_t seed) {
  if (batch < 1 || steps < 1 || context < 0) fail(ErrorKind::InvalidArgument, "bench: decode batch and steps must be positive");
  const int warmup = 2;
  const int64_t reps = std::max(1, repeats);
  const int64_t horizon = context + warmup + steps * reps;
  if (!runner.fits(horizon))
    fail(ErrorKind::InvalidArgument, "bench: decode at context ", context, " (+", steps * reps + warmup,
         " tokens) does not fit (max context ", runner.max_context(), ")");
  std::vector<Sequence> seqs;
  auto close_all = [&] {
    for (auto& s : seqs) runner.close(s);
  };
  for (int64_t i = 0; i < batch; ++i) {
    auto seq = runner.try_open(horizon);
    if (!seq) {
      close_all();
      fail(ErrorKind::OutOfMemory, "bench: only ", i, " of ", batch, " sequences of ", horizon,
           " tokens fit in the state slots / KV blocks");
    }
    STATELM_CHECK(runner.fast_forward(*seq, context), "bench: fast-forward within the sequence's own blocks");
    seqs.push_back(std::move(*seq));
  }
  std::vector<Sequence*> ptrs;
  for (auto& s : seqs) ptrs.push_back(&s);
  std::mt19937_64 rng(seed);
  std::vector<double> times;
  try {
    // Every step's input drawn before any timing: the timed loop is the runner's alone.
    std::vector<std::vector<std::vector<int32_t>>> inputs(size_t(warmup + steps * reps));
    for (auto& next : inputs)
      for (int64_t i = 0; i < batch; ++i) next.push_back(random_tokens(1, runner.spec().vocab_size, rng));
    size_t at = 0;
    for (int i = 0; i < warmup; ++i) runner.step(ptrs, inputs[at++]);
    for (int64_t r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < steps; ++i) runner.step(ptrs, inputs[at++]);
      times.push_back(seconds_since(t0));
    }
  } catch (...) {
    close_all();
    throw;
  }
  close_all();
  BenchResult b;
  b.kind = "decode";
  b.batch = batch;
  b.context = context;
  b.tokens = batch * steps;
  b.steps = steps;
  b.seconds = median(times);
  const StepCost per_step = decode_cost(runner.spec(), batch, context + steps / 2, cost_dtypes(runner));
  b.cost.flops = per_step.flops * double(steps);
  b.cost.weight_bytes = per_step.weight_bytes * double(steps);
  b.cost.state_bytes = per_step.state_bytes * double(steps);
  b.cost.kv_bytes = per_step.kv_bytes * double(steps);
  return b;
}

}  // namespace statelm
