// Device tensors with random contents and the timing loop of statelm_cuda_kernel_bench
// (kernel_bench.h says how and why it times this way).
#include <algorithm>
#include <chrono>
#include <cmath>

#include "bench/cuda/kernel_bench.h"
#include "core/error.h"

namespace statelm::bench {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
constexpr int64_t kFillBlock = int64_t(1) << 22;  // elements uploaded from the host per random block
}  // namespace

DevTensor Bench::zeros(DType dtype, std::initializer_list<int64_t> shape) {
  DevTensor d;
  d.t = Tensor::contiguous(nullptr, dtype, shape, Device::Cuda);
  d.buffer = backend_.allocate(std::max<size_t>(d.t.nbytes(), 1));
  d.t.data = d.buffer.data();
  return d;
}

DevTensor Bench::uniform(DType dtype, std::initializer_list<int64_t> shape, float lo, float hi) {
  DevTensor d = zeros(dtype, shape);
  fill_uniform(d.t, lo, hi);
  return d;
}

void Bench::upload(const Tensor& t, const std::vector<float>& values) {
  STATELM_CHECK(int64_t(values.size()) == t.numel(), "bench upload: ", values.size(), " values for ", t.describe());
  backend_.upload(t, values.data());
}

void Bench::fill_uniform(const Tensor& t, float lo, float hi) {
  const int64_t n = t.numel();
  if (n == 0) return;
  Tensor flat = Tensor::contiguous(t.data, t.dtype, {n}, Device::Cuda);
  const int64_t block = std::min(n, kFillBlock);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> host(static_cast<size_t>(block));
  for (float& v : host) v = dist(rng_);
  backend_.upload(flat.rows(0, block), host.data());
  for (int64_t at = block; at < n; at += block) {
    const int64_t len = std::min(block, n - at);
    backend_.copy(flat.rows(at, len), flat.rows(0, len));
  }
}

void Bench::prepare(Batch& batch) {
  BatchView& v = batch.view;
  v = BatchView{};
  for (const SeqSpan& s : batch.spans) v.n_tokens += s.len;
  v.spans = batch.spans;
  if (!batch.block_tables.empty()) {
    v.block_tables = batch.block_tables.data();
    v.max_blocks_per_seq = batch.max_blocks_per_seq;
    v.block_size = batch.block_size;
  }
  backend_.prepare_batch(v);
}

Timing Bench::time(const std::function<void(int)>& fn, const char* what) {
  int call = 0;
  fn(call++);  // warm-up: lazy initialisation, cuBLASLt's algorithm choice, first touch
  backend_.synchronize(what);
  auto t0 = Clock::now();
  fn(call++);
  backend_.synchronize(what);
  const double one = std::max(seconds_since(t0), 1e-7);
  Timing t;
  t.inner = int(std::clamp(std::ceil(options_.min_rep_s / one), 1.0, 100000.0));
  const double rep_s = one * t.inner;
  t.reps = int(std::clamp(std::floor(options_.case_budget_s / rep_s), 1.0, double(options_.reps)));
  std::vector<double> times;
  if (t.inner == 1) times.push_back(one);  // a slow call: the calibration call is a sample too
  while (int(times.size()) < t.reps) {
    t0 = Clock::now();
    for (int i = 0; i < t.inner; ++i) fn(call++);
    backend_.synchronize(what);
    times.push_back(seconds_since(t0) / t.inner);
  }
  std::sort(times.begin(), times.end());
  t.reps = int(times.size());
  t.median_s = times[times.size() / 2];
  t.min_s = times.front();
  return t;
}

Measured Bench::time_graphed(const std::function<void(int)>& fn, Batch& batch, const char* what) {
  Measured m;
  m.timing = m.eager = time(fn, what);
  if (!options_.graphs) return m;
  // Calls per graph: at least ~1 ms of work per replay, so the replay's own cost (one launch and
  // a small input copy, which waits for the previous replay's copy) stays a few percent.
  const int calls = int(std::clamp(std::ceil(1e-3 / std::max(m.eager.median_s, 1e-7)), 16.0, 1024.0));
  backend_.begin_graph(0, batch.spans.size(), batch.block_tables.size());
  try {
    prepare(batch);
    for (int i = 0; i < calls; ++i) fn(i);
  } catch (const std::exception& e) {
    backend_.abort_graph();
    m.note = str_cat("graph capture failed (", e.what(), "): eager time");
    return m;
  }
  const int graph = backend_.end_graph();
  if (graph < 0) {
    m.note = "graph capture failed: eager time";
    return m;
  }
  const Timing t = time([&](int) { backend_.replay_graph(graph, {}, batch.spans, batch.block_tables); }, what);
  backend_.drop_graphs();
  m.timing = t;
  m.timing.median_s /= calls;
  m.timing.min_s /= calls;
  m.method = "graph";
  m.graph_calls = calls;
  return m;
}

int rotation_count(double bytes) {
  return int(std::clamp(std::ceil(400e6 / std::max(bytes, 1.0)), 2.0, 64.0));
}

}  // namespace statelm::bench
