// The harness of statelm_cuda_kernel_bench: device tensors with random contents, the timing
// loop, and the case type. The cases themselves (shapes, bytes and FLOP formulas) are in
// kernel_cases_ssm.cpp and kernel_cases_dense.cpp; the program (flags, table, JSON) in
// kernel_bench_main.cpp.
//
// Timing. CudaBackend queues all work on its own non-blocking stream and does not expose it, so
// a case is timed on the host clock: `inner` back-to-back calls, then backend.synchronize(), and
// the elapsed time divided by `inner`; `inner` is chosen so that one repetition lasts at least
// --min-rep-ms (default 5 ms), which amortises the synchronisation (~10 µs) to under 1%. The
// figure is the median of the repetitions after a warm-up call. For an op shorter than the host
// needs to launch it (a decode step at batch 1: a few µs) this is the launch rate, not the GPU
// time, whereas the peer's state-update figures are CUDA-graph replays (no launch cost): those
// rows would understate statelm's kernel. So decode-sized ops are timed a second way too: as
// replays of one CUDA graph of many calls, recorded with the backend's graph API
// (Backend::begin_graph; what ModelRunner replays for decode steps), which takes the launches
// out as the peer's graphs do; that figure is then the case's time and the eager one is kept
// beside it ("eager_ms"). A capture that fails (an op that waits for the host) leaves the eager
// figure, with a note.
//
// L2. The H200's L2 holds about 50 MB: a decode-sized input read again by the next repetition
// would come from L2, which a real model (64 layers, each with its own state and weights) never
// sees. Cases whose read-only or per-sequence data is small rotate over several copies of it
// (rotation_count), as the peer's state-update benchmark does.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "core/tensor.h"

namespace statelm::bench {

// Device memory and a contiguous view of it.
struct DevTensor {
  Buffer buffer;
  Tensor t;
};

// Spans (and KV block tables) of one case; they must outlive its calls. Bench::prepare copies
// them to the device once, so the timed calls carry no host-to-device copy.
struct Batch {
  std::vector<SeqSpan> spans;
  std::vector<int32_t> block_tables;  // spans.size() x max_blocks_per_seq, or empty
  int32_t max_blocks_per_seq = 0, block_size = 0;
  BatchView view;
};

struct Options {
  double min_rep_s = 5e-3;    // one repetition lasts at least this long
  int reps = 10;              // repetitions (fewer when a case would exceed case_budget_s)
  double case_budget_s = 2.0; // timed seconds per case, roughly
  int32_t kv_block_size = 16; // the runner's default (RunnerOptions::kv_block_size)
  bool graphs = true;         // time decode-sized ops as graph replays too (time_graphed)
};

struct Timing {
  double median_s = 0, min_s = 0;
  int reps = 0, inner = 0;
};

// What a case measured, beyond the time: bytes and FLOPs it decided at run time (MoE: the
// experts the router actually picked), and notes.
struct Measured {
  Timing timing;
  std::string method = "eager";   // or "graph": timing is per call of a replayed graph
  Timing eager;                   // with method "graph": the eager figure beside it
  int graph_calls = 0;            // calls recorded in the graph
  double bytes = -1, flops = -1;  // < 0: the case's own formula
  std::string note;
};

class Bench {
 public:
  Bench(CudaBackend& backend, Options options, uint64_t seed) : backend_(backend), options_(options), rng_(seed) {}
  CudaBackend& backend() { return backend_; }
  const Options& options() const { return options_; }
  std::mt19937_64& rng() { return rng_; }

  // Zero-filled device tensor of `shape`.
  DevTensor zeros(DType dtype, std::initializer_list<int64_t> shape);
  // Uniform in [lo, hi). Large tensors get one random block of 4M elements repeated (device
  // copies): contents do not change a kernel's speed, and filling 5 GB of MoE weights from the
  // host would take longer than the benchmark.
  DevTensor uniform(DType dtype, std::initializer_list<int64_t> shape, float lo, float hi);
  // Fills an existing contiguous tensor the same way.
  void fill_uniform(const Tensor& t, float lo, float hi);
  // Uploads host values (converted to t.dtype); t contiguous.
  void upload(const Tensor& t, const std::vector<float>& values);

  // Fills batch.view from the spans and tables and copies them to the device.
  void prepare(Batch& batch);

  // Times fn(i), i = 0, 1, 2, ... (see the file comment). fn must only queue work.
  Timing time(const std::function<void(int)>& fn, const char* what);
  // Decode-sized ops: time() and then graph replays (the file comment). The graph's calls read
  // their spans from the graph's own input region: batch is prepared again while recording.
  Measured time_graphed(const std::function<void(int)>& fn, Batch& batch, const char* what);

 private:
  CudaBackend& backend_;
  Options options_;
  std::mt19937_64 rng_;
};

// Copies of `bytes` each that make at least ~400 MB in all (2..64), as the peer's state-update
// benchmark rotates its states, so repeated calls read from HBM and not from L2.
int rotation_count(double bytes);

// "a; b" (either may be empty).
inline std::string join_note(const std::string& a, const std::string& b) {
  return a.empty() ? b : b.empty() ? a : a + "; " + b;
}

struct Case {
  Case(std::string family_, std::string name_, std::string shape_, std::map<std::string, int64_t> params_,
       std::string tag_ = "")
      : family(std::move(family_)), name(std::move(name_)), shape(std::move(shape_)), params(std::move(params_)),
        tag(std::move(tag_)) {}
  std::string family;  // ssd_prefill, ssd_decode, mamba1_prefill, ... (--filter matches it too)
  std::string name;    // "SSD chunk scan (1 layer)"
  std::string shape;   // the peer script's shape string where it has the case: "b1 L=4096 h80 p64 n128 cs256"
  std::map<std::string, int64_t> params;  // the numbers of the shape, for the merge step
  std::string tag;     // e.g. "state float32": distinguishes cases of one shape
  double bytes = 0;    // the minimum bytes the op must move (formula beside the case)
  double flops = 0;    // the FLOPs it must do
  std::function<Measured(Bench&)> run;
};

// The cases, in the order they run: the SSM families (kernel_cases_ssm.cpp), then attention
// decode, MoE, GEMMs and attention prefill (kernel_cases_dense.cpp).
std::vector<Case> ssm_cases();
std::vector<Case> dense_cases();

}  // namespace statelm::bench
