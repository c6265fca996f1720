// The CUDA backend against the CPU backend (the reference), op by op and model by model.
//
// Op tests: one harness (OpCase) for every op. A case declares its arguments — activations
// (column slices of wider matrices, as the forward lays them out), weight matrices, fp32
// parameters, recurrent state, KV cache — with random contents; run_on() builds them on a
// backend, runs the op there and reads every argument back. The same op runs on the CPU (fp32)
// and on CUDA (fp32, then bf16 activations and weights), and every argument is compared: the
// outputs and updated states within a tolerance, and the slack columns around each slice
// exactly (a kernel that writes past its row shows up there). For bf16 the CPU gets the inputs
// rounded to bf16 first, so the comparison measures the kernels' arithmetic, not the rounding of
// the inputs. The stateful ops get mixed spans (lengths 1, 7, 63, 65, 300) in shuffled token and
// slot order, half of them continuing a random non-zero state at pos > 0, and run with the state
// in fp32, bf16 and fp16 (RunnerOptions::state_dtype) against the CPU with the same state dtype.
//
// Tolerances (max |cuda − cpu| over max |cpu|, per argument):
//   fp32: 1e-4. Both sides compute in fp32; sums run in different orders (warp trees, cuBLASLt's
//         tiles vs the CPU's lanes), which moves results by a few ulp per term: ~1e-6 observed
//         on these sizes, 1e-4 leaves room for long recurrences (300-token scans).
//   bf16: 1e-2. Each output is rounded to bf16 once (relative error ≤ 2⁻⁹ ≈ 2e-3 of its own
//         value), and a few ops round an intermediate the CPU keeps in fp32 (add_rms_norm's
//         residual, SwiGLU inside the MoE): ≤ 3 roundings ≈ 6e-3. An indexing bug gives O(1).
//   A narrow state (bf16, fp16) starts from the same bits on both backends and is rounded once
//   when a span ends: the values before that rounding differ by the activation tolerance, and
//   the two roundings add at most one ulp of the element, ≤ 2⁻⁷ (bf16) or 2⁻¹⁰ (fp16) of its
//   value (state_ulp). The outputs see the old state only, widened exactly, and keep the
//   activation tolerance.
//
// Ops whose kernel family is not built yet (the family's .cu is missing) report Unsupported:
// those tests skip with that message. Every test skips when no CUDA device is visible (CI).
//
// Model tests: every fixture of tests/fixtures/models on CUDA against transformers' logits
// (fp32 1e-4 like the CPU; bf16 see kBf16ModelTol), greedy tokens against the CPU where the
// CPU's top-2 margin leaves no doubt, prefill+decode = one forward, and a snapshot taken on CUDA
// restored on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/device_info.h"
#include "core/error.h"
#include "runtime/model_runner.h"
#include "runtime/perplexity.h"
#include "runtime/snapshot.h"
#include "tokenizer/tokenizer.h"
#include "unit/op_test_util.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

constexpr double kF32Tol = 1e-4;
constexpr double kBf16Tol = 1e-2;

// One ulp of a state element over its value, at most: what rounding it on two backends from
// values a hair apart can add (see the file comment).
double state_ulp(DType state) {
  return state == DType::BF16 ? std::ldexp(1.0, -7) : state == DType::F16 ? std::ldexp(1.0, -10) : 0.0;
}

bool have_gpu() {
  static const bool yes = !cuda::list_devices().empty();
  return yes;
}

#define REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible"

// Runs `body`; an Unsupported error from a kernel family that is not built yet skips the test.
#define SKIP_IF_FAMILY_MISSING(...)                                                    \
  try {                                                                                \
    __VA_ARGS__;                                                                       \
  } catch (const Error& e) {                                                           \
    if (e.kind() == ErrorKind::Unsupported &&                                          \
        std::string(e.what()).find("no CUDA kernels") != std::string::npos)           \
      GTEST_SKIP() << e.what();                                                        \
    throw;                                                                             \
  }

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// ---------------------------------------------------------------------------------------------
// The harness.

enum class Kind {
  Act,     // activation: compute dtype, a column slice of a wider matrix
  ActIn,   // an input activation the op may leave in any state (attention's q, k under a rope):
           // an Act whose slice is not compared afterwards (its slack columns still are)
  ActF32,  // an activation that is fp32 on every backend (e.g. logits)
  Weight,  // weight matrix: compute dtype, contiguous
  Param,   // per-channel parameter: fp32, contiguous
  State,   // recurrent state: the comparison's state dtype (fp32, bf16 or fp16), contiguous
  Cache,   // KV cache: compute dtype (as KvCache keeps it), contiguous
  Scratch, // fp32, contiguous, laid out as each backend chooses (SsdGate's partial sums): not compared
};

struct Arg {
  std::string name;
  Kind kind;
  std::vector<int64_t> shape;
  int64_t row_len = 0, col0 = 0;  // slices: the wider row and where the slice starts
  std::vector<float> data;        // the whole buffer (slack columns included)
  int64_t rows() const { return shape[0]; }
  int64_t inner() const {
    int64_t n = 1;
    for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
    return n;
  }
  bool sliced() const { return kind == Kind::Act || kind == Kind::ActIn || kind == Kind::ActF32; }
  bool in_compute_dtype() const {
    return kind == Kind::Act || kind == Kind::ActIn || kind == Kind::Weight || kind == Kind::Cache;
  }
};

using OpFn = std::function<void(Backend&, const std::vector<Tensor>&, BatchView&)>;

class OpCase {
 public:
  OpCase(std::string name, uint32_t seed) : name_(std::move(name)), rng_(seed) {}

  // Activation [rows, ...] as columns [2, 2 + inner) of a [rows, inner + 5] matrix.
  int act(const std::string& n, std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f, Kind k = Kind::Act) {
    Arg a{n, k, std::move(shape), 0, 0, {}};
    a.col0 = 2;
    a.row_len = a.inner() + 5;
    a.data = random(size_t(a.rows() * a.row_len), lo, hi);
    return push(std::move(a));
  }
  // The same with rows that start on 16 bytes in either dtype, as the decode kernels' fast paths
  // need: columns [8, 8 + inner) of rows of a multiple of 8 elements, at least 8 slack after.
  int aligned_act(const std::string& n, std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f,
                  Kind k = Kind::Act) {
    const int i = act(n, std::move(shape), lo, hi, k);
    Arg& a = args_[size_t(i)];
    a.col0 = 8;
    a.row_len = (a.inner() + 16 + 7) / 8 * 8;
    a.data = random(size_t(a.rows() * a.row_len), lo, hi);
    return i;
  }
  // aligned_act or act.
  int act_aligned_if(bool aligned, const std::string& n, std::vector<int64_t> shape, float lo = -1.0f,
                     float hi = 1.0f) {
    return aligned ? aligned_act(n, std::move(shape), lo, hi) : act(n, std::move(shape), lo, hi);
  }
  int dense(const std::string& n, Kind k, std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f) {
    Arg a{n, k, std::move(shape), 0, 0, {}};
    a.row_len = a.inner();
    a.data = random(size_t(a.rows() * a.row_len), lo, hi);
    return push(std::move(a));
  }
  std::vector<float>& data(int i) { return args_[size_t(i)].data; }
  const Arg& arg(int i) const { return args_[size_t(i)]; }
  std::mt19937& rng() { return rng_; }

  // Builds the arguments on `b` (activations and weights in `dtype`, states in `state_dtype`),
  // runs `fn`, returns every argument's whole buffer as fp32. `round_inputs`: round activations
  // and weights to bf16 first (the reference run of a bf16 comparison).
  std::vector<std::vector<float>> run_on(Backend& b, DType dtype, DType state_dtype, bool round_inputs, const OpFn& fn,
                                         BatchView batch) {
    std::vector<Buffer> storage;
    std::vector<Tensor> ts;
    for (const Arg& a : args_) {
      const bool compute = a.in_compute_dtype();
      const DType t = dtype_of(a, dtype, state_dtype);
      Tensor full = Tensor::contiguous(nullptr, t, {a.rows(), a.row_len}, b.device());
      storage.push_back(b.allocate(full.nbytes()));
      full.data = storage.back().data();
      std::vector<float> init = a.data;
      if (round_inputs && compute)
        for (float& v : init) v = round_bf16(v);
      b.upload(full, init.data());
      Tensor v = full;
      if (a.sliced()) v = full.cols(a.col0, a.inner());
      if (a.shape.size() == 3 && a.sliced()) v = v.unflatten_last(a.shape[1], a.shape[2]);
      if (!a.sliced()) {
        Tensor c = Tensor::contiguous(full.data, t, {1}, b.device());
        c.ndim = int(a.shape.size());
        int64_t s = 1;
        for (int k = c.ndim - 1; k >= 0; --k) {
          c.shape[k] = a.shape[size_t(k)];
          c.stride[k] = s;
          s *= a.shape[size_t(k)];
        }
        v = c;
      }
      ts.push_back(v);
    }
    b.prepare_batch(batch);
    fn(b, ts, batch);
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < args_.size(); ++i) {
      const Arg& a = args_[i];
      const DType t = dtype_of(a, dtype, state_dtype);
      Tensor full = Tensor::contiguous(storage[i].data(), t, {a.rows(), a.row_len}, b.device());
      out.emplace_back(size_t(a.rows() * a.row_len));
      b.download(full, out.back().data());
    }
    return out;
  }

  // Runs `fn` on the CPU and on CUDA in `dtype`, both with the state in `state_dtype`, and
  // compares every argument (see the file comment).
  void compare(const OpFn& fn, DType dtype, const BatchView& batch = {}, DType state_dtype = DType::F32) {
    SCOPED_TRACE(name_ + (dtype == DType::BF16 ? " bf16" : " fp32") + " state " + std::string(dtype_name(state_dtype)));
    CpuBackend cpu;
    CudaBackendOptions o;
    o.dtype = dtype;
    CudaBackend gpu(o);
    const bool bf16 = dtype == DType::BF16;
    const auto want = run_on(cpu, DType::F32, state_dtype, bf16, fn, batch);
    const auto got = run_on(gpu, dtype, state_dtype, false, fn, batch);
    const double act_tol = bf16 ? kBf16Tol : kF32Tol, state_tol = act_tol + state_ulp(state_dtype);
    for (size_t i = 0; i < args_.size(); ++i) {
      const Arg& a = args_[i];
      if (a.kind == Kind::Scratch) continue;
      const double tol = a.kind == Kind::State ? state_tol : act_tol;
      std::vector<float> w_in, g_in, w_slack, g_slack;
      for (int64_t r = 0; r < a.rows(); ++r)
        for (int64_t c = 0; c < a.row_len; ++c) {
          const size_t at = size_t(r * a.row_len + c);
          const bool inside = !a.sliced() || (c >= a.col0 && c < a.col0 + a.inner());
          (inside ? w_in : w_slack).push_back(want[i][at]);
          (inside ? g_in : g_slack).push_back(got[i][at]);
        }
      if (a.kind != Kind::ActIn) test::expect_close(g_in, w_in, tol, a.name);
      EXPECT_EQ(g_slack, w_slack) << a.name << ": values beside the slice changed";
    }
  }

 private:
  static DType dtype_of(const Arg& a, DType dtype, DType state_dtype) {
    if (a.kind == Kind::State) return state_dtype;
    const bool compute = a.in_compute_dtype();
    return compute ? dtype : DType::F32;
  }
  std::vector<float> random(size_t n, float lo, float hi) { return test::random_vector(rng_, n, lo, hi); }
  int push(Arg a) {
    args_.push_back(std::move(a));
    return int(args_.size()) - 1;
  }
  std::string name_;
  std::mt19937 rng_;
  std::vector<Arg> args_;
};

// Both dtypes, each on a fresh case built by `make` (same seed: same inputs).
void compare_both(const std::function<std::pair<OpCase, OpFn>()>& make, const BatchView& batch = {}) {
  for (DType dt : {DType::F32, DType::BF16}) {
    auto [c, fn] = make();
    c.compare(fn, dt, batch);
  }
}

// The stateful ops: both activation dtypes × every state dtype (fp32, bf16, fp16).
void compare_state_dtypes(const std::function<std::pair<OpCase, OpFn>()>& make, const BatchView& batch) {
  for (DType dt : {DType::F32, DType::BF16})
    for (DType st : {DType::F32, DType::BF16, DType::F16}) {
      auto [c, fn] = make();
      c.compare(fn, dt, batch, st);
    }
}

// Spans of the given (len, pos); slots shuffled among n_slots, tokens placed in shuffled order.
struct LenPos {
  int32_t len, pos;
};
std::vector<SeqSpan> mixed_spans(std::mt19937& rng, const std::vector<LenPos>& seqs, int32_t n_slots) {
  std::vector<int32_t> slots(static_cast<size_t>(n_slots)), order(seqs.size());
  std::iota(slots.begin(), slots.end(), 0);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<SeqSpan> spans(seqs.size());
  int32_t start = 0;
  for (int32_t i : order) {
    spans[size_t(i)] = SeqSpan{start, seqs[size_t(i)].len, slots[size_t(i)], seqs[size_t(i)].pos};
    start += seqs[size_t(i)].len;
  }
  return spans;
}
int64_t tokens_of(const std::vector<SeqSpan>& spans) {
  int64_t n = 0;
  for (const SeqSpan& s : spans) n += s.len;
  return n;
}
// The mixed lengths of the brief, half continuing (pos > 0).
const std::vector<LenPos> kMixed = {{1, 0}, {7, 12}, {63, 0}, {65, 40}, {300, 0}, {1, 77}};

// ---------------------------------------------------------------------------------------------
// Embedding, norms, element-wise, matmul, MoE.

TEST(CudaOps, Embed) {
  REQUIRE_GPU();
  const std::vector<int32_t> ids = {3, 0, 28, 3, 17, 28, 1};
  for (int64_t D : {37, 64}) {
    compare_both([&] {
      OpCase c("embed D=" + std::to_string(D), 1);
      const int table = c.dense("table", Kind::Weight, {29, D});
      const int out = c.act("out", {int64_t(ids.size()), D});
      OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) { b.embed(ids, t[table], t[out]); };
      return std::make_pair(std::move(c), fn);
    });
  }
}

TEST(CudaOps, RmsNorm) {
  REQUIRE_GPU();
  for (int64_t T : {1, 7, 300})
    for (int64_t D : {37, 64, 1032})
      for (bool in_place : {false, true}) {
        compare_both([&] {
          OpCase c("rms_norm T=" + std::to_string(T) + " D=" + std::to_string(D) + (in_place ? " in place" : ""), 2);
          const int x = c.act("x", {T, D}, -3.0f, 3.0f);
          for (int64_t i = 0; i < D; ++i) c.data(x)[size_t(i + 2)] *= 1e-3f;  // row 0 tiny: eps matters
          const int w = c.dense("weight", Kind::Param, {D}, 0.5f, 1.5f);
          const int out = c.act("out", {T, D});
          OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
            b.rms_norm(t[x], t[w], 1e-5f, in_place ? t[x] : t[out]);
          };
          return std::make_pair(std::move(c), fn);
        });
      }
}

// Unaligned rows (one element per access) and 16-byte aligned ones (packs), as wide as a prefill's
// 256 threads hold in registers (RowPacks: 2560 = a 2.5B model's d_model) and wider (12288: the
// packs past the cached ones are re-read), at decode (1 row) and prefill (130 rows) row counts.
TEST(CudaOps, AddRmsNorm) {
  REQUIRE_GPU();
  struct Shape { int64_t T, D; bool aligned; };
  for (const Shape s : {Shape{1, 37, false}, Shape{65, 256, false}, Shape{1, 2560, true}, Shape{130, 2560, true},
                        Shape{130, 12288, true}}) {
    const int64_t T = s.T, D = s.D;
    compare_both([&] {
      OpCase c("add_rms_norm T=" + std::to_string(T) + " D=" + std::to_string(D) + (s.aligned ? " aligned" : ""), 3);
      const int r = c.act_aligned_if(s.aligned, "residual", {T, D}, -3.0f, 3.0f);
      const int x = c.act_aligned_if(s.aligned, "x", {T, D});
      const int w = c.dense("weight", Kind::Param, {D}, 0.5f, 1.5f);
      const int out = c.act_aligned_if(s.aligned, "out", {T, D});
      OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
        b.add_rms_norm(t[r], t[x], t[w], 1e-6f, t[out]);
      };
      return std::make_pair(std::move(c), fn);
    });
  }
}

// As AddRmsNorm: unaligned and aligned rows, one group or several, Mamba-2 2.7B's 5120 channels
// (cached in registers) and 10240 (past them), decode and prefill row counts.
TEST(CudaOps, GatedRmsNorm) {
  REQUIRE_GPU();
  struct Shape { int64_t T, D, group; bool aligned; };
  for (const Shape s : {Shape{1, 45, 45, false}, Shape{7, 45, 15, false}, Shape{300, 128, 64, false},
                        Shape{63, 256, 256, false}, Shape{3, 5120, 5120, true}, Shape{130, 5120, 5120, true},
                        Shape{130, 4096, 1024, true}, Shape{130, 10240, 10240, true}}) {
    compare_both([&] {
      OpCase c("gated_rms_norm T=" + std::to_string(s.T) + " D=" + std::to_string(s.D) + " group=" +
                   std::to_string(s.group) + (s.aligned ? " aligned" : ""),
               4);
      const int yz = c.act_aligned_if(s.aligned, "yz", {s.T, 2 * s.D}, -2.0f, 2.0f);
      const int w = c.dense("weight", Kind::Param, {s.D}, 0.5f, 1.5f);
      const int out = c.act_aligned_if(s.aligned, "out", {s.T, s.D});
      const int64_t D = s.D, group = s.group;
      OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
        b.gated_rms_norm(t[yz].cols(0, D), t[yz].cols(D, D), t[w], group, 1e-5f, t[out]);
      };
      return std::make_pair(std::move(c), fn);
    });
  }
}

TEST(CudaOps, SwigluAndAdd) {
  REQUIRE_GPU();
  for (int64_t T : {1, 7, 300})
    for (int64_t F : {29, 64}) {
      compare_both([&] {
        OpCase c("swiglu+add T=" + std::to_string(T) + " F=" + std::to_string(F), 5);
        const int gu = c.act("gate_up", {T, 2 * F}, -4.0f, 4.0f);
        const int out = c.act("out", {T, F});
        const int acc = c.act("acc", {T, F});
        OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
          b.swiglu(t[gu], t[out]);
          b.add(t[acc], t[out]);
        };
        return std::make_pair(std::move(c), fn);
      });
    }
}

TEST(CudaOps, Matmul) {
  REQUIRE_GPU();
  for (int64_t T : {1, 7, 63, 65, 300})
    for (int64_t K : {45, 256})
      for (int64_t N : {29, 131})
        for (bool f32_out : {false, true}) {
          const bool bias = (T + N) % 2 == 1;
          compare_both([&] {
            OpCase c("matmul T=" + std::to_string(T) + " K=" + std::to_string(K) + " N=" + std::to_string(N) +
                         (bias ? " bias" : "") + (f32_out ? " fp32 out" : ""),
                     6);
            const int x = c.act("x", {T, K + 3});  // x is a further column slice of this
            const int w = c.dense("weight", Kind::Weight, {N, K});
            const int bi = c.dense("bias", Kind::Param, {N});
            const int out = c.act("out", {T, N}, -1.0f, 1.0f, f32_out ? Kind::ActF32 : Kind::Act);
            const int64_t k = K;
            OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
              b.matmul(t[x].cols(1, k), t[w], bias ? t[bi] : Tensor{}, t[out]);
            };
            return std::make_pair(std::move(c), fn);
          });
        }
}

// The MLP's first half, x [T, K] by [gate; up] [2F, K], then SwiGLU: one token (and fp32 up to
// 8) in the weight-streaming kernel's SwiGLU epilogue (asserted to fit), bf16 batches of 2-16 on
// the tensor-core kernel then the swiglu kernel, larger ones through cuBLASLt; F odd (a block's
// second feature past the end), bias on and off.
TEST(CudaOps, MatmulSwiglu) {
  REQUIRE_GPU();
  for (int64_t T : {1, 2, 5, 9, 40})
    for (int64_t F : {29, 64})
      for (bool bias : {false, true}) {
        const int64_t K = 296;
        compare_both([&] {
          OpCase c("matmul_swiglu T=" + std::to_string(T) + " F=" + std::to_string(F) + (bias ? " bias" : ""), 6);
          const int x = c.aligned_act("x", {T, K});
          const int w = c.dense("weight", Kind::Weight, {2 * F, K});
          const int bi = c.dense("bias", Kind::Param, {2 * F});
          const int gu = c.act("gate_up", {T, 2 * F}, -1.0f, 1.0f, Kind::ActIn);  // room, not compared
          const int out = c.act("out", {T, F});
          OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
            const Tensor bias_t = bias ? t[bi] : Tensor{};
            if (b.device() == Device::Cuda && (T == 1 || (t[x].dtype == DType::F32 && T <= cuda::kSkinnyMaxTokens))) {
              EXPECT_TRUE(cuda::skinny_gemm_fits(t[x], t[w], bias_t)) << "T=" << T;
            }
            b.matmul_swiglu(t[x], t[w], bias_t, RowRms{}, t[gu], t[out]);
          };
          return std::make_pair(std::move(c), fn);
        });
      }
}

// Decode-size products take the weight-streaming kernels when rows are 16-byte aligned: bf16
// batches of 2 to 16 tokens the tensor-core one (skinny_gemm_mma.cu: one and two n8 tiles of
// tokens, partly filled, offered first), other products of up to 8 tokens the FMA one
// (skinny_gemm.cu); the test asserts which kernels accept each case. K with and without a
// partial last slice or unrolled step (296 = 9 slices of 32 and 8 left), K past one batch of loads
// of 128 threads (4104, 6000, 6912 bf16: one-token blocks of 160, 192 and 224 threads), N with a
// partial last block, x as a column slice at an aligned offset, bias on and off.
TEST(CudaOps, MatmulDecodeSizes) {
  REQUIRE_GPU();
  for (int64_t T : {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 33, 47, 64, 65})
    for (int64_t K : {256, 296, 4104, 6000, 6912})
      for (int64_t N : {1, 29, 257})
        for (bool f32_out : {false, true}) {
          const bool bias = (T + N + K) % 2 == 1;
          compare_both([&] {
            OpCase c("matmul decode T=" + std::to_string(T) + " K=" + std::to_string(K) + " N=" + std::to_string(N) +
                         (bias ? " bias" : "") + (f32_out ? " fp32 out" : ""),
                     6);
            const int x = c.aligned_act("x", {T, K + 8});  // x = columns [8, 8 + K) of 16-byte aligned rows
            const int w = c.dense("weight", Kind::Weight, {N, K});
            const int bi = c.dense("bias", Kind::Param, {N});
            const int out = c.act("out", {T, N}, -1.0f, 1.0f, f32_out ? Kind::ActF32 : Kind::Act);
            const int64_t k = K;
            OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
              const Tensor bias_t = bias ? t[bi] : Tensor{};
              if (b.device() == Device::Cuda) {
                const Tensor xs = t[x].cols(8, k);
                const bool mma = xs.dtype == DType::BF16 && T >= 2 && T <= cuda::kSkinnyMmaMaxTokens;
                EXPECT_EQ(cuda::skinny_gemm_mma_fits(xs, t[w], bias_t), mma) << "T=" << T << " K=" << k;
                EXPECT_EQ(cuda::skinny_gemm_fits(xs, t[w], bias_t), T <= cuda::kSkinnyMaxTokens)
                    << "T=" << T << " K=" << k;
              }
              b.matmul(t[x].cols(8, k), t[w], bias_t, t[out]);
            };
            return std::make_pair(std::move(c), fn);
          });
        }
}

// matmul_row_rms at decode batch sizes: the row scale read by the tensor-core kernel (one and two
// n8 tiles of tokens, 40 partial sums a row), by the FMA kernel (one token) and by cuBLASLt's
// row scale kernel (30, 64 tokens), against the CPU.
TEST(CudaOps, MatmulRowRmsDecodeBatches) {
  REQUIRE_GPU();
  for (int64_t T : {1, 2, 13, 16, 30, 64})
    for (int64_t K : {320, 5120}) {
      const int64_t N = 77, partials = 40;
      compare_both([&] {
        OpCase c("matmul_row_rms T=" + std::to_string(T) + " K=" + std::to_string(K), 8);
        const int x = c.aligned_act("x", {T, K});
        const int w = c.dense("weight", Kind::Weight, {N, K}, -0.2f, 0.2f);
        const int bias = c.dense("bias", Kind::Param, {N});
        const int sums = c.dense("sumsq", Kind::Param, {T, partials}, 0.0f, 2.0f);
        const int out = c.act("out", {T, N});
        OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
          if (b.device() == Device::Cuda && t[x].dtype == DType::BF16 && T > 1 && T <= cuda::kSkinnyMmaMaxTokens) {
            EXPECT_TRUE(cuda::skinny_gemm_mma_fits(t[x], t[w], t[bias])) << "T=" << T;
          }
          b.matmul_row_rms(t[x], t[w], t[bias], {t[sums], K, 1e-5f}, t[out]);
        };
        return std::make_pair(std::move(c), fn);
      });
    }
}

// A decode step's block boundary split across two linear layers (ResidualAdd), against the CPU:
// the producer adds its product (optionally divided by a gated norm's RMS, as Mamba-2's out_proj)
// into the residual, writes the rows times the next norm's weight and sums their squares: in the
// skinny kernel's epilogue (one token, fp32 rows up to 8), or as the product then
// add_sum_squares (bf16 batches on the tensor-core kernel, 20 tokens on cuBLASLt); the consumers
// (a plain product and the SwiGLU one) divide by the RMS. The partial sums are laid out as each
// backend likes (not compared); the consumers' outputs show their totals. D = 300 leaves the
// producer a partial last block. splits_block_norms is asserted where Forward would split.
TEST(CudaOps, BlockNormSplit) {
  REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t T : {1, 3, 8, 20})
      for (int64_t D : {296, 300}) {
        const bool gated = T % 2 == 1, bias = (T + D) % 3 != 0;
        const bool split = (T == 1 || (dt == DType::F32 && T <= cuda::kSkinnyMaxTokens)) &&
                           (D * int64_t(dtype_size(dt))) % 16 == 0;
        const int64_t Kp = 320, N2 = 77, F = 29, G = 40;
        OpCase c("block norm split T=" + std::to_string(T) + " D=" + std::to_string(D) + (gated ? " gated" : "") +
                     (bias ? " bias" : ""),
                 9);
        const int a = c.aligned_act("block input", {T, Kp});
        const int w1 = c.dense("producer weight", Kind::Weight, {D, Kp}, -0.2f, 0.2f);
        const int b1 = c.dense("producer bias", Kind::Param, {D});
        const int gs = c.dense("gated sumsq", Kind::Param, {T, G}, 0.0f, 2.0f);
        const int h = c.aligned_act("residual", {T, D});
        const int room = c.aligned_act("product room", {T, D}, -1.0f, 1.0f, Kind::ActIn);
        const int sums = c.dense("sumsq", Kind::Scratch, {T, (D + 3) / 4});
        const int g = c.dense("norm weight", Kind::Param, {D}, 0.5f, 1.5f);
        const int x = c.aligned_act("normed", {T, D});
        const int w2 = c.dense("consumer weight", Kind::Weight, {N2, D}, -0.2f, 0.2f);
        const int b2 = c.dense("consumer bias", Kind::Param, {N2});
        const int w3 = c.dense("gate_up weight", Kind::Weight, {2 * F, D}, -0.2f, 0.2f);
        const int gu = c.act("gate_up room", {T, 2 * F}, -1.0f, 1.0f, Kind::ActIn);
        const int out2 = c.act("consumer out", {T, N2});
        const int out3 = c.act("swiglu out", {T, F});
        OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
          if (b.device() == Device::Cuda) {
            EXPECT_EQ(b.splits_block_norms(T, D), split);
          }
          const Tensor s = t[sums].cols(0, b.residual_sumsq_partials(D));
          const RowRms in = gated ? RowRms{t[gs], Kp, 1e-5f} : RowRms{};
          b.matmul_residual(t[a], t[w1], bias ? t[b1] : Tensor{}, in, {t[h], s, t[g], t[x]}, t[room]);
          const RowRms norm{s, D, 1e-6f};
          b.matmul_row_rms(t[x], t[w2], bias ? t[b2] : Tensor{}, norm, t[out2]);
          b.matmul_swiglu(t[x], t[w3], Tensor{}, norm, t[gu], t[out3]);
        };
        c.compare(fn, dt);
      }
}

TEST(CudaOps, Moe) {
  REQUIRE_GPU();
  struct Shape { int64_t T, D, E, F, top_k; bool renormalize; };
  for (const Shape s : {Shape{1, 37, 5, 11, 2, false}, Shape{13, 37, 5, 11, 3, true}, Shape{300, 64, 16, 48, 2, false},
                        Shape{65, 64, 16, 48, 2, true}}) {
    compare_both([&] {
      OpCase c("moe T=" + std::to_string(s.T) + " E=" + std::to_string(s.E) + " top " + std::to_string(s.top_k) +
                   (s.renormalize ? " renormalized" : ""),
               7);
      const int x = c.act("x", {s.T, s.D});
      const int router = c.dense("router", Kind::Weight, {s.E, s.D});
      const int gate_up = c.dense("gate_up", Kind::Weight, {s.E, 2 * s.F, s.D}, -0.5f, 0.5f);
      const int down = c.dense("down", Kind::Weight, {s.E, s.D, s.F}, -0.5f, 0.5f);
      const int out = c.act("out", {s.T, s.D});
      const Shape sh = s;
      OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView&) {
        b.moe({t[x], t[router], t[gate_up], t[down], sh.top_k, sh.renormalize, t[out]});
      };
      return std::make_pair(std::move(c), fn);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Stateful ops on mixed spans.

BatchView view_of(const std::vector<SeqSpan>& spans) {
  BatchView b;
  b.n_tokens = tokens_of(spans);
  b.spans = spans;
  return b;
}

// The conv1d of C channels, width K, SiLU, over T tokens and `slots` state slots; x and out are
// row views offset by 2 columns (the per-channel kernel) or 16-byte aligned rows (aligned: the
// 16-byte kernel, conv1d_vec_kernel, where C allows it and a span has more than one token).
std::pair<OpCase, OpFn> conv1d_case(int64_t T, int64_t C, int64_t K, int32_t slots, bool aligned) {
  OpCase c(std::string("conv1d") + (aligned ? " aligned" : "") + " C=" + std::to_string(C) +
               " K=" + std::to_string(K) + " T=" + std::to_string(T),
           9);
  const int x = aligned ? c.aligned_act("x", {T, C}) : c.act("x", {T, C});
  const int w = c.dense("weight", Kind::Param, {C, K}, -0.7f, 0.7f);
  const int bias = c.dense("bias", Kind::Param, {C}, -0.5f, 0.5f);
  const int state = c.dense("state", Kind::State, {slots, C, K - 1});
  const int out = aligned ? c.aligned_act("out", {T, C}) : c.act("out", {T, C});
  OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView& bv) {
    b.conv1d({t[x], t[w], t[bias], t[state], t[out], true}, bv);
  };
  return std::make_pair(std::move(c), fn);
}

TEST(CudaOps, Conv1d) {
  REQUIRE_GPU();
  std::mt19937 rng(8);
  const int32_t slots = int32_t(kMixed.size()) + 2;
  const auto spans = mixed_spans(rng, kMixed, slots);
  const int64_t T = tokens_of(spans);
  for (int64_t C : {37, 64})
    for (int64_t K : {4, 2})
      SKIP_IF_FAMILY_MISSING(compare_state_dtypes([&] { return conv1d_case(T, C, K, slots, false); }, view_of(spans)));
}

// Rows 16 bytes aligned and C a multiple of 8: the 16-byte kernel (conv1d_vec_kernel) on a batch
// with spans shorter than K − 1 beside long ones (partial last token groups and items), and a
// decode step on the same layout (the per-channel kernel).
TEST(CudaOps, Conv1dAligned) {
  REQUIRE_GPU();
  std::mt19937 rng(12);
  const std::vector<LenPos> mixed = {{1, 0}, {2, 5}, {3, 0}, {70, 9}, {130, 0}, {1, 3}, {64, 0}, {65, 2}};
  const std::vector<LenPos> decode = {{1, 4}, {1, 0}, {1, 9}};
  for (const auto& seqs : {mixed, decode}) {
    const int32_t slots = int32_t(seqs.size()) + 2;
    const auto spans = mixed_spans(rng, seqs, slots);
    const int64_t T = tokens_of(spans);
    for (int64_t C : {64, 136})
      for (int64_t K : {4, 2})
        SKIP_IF_FAMILY_MISSING(compare_state_dtypes([&] { return conv1d_case(T, C, K, slots, true); }, view_of(spans)));
  }
}

// A Mamba block's in_proj and conv (matmul_conv1d): the product's columns [3, 3 + C) feed the
// conv (3: blocks of the skinny kernel straddle where the channels start), optionally divided by
// a row RMS. `fused`: the one op, else matmul then conv1d.
std::pair<OpCase, OpFn> matmul_conv1d_case(int64_t T, int64_t C, int64_t K, int32_t slots, bool rms, bool fused) {
  const int64_t Kin = 136, begin = 3, N = begin + C + 6;
  OpCase c("matmul_conv1d C=" + std::to_string(C) + " K=" + std::to_string(K) + " T=" + std::to_string(T) +
               (rms ? " rms" : ""),
           21);
  const int x = c.aligned_act("x", {T, Kin});
  const int w = c.dense("in_proj", Kind::Weight, {N, Kin}, -0.2f, 0.2f);
  const int bias = c.dense("in_proj bias", Kind::Param, {N}, -0.3f, 0.3f);
  const int sumsq = c.dense("sumsq", Kind::Param, {T, 5}, 0.0f, 2.0f);
  const int out = c.aligned_act("product", {T, N});
  const int cw = c.dense("conv weight", Kind::Param, {C, K}, -0.7f, 0.7f);
  const int cb = c.dense("conv bias", Kind::Param, {C}, -0.5f, 0.5f);
  const int state = c.dense("conv state", Kind::State, {slots, C, K - 1});
  const int cout = c.aligned_act("conv out", {T, C});
  OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView& bv) {
    const RowRms r = rms ? RowRms{t[sumsq], Kin, 1e-5f} : RowRms{};
    const Conv1dParams conv{t[out].cols(begin, C), t[cw], t[cb], t[state], t[cout], true};
    if (fused) {
      b.matmul_conv1d(t[x], t[w], t[bias], r, t[out], conv, bv);
    } else {
      b.matmul_or_row_rms(t[x], t[w], t[bias], r, t[out]);
      b.conv1d(conv, bv);
    }
  };
  return std::make_pair(std::move(c), fn);
}

// Decode steps of n one-token spans in token order (as Forward lays them out), on shuffled slots.
std::vector<SeqSpan> decode_spans(std::mt19937& rng, int32_t n, int32_t n_slots) {
  std::vector<int32_t> slots(static_cast<size_t>(n_slots));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<SeqSpan> spans;
  for (int32_t i = 0; i < n; ++i) spans.push_back(SeqSpan{i, 1, slots[size_t(i)], 5 + i});
  return spans;
}

// matmul_conv1d against the CPU, and on the GPU bit for bit against matmul then conv1d: decode
// steps whose conv runs in the skinny kernel's epilogue (one bf16 token or up to 8 fp32 ones in
// token order, fp32 state, K = 4) and those where it cannot (bf16 batches, narrow states, K = 2,
// spans out of token order), then a prefill batch (the two ops).
TEST(CudaOps, MatmulConv1d) {
  REQUIRE_GPU();
  std::mt19937 rng(31);
  for (int n_seqs : {1, 3, 8, 9, -5, 0})
    for (int64_t C : {37, 64})
      for (int64_t K : {4, 2}) {
        // n_seqs < 0: a decode step of -n_seqs spans out of token order; 0: mixed prefill spans.
        const std::vector<LenPos> seqs = n_seqs < 0 ? std::vector<LenPos>(size_t(-n_seqs), LenPos{1, 5}) : kMixed;
        const int32_t slots = (n_seqs > 0 ? n_seqs : int32_t(seqs.size())) + 2;
        const auto spans = n_seqs > 0 ? decode_spans(rng, n_seqs, slots) : mixed_spans(rng, seqs, slots);
        const int64_t T = tokens_of(spans);
        const bool rms = (C + n_seqs) % 2 == 1;
        SKIP_IF_FAMILY_MISSING(
            compare_state_dtypes([&] { return matmul_conv1d_case(T, C, K, slots, rms, true); }, view_of(spans)));
        for (DType dt : {DType::F32, DType::BF16}) {
          SCOPED_TRACE(std::string("fused vs two ops, ") + std::string(dtype_name(dt)) + " T=" + std::to_string(T) +
                       " C=" + std::to_string(C) + " K=" + std::to_string(K));
          CudaBackendOptions o;
          o.dtype = dt;
          CudaBackend gpu(o);
          auto [fc, fused] = matmul_conv1d_case(T, C, K, slots, rms, true);
          auto [tc, two_ops] = matmul_conv1d_case(T, C, K, slots, rms, false);
          EXPECT_EQ(fc.run_on(gpu, dt, DType::F32, false, fused, view_of(spans)),
                    tc.run_on(gpu, dt, DType::F32, false, two_ops, view_of(spans)));
        }
      }
}

// Mixed spans (the scan kernel, pieces and carries) and a decode step (one token per span: the
// decode kernel when N / 4 is a power of two up to 32, as for N = 16 and 128; N = 12 falls back).
TEST(CudaOps, SelectiveScan) {
  REQUIRE_GPU();
  std::mt19937 rng(10);
  const std::vector<LenPos> decode = {{1, 4}, {1, 0}, {1, 9}, {1, 1}};
  for (const auto& seqs : {kMixed, decode})
    for (int64_t N : {16, 12, 128})
      for (int64_t Di : {37, 64})
        for (bool gate : {true, false}) {
          const int32_t slots = int32_t(seqs.size()) + 1;
          const auto spans = mixed_spans(rng, seqs, slots);
          const int64_t T = tokens_of(spans);
          SKIP_IF_FAMILY_MISSING(compare_state_dtypes(
              [&] {
                OpCase c("selective_scan T=" + std::to_string(T) + " N=" + std::to_string(N) + " Di=" + std::to_string(Di) +
                             (gate ? " gated" : ""),
                         11);
                const int xz = c.act("xz", {T, 2 * Di});
                const int dbc = c.act("dbc", {T, 3 + 2 * N});
                const int delta = c.act("delta", {T, Di}, -2.0f, 1.0f);
                const int delta_bias = c.dense("delta_bias", Kind::Param, {Di}, -3.0f, 0.0f);
                const int A = c.dense("A", Kind::Param, {Di, N}, -1.0f, 2.0f);
                for (float& a : c.data(A)) a = -std::exp(a);
                const int D = c.dense("D", Kind::Param, {Di});
                const int state = c.dense("state", Kind::State, {slots, Di, N});
                const int out = c.act("out", {T, Di});
                const int64_t di = Di;
                OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView& bv) {
                  SelectiveScanParams p;
                  p.u = t[xz].cols(0, di);
                  if (gate) p.z = t[xz].cols(di, di);
                  p.delta = t[delta];
                  p.delta_bias = t[delta_bias];
                  p.A = t[A];
                  p.B = t[dbc].cols(3, N);
                  p.C = t[dbc].cols(3 + N, N);
                  p.D = t[D];
                  p.state = t[state];
                  p.out = t[out];
                  b.selective_scan(p, bv);
                };
                return std::make_pair(std::move(c), fn);
              },
              view_of(spans)));
        }
}

// The ssd op's arguments in an OpCase: x | B | C as column ranges of one xbc activation (as the
// forward lays them out), dt, the per-head parameters and the state; `out` is the caller's.
struct SsdArgIds {
  int xbc, dt, dt_bias, A, D, state;
  int64_t H, P, G, N;
};
SsdArgIds add_ssd_args(OpCase& c, int64_t T, int32_t slots, int64_t H, int64_t P, int64_t G, int64_t N) {
  SsdArgIds a{};
  a.H = H, a.P = P, a.G = G, a.N = N;
  a.xbc = c.act("xbc", {T, H * P + 2 * G * N});
  a.dt = c.act("dt", {T, H}, -2.0f, 2.0f);
  a.dt_bias = c.dense("dt_bias", Kind::Param, {H}, -3.0f, 0.5f);
  a.A = c.dense("A", Kind::Param, {H}, -1.0f, 1.5f);
  for (float& v : c.data(a.A)) v = -std::exp(v);
  a.D = c.dense("D", Kind::Param, {H});
  a.state = c.dense("state", Kind::State, {slots, H, P, N});
  return a;
}
SsdParams ssd_params(const std::vector<Tensor>& t, const SsdArgIds& a, const Tensor& out, int64_t chunk) {
  const int64_t Di = a.H * a.P, GN = a.G * a.N;
  SsdParams p;
  p.x = t[a.xbc].cols(0, Di).unflatten_last(a.H, a.P);
  p.B = t[a.xbc].cols(Di, GN).unflatten_last(a.G, a.N);
  p.C = t[a.xbc].cols(Di + GN, GN).unflatten_last(a.G, a.N);
  p.dt = t[a.dt];
  p.dt_bias = t[a.dt_bias];
  p.A = t[a.A];
  p.D = t[a.D];
  p.state = t[a.state];
  p.out = out.unflatten_last(a.H, a.P);
  p.chunk_size = chunk;
  return p;
}

TEST(CudaOps, Ssd) {
  REQUIRE_GPU();
  std::mt19937 rng(12);
  const int32_t slots = int32_t(kMixed.size()) + 1;
  const auto spans = mixed_spans(rng, kMixed, slots);
  const int64_t T = tokens_of(spans);
  struct Shape { int64_t H, P, G, N, chunk; bool dt_limited; };
  // Chunks (Q = min(chunk, longest span = 300)) of 64, 32 and 16 tokens; 45 (odd: a partial
  // 32-token round in the cumsum) with P·N = 35 (state passing one element per thread); 100 with
  // P·N = 28 (4 elements per thread straddling rows of N = 7); 300 (past the cumsum's 256-token
  // segment).
  for (const Shape s : {Shape{4, 8, 2, 16, 64, false}, Shape{6, 16, 1, 32, 32, true}, Shape{3, 5, 3, 7, 16, false},
                        Shape{3, 5, 3, 7, 45, false}, Shape{4, 4, 2, 7, 100, true}, Shape{2, 8, 1, 16, 300, false}}) {
    SKIP_IF_FAMILY_MISSING(compare_state_dtypes(
        [&] {
          OpCase c("ssd H=" + std::to_string(s.H) + " P=" + std::to_string(s.P) + " G=" + std::to_string(s.G) +
                       " N=" + std::to_string(s.N) + " chunk=" + std::to_string(s.chunk),
                   13);
          const SsdArgIds args = add_ssd_args(c, T, slots, s.H, s.P, s.G, s.N);
          const int out = c.act("out", {T, s.H * s.P});
          const Shape sh = s;
          OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView& bv) {
            SsdParams p = ssd_params(t, args, t[out], sh.chunk);
            p.dt_limited = sh.dt_limited;
            p.dt_min = 0.05f;
            p.dt_max = 0.6f;
            b.ssd(p, bv);
          };
          return std::make_pair(std::move(c), fn);
        },
        view_of(spans)));
  }
}

// Mamba-2's gated norm split across the SSD and out_proj (ops.h, SsdGate): ssd with the gate,
// then matmul_row_rms, against the CPU. A decode batch gates inside the decode kernel (P = 8:
// warps past the head's channels; P = 40: a partial last block; N = 7: the scalar path; N = 128
// and 24 below) and out_proj a weight-streaming kernel (x rows aligned; K = 15 is not:
// cuBLASLt and the row scale kernel); the mixed batch gates after the chunked stages
// (gate_rows_kernel), out_proj on cuBLASLt. The partial sums themselves are laid out per backend
// and compared only through out_proj's output.
TEST(CudaOps, SsdGate) {
  REQUIRE_GPU();
  std::mt19937 rng(31);
  const std::vector<LenPos> decode = {{1, 0}, {1, 9}, {1, 300}, {1, 2}, {1, 0}};
  struct Shape { int64_t H, P, G, N; };
  for (const auto& seqs : {decode, kMixed}) {
    const int32_t slots = int32_t(seqs.size()) + 1;
    const auto spans = mixed_spans(rng, seqs, slots);
    const int64_t T = tokens_of(spans);
    // N = 128: a 2-byte state row is half a warp of 16-byte accesses; with P = 7 a warp's last
    // pass has one valid row of two. N = 24: 16-byte accesses with part of a row's lanes idle
    // (fp32: 6 of 32; 2-byte states: 3 of 16). N = 20: 2-byte states fall back to 8-byte
    // accesses (4 elements), which 20 divides and 8 does not.
    for (const Shape s : {Shape{4, 8, 2, 16}, Shape{6, 40, 1, 32}, Shape{3, 5, 3, 7}, Shape{2, 7, 1, 128},
                          Shape{2, 6, 2, 24}, Shape{3, 4, 1, 20}}) {
      const int64_t Di = s.H * s.P, Dout = 37;
      SKIP_IF_FAMILY_MISSING(compare_state_dtypes(
          [&] {
            OpCase c("ssd gate T=" + std::to_string(T) + " H=" + std::to_string(s.H) + " P=" + std::to_string(s.P) +
                         " G=" + std::to_string(s.G) + " N=" + std::to_string(s.N),
                     32);
            const SsdArgIds args = add_ssd_args(c, T, slots, s.H, s.P, s.G, s.N);
            const int z = c.act("z", {T, Di}, -3.0f, 3.0f);
            const int norm = c.dense("norm weight", Kind::Param, {Di}, 0.5f, 1.5f);
            const int y = c.aligned_act("y (gated)", {T, Di});
            const int w = c.dense("out_proj", Kind::Weight, {Dout, Di}, -0.3f, 0.3f);
            const int bias = c.dense("bias", Kind::Param, {Dout});
            const int out = c.act("out", {T, Dout});
            const int sums = c.dense("sumsq", Kind::Scratch, {T, s.H * ((s.P + 15) / 16)});
            const Shape sh = s;
            const bool all_decode = T == int64_t(spans.size());
            OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView& bv) {
              SsdParams p = ssd_params(t, args, t[y], 16);
              const Tensor partials = t[sums].cols(0, b.ssd_gate_partials(sh.H, sh.P));
              p.gate = {t[z], t[norm], partials};
              b.ssd(p, bv);
              if (b.device() == Device::Cuda && all_decode) {
                const bool rows_aligned = (Di * int64_t(dtype_size(t[y].dtype))) % 16 == 0;
                const bool streamed = cuda::skinny_gemm_mma_fits(t[y], t[w], t[bias]) ||
                                      cuda::skinny_gemm_fits(t[y], t[w], t[bias]);
                EXPECT_EQ(streamed, rows_aligned) << "K=" << Di;
              }
              b.matmul_row_rms(t[y], t[w], t[bias], {partials, Di, 1e-5f}, t[out]);
            };
            return std::make_pair(std::move(c), fn);
          },
          view_of(spans)));
    }
  }
}

// The default (unscaled) RoPE over the first rotary_dim dims of a head.
RopeSpec default_rope(int64_t rotary_dim) {
  RopeSpec r;
  r.kind = RopeKind::Default;
  r.rotary_dim = rotary_dim;
  return r;
}

// rope of the q and k heads packed in one qkv row per token (Hq, Hkv heads of Dh), both dtypes.
void compare_rope(const std::string& name, uint32_t seed, const std::vector<SeqSpan>& spans, int64_t Hq, int64_t Hkv,
                  int64_t Dh, const RopeSpec& rope) {
  const int64_t T = tokens_of(spans);
  SKIP_IF_FAMILY_MISSING(compare_both(
      [&] {
        OpCase c("rope " + name, seed);
        const int qkv = c.act("qkv", {T, (Hq + 2 * Hkv) * Dh});
        OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView& bv) {
          b.rope({t[qkv].cols(0, Hq * Dh).unflatten_last(Hq, Dh), t[qkv].cols(Hq * Dh, Hkv * Dh).unflatten_last(Hkv, Dh),
                  rope},
                 bv);
        };
        return std::make_pair(std::move(c), fn);
      },
      view_of(spans)));
}

TEST(CudaOps, Rope) {
  REQUIRE_GPU();
  std::mt19937 rng(14);
  const auto spans = mixed_spans(rng, kMixed, int32_t(kMixed.size()));
  const RopeSpec plain = default_rope(16);
  RopeSpec llama3 = plain;
  llama3.kind = RopeKind::Llama3;
  llama3.factor = 8.0;
  llama3.original_max_position = 64;
  RopeSpec partial = plain;
  partial.rotary_dim = 10;
  partial.theta = 500.0;
  compare_rope("default", 15, spans, 6, 2, 16, plain);
  compare_rope("llama3", 15, spans, 6, 2, 16, llama3);
  compare_rope("partial 10 of 14", 15, spans, 6, 2, 14, partial);
}

// Decode steps only (every span one token): the launcher spreads a token's pairs over several
// blocks when they are more than a block's threads (Llama 2.5B's shape: 32 + 8 heads, 40 pairs
// each), at positions up to 100K (large angles).
TEST(CudaOps, RopeDecodeSteps) {
  REQUIRE_GPU();
  std::mt19937 rng(15);
  compare_rope("decode steps", 16, mixed_spans(rng, {{1, 0}, {1, 2047}, {1, 99999}, {1, 517}}, 6), 32, 8, 80,
               default_rope(80));
}

// Attention of `spans` over a paged cache of `block`-token blocks, for each shape, both dtypes.
// Each sequence owns ceil((pos + len) / block) blocks drawn from a shuffled pool, plus table
// entries pointing at a block of no sequence; cache cells hold random history or poison.
// key_capacity: what a recorded graph plans for (0: the batch's own keys). With a rope the op
// rotates q and k itself (the CPU in place, CUDA's decode kernel as it reads them), so q and k
// are not compared afterwards: the output and the cache (rotated keys) are.
struct AttnShape {
  int64_t Hq, Hkv, Dh;
};
void compare_attention(std::mt19937& rng, const std::vector<SeqSpan>& spans, int32_t block,
                       const std::vector<AttnShape>& shapes, int32_t key_capacity = 0, const RopeSpec& rope = {}) {
  const int64_t T = tokens_of(spans);
  int32_t max_blocks = 0, n_blocks = 1;
  for (const SeqSpan& s : spans) {
    max_blocks = std::max(max_blocks, (s.pos + s.len + block - 1) / block + 1);
    n_blocks += (s.pos + s.len + block - 1) / block;
  }
  std::vector<int32_t> pool(static_cast<size_t>(n_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> table(spans.size() * size_t(max_blocks), pool.back());
  size_t next = 0;
  for (size_t s = 0; s < spans.size(); ++s)
    for (int32_t i = 0; i * block < spans[s].pos + spans[s].len; ++i) table[s * size_t(max_blocks) + size_t(i)] = pool[next++];
  BatchView bv = view_of(spans);
  bv.block_tables = table.data();
  bv.max_blocks_per_seq = max_blocks;
  bv.block_size = block;
  bv.key_capacity = key_capacity;
  for (const AttnShape s : shapes) {
    SKIP_IF_FAMILY_MISSING(compare_both(
        [&] {
          OpCase c("attention Hq=" + std::to_string(s.Hq) + " Hkv=" + std::to_string(s.Hkv) + " Dh=" +
                       std::to_string(s.Dh) + " block=" + std::to_string(block) + " spans=" +
                       std::to_string(spans.size()) + " capacity=" + std::to_string(key_capacity) +
                       " rotary_dim=" + std::to_string(rope.kind == RopeKind::None ? 0 : rope.rotary_dim),
                   17);
          const int qkv = c.act("qkv", {T, (s.Hq + 2 * s.Hkv) * s.Dh}, -2.0f, 2.0f,
                                rope.kind == RopeKind::None ? Kind::Act : Kind::ActIn);
          const int kc = c.dense("k_cache", Kind::Cache, {n_blocks, block, s.Hkv, s.Dh});
          const int vc = c.dense("v_cache", Kind::Cache, {n_blocks, block, s.Hkv, s.Dh});
          const int out = c.act("out", {T, s.Hq * s.Dh});
          const AttnShape sh = s;
          OpFn fn = [=](Backend& b, const std::vector<Tensor>& t, BatchView& batch) {
            AttentionParams p;
            p.q = t[qkv].cols(0, sh.Hq * sh.Dh).unflatten_last(sh.Hq, sh.Dh);
            p.k = t[qkv].cols(sh.Hq * sh.Dh, sh.Hkv * sh.Dh).unflatten_last(sh.Hkv, sh.Dh);
            p.v = t[qkv].cols((sh.Hq + sh.Hkv) * sh.Dh, sh.Hkv * sh.Dh).unflatten_last(sh.Hkv, sh.Dh);
            p.k_cache = t[kc];
            p.v_cache = t[vc];
            p.out = t[out].unflatten_last(sh.Hq, sh.Dh);
            p.scale = float(1.0 / std::sqrt(double(sh.Dh)));
            p.rope = rope;
            b.attention(p, batch);
          };
          return std::make_pair(std::move(c), fn);
        },
        bv));
  }
}

// Decode spans (length 1) at a given number of keys (pos + 1), in shuffled token order.
std::vector<SeqSpan> decode_spans(std::mt19937& rng, const std::vector<int32_t>& keys) {
  std::vector<LenPos> seqs;
  for (int32_t k : keys) seqs.push_back({1, k - 1});
  return mixed_spans(rng, seqs, int32_t(seqs.size()));
}

TEST(CudaOps, PagedAttention) {
  REQUIRE_GPU();
  std::mt19937 rng(16);
  const auto spans = mixed_spans(rng, kMixed, int32_t(kMixed.size()));
  compare_attention(rng, spans, 16, {{6, 2, 16}, {4, 4, 9}, {8, 1, 64}});
}

// The decode kernels (attention_decode.cu): one-token spans at very different contexts (only
// the new key; fewer keys than a split; many splits), every group size the SIMT kernel pads to
// (1, 2, 4, 8 and 3, 6 between), head_dim 64, 80 (padded to 128) and 128, block sizes 16 and 7
// (keys of a vector load straddle no block, table lookups per key). In bf16, head_dim 80 and the
// groups of 6 and 8 take the tensor-core kernel (its one-lookup-a-chunk path at block 16, a
// lookup per row at block 7), the others the SIMT kernel. A key capacity far past the longest
// sequence (a recorded graph's plan) must change nothing.
TEST(CudaOps, PagedAttentionDecode) {
  REQUIRE_GPU();
  std::mt19937 rng(18);
  const std::vector<AttnShape> shapes = {{4, 4, 64}, {8, 4, 128}, {8, 2, 80}, {6, 2, 128}, {12, 2, 64}, {16, 2, 128}};
  for (int32_t block : {16, 7}) {
    const auto spans = decode_spans(rng, {1, 33, 1000, 5000});
    compare_attention(rng, spans, block, shapes);
  }
  const auto spans = decode_spans(rng, {5000, 2, 300, 4097, 64});
  compare_attention(rng, spans, 16, {{32, 8, 128}, {8, 1, 80}}, 1 << 16);
}

// Attention with the rotary embedding in the op (AttentionParams::rope): the prefill spans are
// rotated by the rope kernel, the decode spans by the decode kernel as it reads q and the new k.
// Mixed spans, then decode steps only at short and long contexts; head_dim 80 fully rotated (Llama
// 2.5B's shape), partial rotation with llama3 scaling, head_dim 16 with the default rope.
TEST(CudaOps, PagedAttentionRope) {
  REQUIRE_GPU();
  std::mt19937 rng(20);
  const RopeSpec full = default_rope(80), small = default_rope(16);
  RopeSpec partial = default_rope(40);
  partial.kind = RopeKind::Llama3;
  partial.theta = 500000.0;
  partial.factor = 8.0;
  partial.original_max_position = 64;
  const auto mixed = mixed_spans(rng, kMixed, int32_t(kMixed.size()));
  compare_attention(rng, mixed, 16, {{8, 2, 80}}, 0, full);
  compare_attention(rng, mixed, 16, {{6, 2, 64}}, 0, partial);
  compare_attention(rng, mixed, 7, {{6, 2, 16}}, 0, small);
  const auto decode = decode_spans(rng, {1, 33, 1000, 5000});
  compare_attention(rng, decode, 16, {{8, 2, 80}, {32, 8, 80}}, 0, full);
  compare_attention(rng, decode, 16, {{6, 2, 64}, {8, 1, 128}}, 1 << 14, partial);
  // 16 query heads per KV head: no decode kernel, the rope kernel rotates every span; a full
  // 128-dim rotation (64 pairs, the decode kernel's largest table).
  compare_attention(rng, mixed, 16, {{16, 1, 64}}, 0, default_rope(64));
  compare_attention(rng, mixed, 16, {{8, 2, 128}}, 0, default_rope(128));
  compare_attention(rng, decode, 16, {{8, 2, 128}}, 0, default_rope(128));
}

// Few sequences at short contexts: the key splits of each (sequence, KV head) form one
// thread-block cluster and merge through distributed shared memory (attention_decode.cu) —
// Llama 2.5B's shape at 2K keys (16 splits), and short sequences whose clusters hold splits
// with no keys (capacity 4096: 16 splits of at least 64 keys for 1, 70 and 3000 keys).
TEST(CudaOps, PagedAttentionDecodeCluster) {
  REQUIRE_GPU();
  std::mt19937 rng(23);
  compare_attention(rng, decode_spans(rng, {2048}), 16, {{32, 8, 80}, {8, 1, 128}});
  compare_attention(rng, decode_spans(rng, {70, 1, 3000}), 7, {{8, 2, 80}, {4, 4, 64}}, 4096);
}

// So many (sequence, KV head) blocks that the decode kernel does not split the keys: the
// output comes straight from its blocks, no merge.
TEST(CudaOps, PagedAttentionDecodeUnsplit) {
  REQUIRE_GPU();
  std::mt19937 rng(19);
  std::vector<int32_t> keys;
  for (int i = 0; i < 72; ++i) keys.push_back(1 + int32_t(rng() % 400));
  compare_attention(rng, decode_spans(rng, keys), 16, {{8, 8, 64}, {64, 8, 128}});
}

// Prefill chunks and decode steps in one call: the decode spans go to the decode kernel, the
// others to the tiled kernel (and its own append), each writing only its own rows and cache.
TEST(CudaOps, PagedAttentionMixedDecode) {
  REQUIRE_GPU();
  std::mt19937 rng(20);
  const std::vector<LenPos> seqs = {{1, 4999}, {37, 100}, {1, 0}, {300, 0}, {1, 777}, {2, 3000}};
  const auto spans = mixed_spans(rng, seqs, int32_t(seqs.size()));
  for (int32_t block : {16, 7}) compare_attention(rng, spans, block, {{8, 2, 128}, {6, 6, 64}, {4, 4, 9}});
}

// Forces the tile height of the tensor-core prefill kernel for the lifetime of the object (the
// previous setting comes back).
class ScopedPrefillRows {
 public:
  explicit ScopedPrefillRows(int rows) : old_(cuda::force_attention_prefill_rows(rows)) {}
  ~ScopedPrefillRows() { cuda::force_attention_prefill_rows(old_); }
  ScopedPrefillRows(const ScopedPrefillRows&) = delete;
  ScopedPrefillRows& operator=(const ScopedPrefillRows&) = delete;

 private:
  int old_;
};

// Prefill spans on the tensor-core kernel (attention_prefill.cu: bf16, head_dim 64 and 128; the
// fp32 half of each comparison runs the SIMT kernel), with tiles of 64 and of 128 query rows
// (forced: on its own it picks 128 only for batches with many tiles): lengths 2..700 starting
// at 0 or continuing a sequence at pos > 0 (earlier keys from the cache), partial tiles, GQA
// groups 1, 4 and 8, block sizes 16 and 7 (tiles gather keys across blocks), one-token spans
// beside them, and head_dim 80 which stays on the SIMT kernel.
TEST(CudaOps, PagedAttentionPrefill) {
  REQUIRE_GPU();
  std::mt19937 rng(21);
  const std::vector<LenPos> seqs = {{700, 0}, {2, 0}, {129, 300}, {64, 64}, {1, 50}, {333, 1000}, {17, 5}, {65, 1}};
  const std::vector<AttnShape> shapes = {{8, 8, 64}, {8, 2, 128}, {16, 2, 64}, {8, 1, 128}, {32, 8, 128}, {8, 2, 80}};
  for (int rows : {64, 128}) {
    SCOPED_TRACE("tile rows " + std::to_string(rows));
    const ScopedPrefillRows forced(rows);
    for (int32_t block : {16, 7}) {
      const auto spans = mixed_spans(rng, seqs, int32_t(seqs.size()));
      compare_attention(rng, spans, block, shapes);
    }
  }
}

// Few tiles over many keys (a short chunk late in a long prefill): the tensor-core kernel splits
// the key range and attention.cu merges the splits; a graph-sized key capacity on top. With the
// 300-token chunk there are more (tile, KV head, split) work items than persistent blocks (one
// an SM), so blocks loop over several items, splits among them.
TEST(CudaOps, PagedAttentionPrefillSplit) {
  REQUIRE_GPU();
  std::mt19937 rng(22);
  const std::vector<LenPos> seqs = {{70, 4000}, {9, 2500}, {300, 4000}};
  const auto spans = mixed_spans(rng, seqs, int32_t(seqs.size()));
  for (int rows : {64, 128}) {
    SCOPED_TRACE("tile rows " + std::to_string(rows));
    const ScopedPrefillRows forced(rows);
    compare_attention(rng, spans, 16, {{8, 1, 128}, {4, 4, 64}});
    compare_attention(rng, spans, 7, {{8, 2, 64}}, 1 << 14);
  }
}

// ---------------------------------------------------------------------------------------------
// Backend behaviour.

TEST(CudaBackendTest, AllocatorReusesFreedBlocks) {
  REQUIRE_GPU();
  CudaBackend b;
  { Buffer warm = b.allocate(3 << 20); }
  const auto before = cuda::allocator_stats(b.device_index());
  for (int i = 0; i < 10; ++i) {
    Buffer x = b.allocate(3 << 20);
    Buffer y = b.allocate(1000);
  }
  const auto after = cuda::allocator_stats(b.device_index());
  EXPECT_LE(after.device_allocs, before.device_allocs + 1);  // the 1000-byte class may be new
  EXPECT_GE(after.peak_in_use, size_t(3) << 20);
  EXPECT_GT(b.available_memory(), size_t(0));
}

TEST(CudaBackendTest, BadArgumentsNameTheOpAndShape) {
  REQUIRE_GPU();
  CudaBackend b;
  Buffer buf = b.allocate(4096);
  Tensor x = Tensor::contiguous(buf.data(), DType::BF16, {4, 8}, Device::Cuda);
  Tensor out = Tensor::contiguous(buf.data(), DType::BF16, {4, 9}, Device::Cuda);
  Buffer wb = b.allocate(64);
  Tensor w = Tensor::contiguous(wb.data(), DType::F32, {8}, Device::Cuda);
  try {
    b.rms_norm(x, w, 1e-5f, out);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rms_norm"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[4, 9]"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Models: the fixtures on CUDA.

// bf16 weights and activations through a whole (tiny) model, against transformers' fp32:
// every GEMM input rounded to 2⁻⁹ relative, every layer boundary rounded, errors adding over
// the layers and growing through the softmax-free logits. 5e-2 of the max |logit| is where a
// correct bf16 model lands (roughly what torch's own bf16 run of these fixtures gives); a wrong
// kernel gives O(1).
// Seen on an H200 (2026-11-25): every fp32 case passes at 1e-4, every bf16 case of the dense
// models at 5e-2; the Jamba fixtures gave 0.62 / 0.18. Cause, measured: these random-weight MoE
// fixtures are ill-conditioned at bf16 precision. Their top-k routing has near-ties (jamba-tiny
// sequence 0: a 2nd-vs-3rd expert probability gap of 2.8e-4, four more below 5e-3), and on the
// CPU in fp32 with only the weights rounded to bf16, 43 of 97 tokens (jamba-tiny) and 62 of 97
// (jamba-tiny-b) already move by more than half the tolerance. So the bf16 check skips tokens
// that move that much on the CPU with bf16-rounded weights; when more than 10% of a sequence
// would be skipped, the fixture is reported as ill-conditioned and skipped as a whole (the
// numbers go in the skip message). The hybrid's bf16 path is held instead on a trained model,
// DemoModelsOnCuda below: the demo Jamba's validation perplexity in bf16 within 1% of PyTorch's.
constexpr double kBf16ModelTol = 5e-2;

// Rounds every weight of a CPU runner to bf16 in place (the CPU keeps them as fp32 values).
void round_weights_to_bf16(const ModelRunner& runner) {
  for (const Buffer& b : runner.weights().storage) {
    float* v = static_cast<float*>(b.data());
    for (size_t i = 0; i < b.bytes() / sizeof(float); ++i) v[i] = bf16_to_f32(f32_to_bf16(v[i]));
  }
}

// Max |a - b| over one row of `vocab` logits, over the max |b| of the whole sequence.
std::vector<double> per_token_error(const std::vector<float>& a, const std::vector<float>& b, size_t vocab) {
  double scale = 0;
  for (float v : b) scale = std::max(scale, double(std::fabs(v)));
  std::vector<double> err(b.size() / vocab, 0.0);
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    err[i / vocab] = std::max(err[i / vocab], double(std::fabs(a[i] - b[i])) / scale);
  return err;
}

using test::load_reference;
using test::relative_error;

struct ModelParam {
  const char* model;
  DType dtype;
};

class CudaFixtureModel : public ::testing::TestWithParam<ModelParam> {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible";
    CudaBackendOptions o;
    o.dtype = GetParam().dtype;
    backend = std::make_unique<CudaBackend>(o);
  }
  std::string dir() const { return test::fixture(std::string("models/") + GetParam().model).string(); }
  double tol() const { return GetParam().dtype == DType::BF16 ? kBf16ModelTol : 1e-4; }

  // Per token of `ids`: how far the CPU's logits move (against transformers' fp32 `ref_logits`)
  // when only the weights are rounded to bf16. Tokens that move by more than tol() / 2 are
  // ill-conditioned at bf16 (kBf16ModelTol says why): no bf16 comparison can hold them.
  std::vector<double> bf16_sensitivity(const std::vector<int32_t>& ids, const std::vector<float>& ref_logits) {
    if (!rounded_) {  // the CPU in fp32 with bf16-rounded weights, built once per test
      rounded_ = std::make_unique<ModelRunner>(dir(), cpu_);
      round_weights_to_bf16(*rounded_);
    }
    Sequence cs = rounded_->open();
    Sequence* cseqs[] = {&cs};
    const std::vector<float> cpu_rounded = rounded_->step(cseqs, std::span(&ids, 1), true);
    rounded_->close(cs);
    return per_token_error(cpu_rounded, ref_logits, size_t(rounded_->spec().vocab_size));
  }
  bool ill_conditioned(double sensitivity) const { return sensitivity > tol() / 2; }
  size_t ill_conditioned_tokens(const std::vector<int32_t>& ids, const std::vector<float>& ref_logits) {
    const auto sensitivity = bf16_sensitivity(ids, ref_logits);
    return size_t(std::count_if(sensitivity.begin(), sensitivity.end(), [&](double v) { return ill_conditioned(v); }));
  }

  std::unique_ptr<CudaBackend> backend;

 private:
  CpuBackend cpu_;
  std::unique_ptr<ModelRunner> rounded_;
};

TEST_P(CudaFixtureModel, LogitsMatchTransformers) {
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    ModelRunner runner(dir(), *backend);
    const bool bf16 = GetParam().dtype == DType::BF16;
    const size_t vocab = size_t(runner.spec().vocab_size);
    for (size_t i = 0; i < ref.inputs.size(); ++i) {
      Sequence seq = runner.open();
      Sequence* seqs[] = {&seq};
      std::vector<float> logits = runner.step(seqs, std::span(&ref.inputs[i], 1), /*all_logits=*/true);
      runner.close(seq);
      if (!bf16) {
        EXPECT_LE(relative_error(logits, ref.logits[i]), tol()) << GetParam().model << " sequence " << i;
        continue;
      }
      const auto sensitivity = bf16_sensitivity(ref.inputs[i], ref.logits[i]);
      const auto err = per_token_error(logits, ref.logits[i], vocab);
      size_t skipped = 0;
      double worst = 0;
      for (size_t t = 0; t < err.size(); ++t) {
        if (ill_conditioned(sensitivity[t])) {
          ++skipped;
          continue;
        }
        worst = std::max(worst, err[t]);
      }
      if (skipped * 10 > err.size())
        GTEST_SKIP() << GetParam().model << " sequence " << i << ": " << skipped << " of " << err.size()
                     << " tokens move by more than " << tol() / 2
                     << " with bf16-rounded weights on the CPU: ill-conditioned at bf16 (see DemoModelsOnCuda)";
      EXPECT_LE(worst, tol()) << GetParam().model << " sequence " << i;
      if (skipped) std::printf("%s sequence %zu: %zu of %zu tokens ill-conditioned at bf16, skipped\n",
                               GetParam().model, i, skipped, err.size());
    }
  });
}

// Teacher-forced on transformers' greedy continuation, CUDA and CPU side by side: CUDA's arg-max
// must be the CPU's wherever the CPU's top-2 margin is larger than the tolerance allows to flip.
TEST_P(CudaFixtureModel, GreedyTokensMatchWhereTheMarginAllows) {
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    CpuBackend cpu;
    ModelRunner gpu_runner(dir(), *backend), cpu_runner(dir(), cpu);
    Sequence gs = gpu_runner.open(), cs = cpu_runner.open();
    Sequence* g[] = {&gs};
    Sequence* c[] = {&cs};
    std::vector<float> gl = gpu_runner.step(g, std::span(&ref.greedy_prompt, 1));
    std::vector<float> cl = cpu_runner.step(c, std::span(&ref.greedy_prompt, 1));
    int checked = 0;
    for (size_t i = 0; i < ref.greedy_tokens.size(); ++i) {
      std::vector<float> sorted = cl;
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      double scale = 0;
      for (float v : cl) scale = std::max(scale, double(std::fabs(v)));
      const int32_t cpu_best = int32_t(std::max_element(cl.begin(), cl.end()) - cl.begin());
      const int32_t gpu_best = int32_t(std::max_element(gl.begin(), gl.end()) - gl.begin());
      if (sorted[0] - sorted[1] > 2.0 * tol() * scale) {
        EXPECT_EQ(gpu_best, cpu_best) << GetParam().model << " step " << i;
        ++checked;
      }
      std::vector<int32_t> next = {ref.greedy_tokens[i]};
      gl = gpu_runner.step(g, std::span(&next, 1));
      cl = cpu_runner.step(c, std::span(&next, 1));
    }
    EXPECT_GT(checked, 0) << "no step had a clear margin";
  });
}

// In bf16 the pieces and the whole run through different kernels (decode-size GEMMs, chunked
// SSD boundaries) that round differently. Tokens that are ill-conditioned at bf16 (MoE routing
// near-ties, kBf16ModelTol) turn that rounding into O(tol) logit moves, so they are left out of
// the bf16 comparison, and a fixture with more than 10% of them is skipped, as in
// LogitsMatchTransformers; its fp32 case holds the invariant at 1e-4 for every token.
TEST_P(CudaFixtureModel, PrefillThenDecodeEqualsOneForward) {
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    ModelRunner runner(dir(), *backend);
    const std::vector<int32_t>& ids = ref.inputs[0];
    const size_t vocab = size_t(runner.spec().vocab_size);
    std::vector<bool> skip(ids.size(), false);
    if (GetParam().dtype == DType::BF16) {
      const auto sensitivity = bf16_sensitivity(ids, ref.logits[0]);
      for (size_t t = 0; t < skip.size(); ++t) skip[t] = ill_conditioned(sensitivity[t]);
      const auto ill = size_t(std::count(skip.begin(), skip.end(), true));
      if (ill * 10 > ids.size())
        GTEST_SKIP() << GetParam().model << ": " << ill << " of " << ids.size()
                     << " tokens ill-conditioned at bf16 (LogitsMatchTransformers); the fp32 case holds the invariant";
    }
    Sequence whole = runner.open();
    Sequence* w[] = {&whole};
    std::vector<float> full = runner.step(w, std::span(&ids, 1), true);
    runner.close(whole);
    for (size_t chunk : {size_t(1), size_t(7), size_t(15), size_t(16), size_t(17)}) {
      Sequence seq = runner.open();
      Sequence* s[] = {&seq};
      std::vector<float> pieces;
      for (size_t at = 0; at < ids.size(); at += chunk) {
        std::vector<int32_t> part(ids.begin() + long(at), ids.begin() + long(std::min(ids.size(), at + chunk)));
        std::vector<float> l = runner.step(s, std::span(&part, 1), true);
        pieces.insert(pieces.end(), l.begin(), l.end());
      }
      EXPECT_EQ(pieces.size(), full.size()) << GetParam().model << " chunk " << chunk;
      const auto err = per_token_error(pieces, full, vocab);  // over the whole sequence's max |logit|
      double worst = 0;
      for (size_t t = 0; t < err.size(); ++t)
        if (!skip[t]) worst = std::max(worst, err[t]);
      EXPECT_LE(worst, tol()) << GetParam().model << " chunk " << chunk;
      runner.close(seq);
    }
  });
}

// Decode steps replayed from recorded CUDA graphs (runtime/decode_graphs.h) give the eager
// steps' logits: 300 greedy steps of every fixture sequence in one batch, then of a smaller
// batch (a second graph shape), with llama's contexts crossing a key-capacity bucket (256) so
// a graph is re-recorded mid-way. A model whose forward cannot be recorded (MoE waits for its
// expert counts on the host) must still decode correctly, eagerly.
TEST_P(CudaFixtureModel, DecodeGraphsEqualEagerSteps) {
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    const size_t n = ref.inputs.size();
    RunnerOptions o;
    o.max_sequences = int32_t(n);
    o.decode_graphs = false;
    ModelRunner eager(dir(), *backend, o);
    o.decode_graphs = true;
    ModelRunner graphed(dir(), *backend, o);
    std::vector<Sequence> es(n), gs(n);
    std::vector<Sequence*> e, g;
    for (size_t i = 0; i < n; ++i) {
      es[i] = eager.open();
      gs[i] = graphed.open();
      e.push_back(&es[i]);
      g.push_back(&gs[i]);
    }
    std::vector<float> el = eager.step(e, ref.inputs), gl = graphed.step(g, ref.inputs);
    const size_t vocab = size_t(eager.spec().vocab_size);
    size_t longest = 0;
    for (const auto& p : ref.inputs) longest = std::max(longest, p.size());
    const bool has_kv = !eager.kv().empty();  // attention models stop at their context limit
    const int steps = has_kv ? int(std::min<int64_t>(300, eager.max_context() - int64_t(longest))) : 300;
    for (int step = 0; step < steps; ++step) {
      ASSERT_LE(relative_error(gl, el), tol()) << GetParam().model << " step " << step;
      if (step == steps / 2 && e.size() > 1) {  // a smaller batch from here on: another graph
        e.pop_back();
        g.pop_back();
        el.resize(e.size() * vocab);
      }
      std::vector<std::vector<int32_t>> next;
      for (size_t i = 0; i < e.size(); ++i) {
        const auto row = el.begin() + long(i * vocab);
        next.push_back({int32_t(std::max_element(row, row + long(vocab)) - row)});
      }
      el = eager.step(e, next);
      gl = graphed.step(g, next);
    }
    const bool has_moe = std::any_of(eager.spec().layers.begin(), eager.spec().layers.end(),
                                     [](const LayerSpec& l) { return l.ffn_kind() == FfnKind::Moe; });
    if (!has_moe) {
      EXPECT_GT(graphed.decode_graphs().replays(), steps - 10) << GetParam().model;
      EXPECT_EQ(eager.decode_graphs().replays(), 0);
    }
  });
}

TEST_P(CudaFixtureModel, SnapshotTakenOnCudaRestoresOnCpu) {
  if (GetParam().dtype != DType::F32) GTEST_SKIP() << "compared at fp32 precision";
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    CpuBackend cpu;
    ModelRunner gpu_runner(dir(), *backend), cpu_runner(dir(), cpu);
    Sequence gs = gpu_runner.open();
    Sequence* g[] = {&gs};
    gpu_runner.step(g, std::span(&ref.greedy_prompt, 1));
    const std::string blob = snapshot_sequence(gpu_runner, gs, ref.greedy_prompt);
    Sequence cs = restore_sequence(cpu_runner, blob);
    Sequence* c[] = {&cs};
    std::vector<int32_t> next = {ref.greedy_tokens[0]};
    const std::vector<float> on_gpu = gpu_runner.step(g, std::span(&next, 1));
    const std::vector<float> on_cpu = cpu_runner.step(c, std::span(&next, 1));
    EXPECT_LE(relative_error(on_gpu, on_cpu), 1e-4) << GetParam().model;
  });
}

TEST_P(CudaFixtureModel, SnapshotTakenOnCpuRestoresOnCuda) {
  if (GetParam().dtype != DType::F32) GTEST_SKIP() << "compared at fp32 precision";
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    CpuBackend cpu;
    ModelRunner gpu_runner(dir(), *backend), cpu_runner(dir(), cpu);
    Sequence cs = cpu_runner.open();
    Sequence* c[] = {&cs};
    cpu_runner.step(c, std::span(&ref.greedy_prompt, 1));
    const std::string blob = snapshot_sequence(cpu_runner, cs, ref.greedy_prompt);
    Sequence gs = restore_sequence(gpu_runner, blob);
    Sequence* g[] = {&gs};
    std::vector<int32_t> next = {ref.greedy_tokens[0]};
    const std::vector<float> on_cpu = cpu_runner.step(c, std::span(&next, 1));
    const std::vector<float> on_gpu = gpu_runner.step(g, std::span(&next, 1));
    EXPECT_LE(relative_error(on_gpu, on_cpu), 1e-4) << GetParam().model;
  });
}

// A narrow state (bf16, fp16: RunnerOptions::state_dtype) through the runner on CUDA: a prompt
// prefilled as one span gives the CPU's logits (the state is rounded only when the span ends,
// after the last logits), its snapshot says the state dtype and restores on the CPU with the
// very state bits, so the next step agrees with CUDA's to fp32 precision. Models without Mamba
// layers keep no state to narrow and are skipped.
TEST_P(CudaFixtureModel, NarrowStateMatchesCpuAndRestoresThere) {
  if (GetParam().dtype != DType::F32) GTEST_SKIP() << "compared at fp32 precision";
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    CpuBackend cpu;
    for (DType state : {DType::BF16, DType::F16}) {
      SCOPED_TRACE(std::string(GetParam().model) + " state " + std::string(dtype_name(state)));
      RunnerOptions o;
      o.state_dtype = state;
      ModelRunner gpu_runner(dir(), *backend, o), cpu_runner(dir(), cpu, o);
      bool has_state = false;
      for (int64_t l = 0; l < gpu_runner.spec().n_layers(); ++l)
        has_state = has_state || gpu_runner.states().ssm(l).defined();
      if (!has_state) GTEST_SKIP() << GetParam().model << " has no recurrent state";
      EXPECT_EQ(gpu_runner.states().dtype(), state);
      Sequence gs = gpu_runner.open(), own = cpu_runner.open();
      Sequence* g[] = {&gs};
      Sequence* c[] = {&own};
      const std::vector<float> gpu_prefill = gpu_runner.step(g, std::span(&ref.greedy_prompt, 1));
      const std::vector<float> cpu_prefill = cpu_runner.step(c, std::span(&ref.greedy_prompt, 1));
      EXPECT_LE(relative_error(gpu_prefill, cpu_prefill), 1e-4);
      cpu_runner.close(own);
      const std::string blob = snapshot_sequence(gpu_runner, gs, ref.greedy_prompt);
      EXPECT_EQ(read_snapshot_header(blob).state_dtype, dtype_name(state));
      Sequence cs = restore_sequence(cpu_runner, blob);
      Sequence* r[] = {&cs};
      std::vector<int32_t> next = {ref.greedy_tokens[0]};
      const std::vector<float> on_gpu = gpu_runner.step(g, std::span(&next, 1));
      const std::vector<float> on_cpu = cpu_runner.step(r, std::span(&next, 1));
      EXPECT_LE(relative_error(on_gpu, on_cpu), 1e-4);
    }
  });
}

// No cross-talk: each fixture sequence prefilled and then decoded together with the others (one
// batch of mixed lengths, then decode steps of the whole batch) gives its own logits, as when it
// runs alone. On CUDA the GEMMs may pick other algorithms for another batch size, so "the same"
// is the model tolerance rather than bit-for-bit (the CPU's matmul is batch-invariant and its
// test is exact); cross-talk would be an O(1) error. In bf16 a sequence alone decodes with its
// block norms split across the linear layers (ResidualAdd) and the batch without, which rounds
// differently: a fixture ill-conditioned at bf16 (MoE routing near-ties, kBf16ModelTol) is
// skipped as in PrefillThenDecodeEqualsOneForward; its fp32 case holds the invariant.
TEST_P(CudaFixtureModel, BatchedSequencesEqualEachAlone) {
  SKIP_IF_FAMILY_MISSING({
    test::FixtureReference ref = load_reference(GetParam().model);
    if (GetParam().dtype == DType::BF16) {
      const size_t ill = ill_conditioned_tokens(ref.inputs[0], ref.logits[0]);
      if (ill * 10 > ref.inputs[0].size())
        GTEST_SKIP() << GetParam().model << ": " << ill << " of " << ref.inputs[0].size()
                     << " tokens ill-conditioned at bf16 (LogitsMatchTransformers); the fp32 case holds the invariant";
    }
    RunnerOptions o;
    o.max_sequences = int32_t(ref.inputs.size());
    ModelRunner runner(dir(), *backend, o);
    const size_t n = ref.inputs.size();
    const std::vector<int32_t> decode = {5, 17};  // two decode steps after the prompts
    auto run = [&](std::span<const size_t> which) {
      std::vector<Sequence> seqs(which.size());
      std::vector<Sequence*> ptrs;
      for (auto& s : seqs) {
        s = runner.open();
        ptrs.push_back(&s);
      }
      std::vector<std::vector<int32_t>> prompts;
      for (size_t w : which) prompts.push_back(ref.inputs[w]);
      std::vector<std::vector<float>> out = {runner.step(ptrs, prompts)};
      for (int32_t id : decode) {
        std::vector<std::vector<int32_t>> step(which.size(), std::vector<int32_t>{id});
        out.push_back(runner.step(ptrs, step));
      }
      for (auto& s : seqs) runner.close(s);
      return out;  // per step: [which.size() x vocab]
    };
    std::vector<size_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    const auto together = run(all);
    const size_t vocab = size_t(runner.spec().vocab_size);
    for (size_t i = 0; i < n; ++i) {
      const size_t one[] = {i};
      const auto alone = run(one);
      for (size_t step = 0; step < alone.size(); ++step) {
        const std::vector<float> mine(together[step].begin() + long(i * vocab),
                                      together[step].begin() + long((i + 1) * vocab));
        EXPECT_LE(relative_error(mine, alone[step]), tol()) << GetParam().model << " sequence " << i << " step " << step;
      }
    }
  });
}

std::vector<ModelParam> all_models() {
  std::vector<ModelParam> v;
  for (const char* m : {"mamba-tiny", "mamba-tiny-ssm", "mamba2-tiny", "mamba2-tiny-ssm", "jamba-tiny", "jamba-tiny-b",
                        "llama-tiny", "llama3-tiny"})
    for (DType d : {DType::F32, DType::BF16}) v.push_back({m, d});
  return v;
}

// The trained demo models (models/shakespeare-*): validation perplexity on the first 4096 tokens
// against PyTorch's figure in reference.json — fp32 to 1e-5 relative, bf16 within 1% (the
// issue's bar). Trained weights are well-conditioned, so this holds the hybrid's bf16 path
// (Mamba-1 with dt/B/C norms, attention, MoE) to a real quality figure.
TEST(DemoModelsOnCuda, PerplexityMatchesPyTorch) {
  REQUIRE_GPU();
  const auto text = test::read_file(test::source_dir() / "models/tinyshakespeare-validation.txt");
  for (const char* name : {"shakespeare-mamba2", "shakespeare-jamba"}) {
    const auto dir = test::source_dir() / "models" / name;
    const auto ref = nlohmann::json::parse(test::read_file(dir / "reference.json"));
    const Tokenizer tok = Tokenizer::from_file((dir / "tokenizer.json").string());
    const std::vector<int32_t> all = tok.encode(text);
    for (const auto& p : ref["perplexity"]) {
      if (p["limit_tokens"].is_null()) continue;
      const int64_t context = p["context"], limit = p["limit_tokens"];
      for (DType dtype : {DType::F32, DType::BF16}) {
        CudaBackendOptions o;
        o.dtype = dtype;
        CudaBackend cuda(o);
        RunnerOptions ro;
        ro.max_sequences = 4;
        ro.max_context = context;
        ModelRunner runner(dir.string(), cuda, ro);
        const PerplexityResult r = evaluate_perplexity(runner, std::span(all).first(size_t(limit)), context);
        const double expected = p["perplexity"];
        EXPECT_NEAR(r.perplexity() / expected, 1.0, dtype == DType::F32 ? 1e-5 : 1e-2)
            << name << " context " << context << " " << dtype_name(dtype) << ": statelm " << r.perplexity()
            << ", PyTorch " << expected;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFamilies, CudaFixtureModel, ::testing::ValuesIn(all_models()), [](const auto& info) {
  return test::param_name(info.param.model) + (info.param.dtype == DType::BF16 ? "_bf16" : "_fp32");
});

}  // namespace
}  // namespace statelm
