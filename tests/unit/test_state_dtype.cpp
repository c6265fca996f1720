// A bf16 recurrent state (RunnerOptions::state_dtype = BF16), from the ops up to the runner.
//
// Ops: each SSM op (conv1d, selective_scan, ssd) with a bf16 state must equal, bit for bit, the
// same op with an fp32 state that is rounded to bf16 after every call: the state is widened
// exactly, all arithmetic is fp32, and the rounding happens once per span (a decode step
// rounds every token, a prefill span only at its end). Several calls of mixed spans (decode
// steps, spans shorter than K−1, spans across SSD chunks) on shuffled slots.
// Runner: the fixture models with a bf16 state give fp32's logits for a one-span prefill and
// stay within 1e-2 of them for a prefill in pieces; the teacher-forced decode error and the
// greedy continuation are printed, not required to be equal. The SSM state halves (the conv
// window stays fp32);
// snapshots keep their dtype and are refused by a runner of the other dtype; any other dtype
// is refused up front. An f16 state (for the drift benchmark) follows the same rounding rule and
// snapshots the same way.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/model_runner.h"
#include "runtime/snapshot.h"
#include "unit/op_test_util.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

using test::random_vector;

// ---------------------------------------------------------------------------------------------
// Ops: bf16 state vs fp32 state rounded the same way.

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// The 16-bit state dtypes: bf16 (offered) and f16 (measured by bench/cpu/state_drift.cpp).
uint16_t encode16(DType d, float v) { return d == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v); }
float round16(DType d, float v) { return d == DType::BF16 ? round_bf16(v) : f16_to_f32(f32_to_f16(v)); }

// An op's fixed random inputs; `run` applies it to spans with the given state tensor.
struct StatefulOp {
  std::vector<std::vector<float>> inputs;  // keeps the tensors' memory alive
  std::vector<int64_t> state_shape;        // [n_slots, ...]
  std::function<void(CpuBackend&, const Tensor& state, std::span<const SeqSpan>)> run;
  std::function<std::vector<float>()> out;  // the output rows, all tokens

  Tensor input(std::mt19937& rng, std::initializer_list<int64_t> shape, float lo, float hi) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    inputs.push_back(random_vector(rng, size_t(n), lo, hi));
    return Tensor::contiguous(inputs.back().data(), DType::F32, shape);
  }
};

StatefulOp conv_op(std::mt19937& rng, int64_t T, int64_t n_slots, int64_t C, int64_t K) {
  StatefulOp op;
  op.inputs.reserve(8);
  op.state_shape = {n_slots, C, K - 1};
  Conv1dParams p;
  p.x = op.input(rng, {T, C}, -1.0f, 1.0f);
  p.weight = op.input(rng, {C, K}, -0.7f, 0.7f);
  p.bias = op.input(rng, {C}, -0.5f, 0.5f);
  p.out = op.input(rng, {T, C}, 0.0f, 0.0f);
  op.run = [p, T](CpuBackend& cpu, const Tensor& state, std::span<const SeqSpan> spans) mutable {
    p.state = state;
    cpu.conv1d(p, {T, spans});
  };
  op.out = [p] { return test::gather(p.out); };
  return op;
}

StatefulOp scan_op(std::mt19937& rng, int64_t T, int64_t n_slots, int64_t Di, int64_t N) {
  StatefulOp op;
  op.inputs.reserve(12);
  op.state_shape = {n_slots, Di, N};
  SelectiveScanParams p;
  p.u = op.input(rng, {T, Di}, -1.0f, 1.0f);
  p.delta = op.input(rng, {T, Di}, -2.0f, 1.0f);
  p.delta_bias = op.input(rng, {Di}, -3.0f, 0.0f);
  p.A = op.input(rng, {Di, N}, -1.0f, 2.0f);
  for (float& a : op.inputs.back()) a = -std::exp(a);
  p.B = op.input(rng, {T, N}, -1.0f, 1.0f);
  p.C = op.input(rng, {T, N}, -1.0f, 1.0f);
  p.D = op.input(rng, {Di}, -1.0f, 1.0f);
  p.z = op.input(rng, {T, Di}, -1.0f, 1.0f);
  p.out = op.input(rng, {T, Di}, 0.0f, 0.0f);
  op.run = [p, T](CpuBackend& cpu, const Tensor& state, std::span<const SeqSpan> spans) mutable {
    p.state = state;
    cpu.selective_scan(p, {T, spans});
  };
  op.out = [p] { return test::gather(p.out); };
  return op;
}

StatefulOp ssd_op(std::mt19937& rng, int64_t T, int64_t n_slots, int64_t H, int64_t P, int64_t G, int64_t N,
                  int64_t chunk) {
  StatefulOp op;
  op.inputs.reserve(12);
  op.state_shape = {n_slots, H, P, N};
  SsdParams p;
  p.x = op.input(rng, {T, H, P}, -1.0f, 1.0f);
  p.dt = op.input(rng, {T, H}, -2.0f, 2.0f);
  p.dt_bias = op.input(rng, {H}, -3.0f, 0.5f);
  p.A = op.input(rng, {H}, -1.0f, 1.5f);
  for (float& a : op.inputs.back()) a = -std::exp(a);
  p.B = op.input(rng, {T, G, N}, -1.0f, 1.0f);
  p.C = op.input(rng, {T, G, N}, -1.0f, 1.0f);
  p.D = op.input(rng, {H}, -1.0f, 1.0f);
  p.out = op.input(rng, {T, H, P}, 0.0f, 0.0f);
  p.chunk_size = chunk;
  op.run = [p, T](CpuBackend& cpu, const Tensor& state, std::span<const SeqSpan> spans) mutable {
    p.state = state;
    cpu.ssd(p, {T, spans});
  };
  op.out = [p] { return test::gather(p.out); };
  return op;
}

// Spans of the given lengths on shuffled slots, tokens in shuffled span order, odd spans
// continuing (pos > 0).
std::vector<SeqSpan> spans_of(std::mt19937& rng, const std::vector<int32_t>& lens, int32_t n_slots) {
  std::vector<int32_t> slots(static_cast<size_t>(n_slots)), order(lens.size());
  std::iota(slots.begin(), slots.end(), 0);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<SeqSpan> spans(lens.size());
  int32_t start = 0;
  for (int32_t i : order) {
    spans[size_t(i)] = {start, lens[size_t(i)], slots[size_t(i)], i % 2 == 1 ? 5 + i : 0};
    start += lens[size_t(i)];
  }
  return spans;
}

// Each call of `calls` (span lengths, tokens from row 0) runs on the bf16 state and on the fp32
// state, whose touched values are then rounded to bf16: outputs and states must agree exactly.
void check_rounding_points(StatefulOp& op, const std::vector<std::vector<int32_t>>& calls, std::mt19937& rng,
                           const std::string& what, DType narrow = DType::BF16) {
  CpuBackend cpu;
  int64_t n = 1;
  for (int64_t d : op.state_shape) n *= d;
  const int32_t n_slots = int32_t(op.state_shape[0]);
  std::vector<float> s32 = random_vector(rng, size_t(n), -1.0f, 1.0f);
  for (float& v : s32) v = round16(narrow, v);  // a state a 16-bit cache could hold
  std::vector<uint16_t> s16(s32.size());
  for (size_t i = 0; i < s32.size(); ++i) s16[i] = encode16(narrow, s32[i]);
  auto tensor = [&](void* data, DType dt) {
    Tensor t = Tensor::contiguous(data, dt, {1});
    t.ndim = int(op.state_shape.size());
    int64_t stride = 1;
    for (int k = t.ndim - 1; k >= 0; --k) {
      t.shape[k] = op.state_shape[size_t(k)];
      t.stride[k] = stride;
      stride *= t.shape[k];
    }
    return t;
  };
  const Tensor t32 = tensor(s32.data(), DType::F32), t16 = tensor(s16.data(), narrow);
  ASSERT_EQ(t16.nbytes() * 2, t32.nbytes());

  bool rounding_mattered = false;
  for (size_t c = 0; c < calls.size(); ++c) {
    const std::vector<SeqSpan> spans = spans_of(rng, calls[c], n_slots);
    const std::string call = what + " call " + std::to_string(c);
    op.run(cpu, t32, spans);
    const std::vector<float> out32 = op.out();
    for (float& v : s32) {
      rounding_mattered |= v != round16(narrow, v);
      v = round16(narrow, v);
    }
    op.run(cpu, t16, spans);
    const std::vector<float> out16 = op.out();
    ASSERT_EQ(out32.size(), out16.size());
    // All rows: those of no span in this call hold the previous call's output in both runs.
    size_t bad = 0;
    for (size_t i = 0; i < out32.size(); ++i) bad += std::memcmp(&out32[i], &out16[i], 4) != 0;
    EXPECT_EQ(bad, 0u) << call << ": outputs differ";
    size_t bad_state = 0;
    for (size_t i = 0; i < s32.size(); ++i) bad_state += encode16(narrow, s32[i]) != s16[i];
    EXPECT_EQ(bad_state, 0u) << call << ": states differ";
  }
  EXPECT_TRUE(rounding_mattered) << what << ": no state value needed rounding, the test shows nothing";
}

// Calls of one test: a prefill mix, decode steps, spans shorter than K−1 and across chunks.
const std::vector<std::vector<int32_t>> kCalls = {
    {1, 7, 33, 64, 65, 1, 16, 2}, {1, 1, 1, 1, 1, 1, 1, 1}, {2, 1, 17, 1, 3, 40, 1, 1}, {1, 1, 1, 1}, {190}};
constexpr int64_t kTokens = 190;

TEST(StateDtype, Conv1dBf16StateIsFp32RoundedPerSpan) {
  std::mt19937 rng(1);
  for (int64_t K : {2, 4, 5}) {
    StatefulOp op = conv_op(rng, kTokens, 10, 37, K);
    check_rounding_points(op, kCalls, rng, "conv1d K=" + std::to_string(K));
  }
}

TEST(StateDtype, SelectiveScanBf16StateIsFp32RoundedPerSpan) {
  std::mt19937 rng(2);
  StatefulOp op = scan_op(rng, kTokens, 10, 70, 16);  // Di not a multiple of the block
  check_rounding_points(op, kCalls, rng, "selective_scan");
}

TEST(StateDtype, SsdBf16StateIsFp32RoundedPerSpan) {
  std::mt19937 rng(3);
  StatefulOp op = ssd_op(rng, kTokens, 10, 4, 12, 2, 16, 16);  // chunk 16: spans cross chunks
  check_rounding_points(op, kCalls, rng, "ssd");
}

TEST(StateDtype, OpsWithF16StateAreFp32RoundedPerSpan) {
  std::mt19937 rng(5);
  StatefulOp conv = conv_op(rng, kTokens, 10, 37, 4);
  check_rounding_points(conv, kCalls, rng, "conv1d f16", DType::F16);
  StatefulOp scan = scan_op(rng, kTokens, 10, 70, 16);
  check_rounding_points(scan, kCalls, rng, "selective_scan f16", DType::F16);
  StatefulOp ssd = ssd_op(rng, kTokens, 10, 4, 12, 2, 16, 16);
  check_rounding_points(ssd, kCalls, rng, "ssd f16", DType::F16);
}

TEST(StateDtype, OpsRejectOtherStateDtypes) {
  std::mt19937 rng(4);
  CpuBackend cpu;
  StatefulOp op = conv_op(rng, 4, 2, 8, 4);
  std::vector<double> s(2 * 8 * 3);
  const Tensor f64 = Tensor::contiguous(s.data(), DType::F64, {2, 8, 3});
  const SeqSpan sp{0, 4, 0, 0};
  EXPECT_THROW(op.run(cpu, f64, {&sp, 1}), Error);
}

// ---------------------------------------------------------------------------------------------
// Runner: fixture models with a bf16 state.

std::string model_dir(const std::string& name) { return test::fixture("models/" + name).string(); }

std::vector<int32_t> greedy_prompt(const std::string& name) {
  auto j = nlohmann::json::parse(test::read_file(test::fixture("models/" + name + "/reference.json")));
  return j["greedy"]["prompt"].get<std::vector<int32_t>>();
}

RunnerOptions options(DType state) {
  RunnerOptions o;
  o.max_sequences = 2;
  o.max_context = 160;
  o.state_dtype = state;
  return o;
}

int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

// One sequence fed the prompt in pieces of `piece` tokens (all logits kept), then a greedy
// continuation of n tokens from `forced` when given (teacher forcing: the same inputs for both
// dtypes), else from its own argmax.
struct ModelRun {
  std::vector<float> prefill, decode;  // logits
  std::vector<int32_t> greedy;
};
ModelRun run_model(ModelRunner& runner, const std::vector<int32_t>& prompt, size_t piece, int n,
                   const std::vector<int32_t>* forced = nullptr) {
  ModelRun r;
  Sequence seq = runner.open();
  Sequence* seqs[] = {&seq};
  for (size_t i = 0; i < prompt.size(); i += piece) {
    std::vector<int32_t> part(prompt.begin() + long(i), prompt.begin() + long(std::min(prompt.size(), i + piece)));
    std::vector<float> l = runner.step(seqs, std::span(&part, 1), true);
    r.prefill.insert(r.prefill.end(), l.begin(), l.end());
  }
  const int64_t V = runner.spec().vocab_size;
  std::vector<float> last(r.prefill.end() - V, r.prefill.end());
  for (int i = 0; i < n; ++i) {
    r.greedy.push_back(argmax(last));
    std::vector<int32_t> feed = {forced ? (*forced)[size_t(i)] : r.greedy.back()};
    last = runner.step(seqs, std::span(&feed, 1));
    r.decode.insert(r.decode.end(), last.begin(), last.end());
  }
  runner.close(seq);
  return r;
}

// max |got − want| / max |want|
double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  return err / scale;
}

std::string join(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t t : v) s += (s.empty() ? "" : " ") + std::to_string(t);
  return s;
}

class StateDtypeModel : public ::testing::TestWithParam<std::string> {};

TEST_P(StateDtypeModel, Bf16StateStaysCloseToFp32) {
  CpuBackend cpu;
  const std::vector<int32_t> prompt = greedy_prompt(GetParam());
  ModelRunner r32(model_dir(GetParam()), cpu, options(DType::F32));
  ModelRunner r16(model_dir(GetParam()), cpu, options(DType::BF16));
  const MemoryFigures m32 = memory_figures(r32.spec(), DType::F32, DType::F32);
  EXPECT_EQ(int64_t(r16.states().bytes_per_slot()), m32.conv_state_bytes + m32.ssm_state_bytes / 2);
  EXPECT_EQ(r16.states().conv(0).dtype, DType::F32);  // the conv window stays fp32
  EXPECT_EQ(r16.states().ssm(0).dtype, DType::BF16);

  // One span: the state is rounded only after the last token, so the logits are fp32's.
  EXPECT_EQ(run_model(r16, prompt, prompt.size(), 0).prefill, run_model(r32, prompt, prompt.size(), 0).prefill);
  // Pieces of 3 tokens: rounded between pieces.
  const ModelRun a = run_model(r32, prompt, 3, 16), b = run_model(r16, prompt, 3, 16);
  const double prefill_err = relative_error(b.prefill, a.prefill);
  // Only the SSM state is bf16 (rounding the conv window too gave 5.4e-2 on jamba-tiny).
  const double tol = 1e-2;
  EXPECT_LE(prefill_err, tol) << GetParam() << ": prefill logits of the bf16 state";
  const double decode_err = relative_error(run_model(r16, prompt, 3, 16, &a.greedy).decode, a.decode);
  int agree = 0;
  for (size_t i = 0; i < a.greedy.size(); ++i) agree += a.greedy[i] == b.greedy[i];
  std::cout << "[ bf16 state ] " << GetParam() << ": prefill (pieces of 3) logits rel err " << prefill_err
            << ", 16 decode steps (teacher-forced) " << decode_err << "; greedy fp32 [" << join(a.greedy)
            << "] bf16 [" << join(b.greedy) << "], " << agree << "/16 equal\n";
  RecordProperty("prefill_rel_err", std::to_string(prefill_err));
  RecordProperty("decode_rel_err", std::to_string(decode_err));
  RecordProperty("greedy_equal", agree);
}

// The whole model: a bf16-state runner gives exactly the logits of an fp32-state runner whose
// state is rounded to bf16 after every step (prefill pieces and decode steps).
TEST_P(StateDtypeModel, Bf16RunnerIsFp32RunnerRoundedPerStep) {
  CpuBackend cpu;
  const std::vector<int32_t> prompt = greedy_prompt(GetParam());
  ModelRunner r32(model_dir(GetParam()), cpu, options(DType::F32));
  ModelRunner r16(model_dir(GetParam()), cpu, options(DType::BF16));
  Sequence s32 = r32.open(), s16 = r16.open();
  Sequence* p32[] = {&s32};
  Sequence* p16[] = {&s16};
  // Pieces of 1, 2, 3, 4, 5, 5, ... tokens: decode steps and short prefills.
  for (size_t i = 0, len = 1; i < prompt.size(); i += len, len = std::min<size_t>(len + 1, 5)) {
    std::vector<int32_t> part(prompt.begin() + long(i), prompt.begin() + long(std::min(prompt.size(), i + len)));
    const std::vector<float> l32 = r32.step(p32, std::span(&part, 1), true);
    const std::vector<float> l16 = r16.step(p16, std::span(&part, 1), true);
    ASSERT_EQ(l32, l16) << GetParam() << ": piece at " << i;
    for (int64_t l = 0; l < r32.spec().n_layers(); ++l)
      for (const Tensor* t : {&r32.states().ssm(l)})
        if (t->defined())
          for (int64_t e = 0; e < t->numel(); ++e) t->f32()[e] = round_bf16(t->f32()[e]);
  }
  r32.close(s32);
  r16.close(s16);
}

// A bf16 snapshot restores into a bf16 runner (continuing exactly) and is refused by an fp32
// one; an fp32 snapshot is refused by a bf16 runner.
TEST_P(StateDtypeModel, SnapshotsKeepTheirDtype) {
  CpuBackend cpu;
  const std::vector<int32_t> prompt = greedy_prompt(GetParam());
  ModelRunner r32(model_dir(GetParam()), cpu, options(DType::F32));
  ModelRunner r16(model_dir(GetParam()), cpu, options(DType::BF16));
  auto prefilled = [&](ModelRunner& r) {
    Sequence seq = r.open();
    Sequence* seqs[] = {&seq};
    r.step(seqs, std::span(&prompt, 1));
    std::string blob = snapshot_sequence(r, seq, prompt);
    std::vector<int32_t> next = {prompt[0]};
    std::vector<float> logits = r.step(seqs, std::span(&next, 1));
    r.close(seq);
    return std::make_pair(blob, logits);
  };
  const auto [blob32, logits32] = prefilled(r32);
  const auto [blob16, logits16] = prefilled(r16);
  EXPECT_EQ(read_snapshot_header(blob16).state_dtype, "bfloat16");
  EXPECT_EQ(read_snapshot_header(blob32).state_dtype, "float32");

  Sequence seq = restore_sequence(r16, blob16);
  Sequence* seqs[] = {&seq};
  std::vector<int32_t> next = {prompt[0]};
  EXPECT_EQ(r16.step(seqs, std::span(&next, 1)), logits16) << "restored bf16 state continues exactly";
  r16.close(seq);

  for (auto [runner, blob, want] : {std::tuple{&r32, &blob16, "bfloat16"}, std::tuple{&r16, &blob32, "float32"}}) {
    try {
      restore_sequence(*runner, *blob);
      ADD_FAILURE() << "a " << want << " snapshot was restored into a runner of the other dtype";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string("snapshot holds ") + want), std::string::npos) << e.what();
    }
    EXPECT_EQ(runner->free_slots(), runner->states().n_slots()) << "a refused restore took a slot";
  }
}

// An f16 state snapshots and restores too: the blob says "float16" and the restored sequence
// continues exactly (the f16 values round-trip through fp32 unchanged).
TEST_P(StateDtypeModel, F16SnapshotRestoresExactly) {
  CpuBackend cpu;
  const std::vector<int32_t> prompt = greedy_prompt(GetParam());
  ModelRunner r(model_dir(GetParam()), cpu, options(DType::F16));
  Sequence seq = r.open();
  Sequence* seqs[] = {&seq};
  r.step(seqs, std::span(&prompt, 1));
  const std::string blob = snapshot_sequence(r, seq, prompt);
  const std::vector<int32_t> next = {prompt[0]};
  const std::vector<float> want = r.step(seqs, std::span(&next, 1));
  r.close(seq);
  EXPECT_EQ(read_snapshot_header(blob).state_dtype, "float16");
  Sequence restored = restore_sequence(r, blob);
  Sequence* rs[] = {&restored};
  EXPECT_EQ(r.step(rs, std::span(&next, 1)), want) << "restored f16 state continues exactly";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, StateDtypeModel, ::testing::Values("mamba-tiny", "mamba2-tiny", "jamba-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

TEST(StateDtype, RunnerRefusesOtherStateDtypes) {
  CpuBackend cpu;
  for (DType d : {DType::F64, DType::I32}) {
    try {
      ModelRunner r(model_dir("mamba2-tiny"), cpu, options(d));
      ADD_FAILURE() << "state dtype " << dtype_name(d) << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("state_dtype"), std::string::npos) << e.what();
    }
  }
}

// The memory budget counts the state at its dtype: a budget that holds 2 fp32 slots holds 3
// with a bf16 SSM state (mamba2-tiny: 4224 B conv + 12288 B SSM -> 4224 + 6144; no KV cache).
TEST(StateDtype, MemoryBudgetUsesTheStateDtype) {
  CpuBackend cpu;
  RunnerOptions o = options(DType::F32);
  o.max_sequences = 8;
  const int64_t slot32 = int64_t(ModelRunner(model_dir("mamba2-tiny"), cpu, o).states().bytes_per_slot());
  o.cache_memory_bytes = 2 * slot32;
  EXPECT_EQ(ModelRunner(model_dir("mamba2-tiny"), cpu, o).max_sequences(), 2);
  o.state_dtype = DType::BF16;
  EXPECT_EQ(ModelRunner(model_dir("mamba2-tiny"), cpu, o).max_sequences(), 3);
}

}  // namespace
}  // namespace statelm
