// The CPU kernels of the SSM op families (conv1d, Mamba-1 selective scan, Mamba-2 SSD) against
// the naive double-precision references of reference_ssm.h, on random inputs with odd sizes.
//
// Every op runs through one harness (OpHarness): fixed random inputs of T tokens, laid out as
// the forward lays them out (x, B, C, z, dt as column slices of wider matrices: row-strided
// views), and a state tensor of n_slots rows. The same three checks apply to each op:
//   - a batch of spans of mixed lengths (1, 7, 33, 64, 65, …), slots in shuffled order, tokens
//     of the spans in shuffled order, some spans fresh (pos 0, zero state) and some continuing
//     from a random state, matches the reference span by span, outputs and final states, and
//     leaves the slots of no span untouched;
//   - one sequence processed as one span equals the same sequence cut into pieces at awkward
//     boundaries (1, 7, chunk−1, chunk, chunk+1, …), the state carrying between calls;
//   - two sequences in one batch give what each gives alone (no cross-talk).
// Tolerances are relative to the largest |reference| value of the compared tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "unit/op_test_util.h"
#include "unit/reference_ssm.h"

namespace statelm {
namespace {

using test::expect_close;
using test::gather;
using test::random_vector;
using test::Wide;

constexpr double kTol = 2e-6;  // observed ≤ 4e-7; 1e-5 let a cancellation bug (4e-6) through

void scatter(const Tensor& t, int64_t start, const std::vector<float>& v) {
  const int64_t inner = t.numel() / t.shape[0];
  for (size_t r = 0; r * size_t(inner) < v.size(); ++r)
    std::copy_n(v.begin() + int64_t(r) * inner, inner, t.f32() + (start + int64_t(r)) * t.stride[0]);
}

// One op on fixed random inputs of T tokens.
class OpHarness {
 public:
  virtual ~OpHarness() = default;
  // Applies the op to `spans` (their rows of the outputs and their slots' states change).
  virtual void run(std::span<const SeqSpan> spans) = 0;
  // The reference for one span from `state_row` (updated in place); returns its output rows.
  virtual std::vector<float> reference(const SeqSpan& span, std::vector<float>& state_row) = 0;
  virtual Tensor out() = 0;
  virtual Tensor state() = 0;

  int64_t T = 0;
  CpuBackend cpu;

  std::vector<float> out_rows(int64_t start, int64_t len) { return gather(out(), start, len); }
  std::vector<float> state_row(int64_t slot) { return gather(state(), slot, 1); }
  void set_state_row(int64_t slot, const std::vector<float>& v) { scatter(state(), slot, v); }
  int64_t state_row_size() { return state().numel() / state().shape[0]; }
};

// ---------------------------------------------------------------------------------------------

class ConvHarness : public OpHarness {
 public:
  ConvHarness(std::mt19937& rng, int64_t tokens, int64_t n_slots, int64_t C, int64_t K, bool bias, bool silu)
      : C_(C), K_(K), silu_(silu), x_(rng, tokens, C), out_(rng, tokens, C) {
    T = tokens;
    w_ = random_vector(rng, size_t(C * K), -0.7f, 0.7f);
    if (bias) bias_ = random_vector(rng, size_t(C), -0.5f, 0.5f);
    state_ = random_vector(rng, size_t(n_slots * C * (K - 1)), -1.0f, 1.0f);
    p_.x = x_.full;
    p_.out = out_.full;
    p_.weight = Tensor::contiguous(w_.data(), DType::F32, {C, K});
    if (bias) p_.bias = Tensor::contiguous(bias_.data(), DType::F32, {C});
    p_.state = Tensor::contiguous(state_.data(), DType::F32, {n_slots, C, K - 1});
    p_.silu = silu;
  }
  void run(std::span<const SeqSpan> spans) override { cpu.conv1d(p_, {T, spans}); }
  std::vector<float> reference(const SeqSpan& sp, std::vector<float>& state_row) override {
    std::vector<float> out;
    ref::conv1d(gather(p_.x, sp.start, sp.len), sp.len, C_, w_, K_, bias_, silu_, state_row, out);
    return out;
  }
  Tensor out() override { return p_.out; }
  Tensor state() override { return p_.state; }

  Conv1dParams p_;

 private:
  int64_t C_, K_;
  bool silu_;
  Wide x_, out_;
  std::vector<float> w_, bias_, state_;
};

class ScanHarness : public OpHarness {
 public:
  ScanHarness(std::mt19937& rng, int64_t tokens, int64_t n_slots, int64_t Di, int64_t N, bool gate)
      : Di_(Di), N_(N), xz_(rng, tokens, 2 * Di), dbc_(rng, tokens, 3 + 2 * N), delta_(rng, tokens, Di, -2.0f, 1.0f),
        out_(rng, tokens, Di) {
    T = tokens;
    // A few pre-activations above softplus's threshold of 20, where it is the identity.
    for (size_t i = 0; i < delta_.buf.size(); i += 53) delta_.buf[i] = 24.0f;
    bias_ = random_vector(rng, size_t(Di), -3.0f, 0.0f);
    A_ = random_vector(rng, size_t(Di * N), -1.0f, 2.0f);
    for (float& a : A_) a = -std::exp(a);
    D_ = random_vector(rng, size_t(Di), -1.0f, 1.0f);
    state_ = random_vector(rng, size_t(n_slots * Di * N), -1.0f, 1.0f);
    p_.u = xz_.cols(0, Di);
    if (gate) p_.z = xz_.cols(Di, Di);
    p_.delta = delta_.full;
    p_.delta_bias = Tensor::contiguous(bias_.data(), DType::F32, {Di});
    p_.A = Tensor::contiguous(A_.data(), DType::F32, {Di, N});
    p_.B = dbc_.cols(3, N);
    p_.C = dbc_.cols(3 + N, N);
    p_.D = Tensor::contiguous(D_.data(), DType::F32, {Di});
    p_.state = Tensor::contiguous(state_.data(), DType::F32, {n_slots, Di, N});
    p_.out = out_.full;
  }
  void run(std::span<const SeqSpan> spans) override { cpu.selective_scan(p_, {T, spans}); }
  std::vector<float> reference(const SeqSpan& sp, std::vector<float>& state_row) override {
    std::vector<float> out;
    const std::vector<float> z = p_.z.defined() ? gather(p_.z, sp.start, sp.len) : std::vector<float>{};
    ref::selective_scan(gather(p_.u, sp.start, sp.len), gather(p_.delta, sp.start, sp.len), bias_, A_,
                        gather(p_.B, sp.start, sp.len), gather(p_.C, sp.start, sp.len), D_, z, sp.len, Di_, N_,
                        state_row, out);
    return out;
  }
  Tensor out() override { return p_.out; }
  Tensor state() override { return p_.state; }

  SelectiveScanParams p_;

 private:
  int64_t Di_, N_;
  Wide xz_, dbc_, delta_, out_;
  std::vector<float> bias_, A_, D_, state_;
};

struct SsdDims {
  int64_t H, P, G, N, chunk;
  bool dt_limited = false;
  // dt·A of −1…−10 per token: the log-decay from a chunk's start reaches −1000s within a chunk,
  // while the decay between neighbouring tokens still matters.
  bool strong_decay = false;
};

class SsdHarness : public OpHarness {
 public:
  SsdHarness(std::mt19937& rng, int64_t tokens, int64_t n_slots, const SsdDims& d)
      : d_(d), xbc_(rng, tokens, d.H * d.P + 2 * d.G * d.N), dt_(rng, tokens, d.H, -2.0f, 2.0f),
        out_(rng, tokens, d.H * d.P) {
    T = tokens;
    dt_bias_ = random_vector(rng, size_t(d.H), -3.0f, 0.5f);
    A_ = random_vector(rng, size_t(d.H), -1.0f, 1.5f);
    if (d.strong_decay) {
      for (float& v : dt_.buf) v = std::fabs(v);
      dt_bias_.assign(size_t(d.H), 0.0f);
      A_ = random_vector(rng, size_t(d.H), 0.5f, 1.5f);
    }
    for (float& a : A_) a = -std::exp(a);
    D_ = random_vector(rng, size_t(d.H), -1.0f, 1.0f);
    state_ = random_vector(rng, size_t(n_slots * d.H * d.P * d.N), -1.0f, 1.0f);
    p_.x = xbc_.cols(0, d.H * d.P).unflatten_last(d.H, d.P);
    p_.B = xbc_.cols(d.H * d.P, d.G * d.N).unflatten_last(d.G, d.N);
    p_.C = xbc_.cols(d.H * d.P + d.G * d.N, d.G * d.N).unflatten_last(d.G, d.N);
    p_.dt = dt_.full;
    p_.dt_bias = Tensor::contiguous(dt_bias_.data(), DType::F32, {d.H});
    p_.A = Tensor::contiguous(A_.data(), DType::F32, {d.H});
    p_.D = Tensor::contiguous(D_.data(), DType::F32, {d.H});
    p_.state = Tensor::contiguous(state_.data(), DType::F32, {n_slots, d.H, d.P, d.N});
    p_.out = out_.full.unflatten_last(d.H, d.P);
    p_.chunk_size = d.chunk;
    p_.dt_limited = d.dt_limited;
    p_.dt_min = 0.05f;
    p_.dt_max = 0.6f;
  }
  void run(std::span<const SeqSpan> spans) override { cpu.ssd(p_, {T, spans}); }
  std::vector<float> reference(const SeqSpan& sp, std::vector<float>& state_row) override {
    std::vector<float> out;
    ref::SsdShape s{sp.len, d_.H, d_.P, d_.G, d_.N, p_.dt_limited, p_.dt_min, p_.dt_max};
    ref::ssd(s, gather(p_.x, sp.start, sp.len), gather(p_.dt, sp.start, sp.len), dt_bias_, A_,
             gather(p_.B, sp.start, sp.len), gather(p_.C, sp.start, sp.len), D_, state_row, out);
    return out;
  }
  Tensor out() override { return p_.out; }
  Tensor state() override { return p_.state; }

  SsdParams p_;

 private:
  SsdDims d_;
  Wide xbc_, dt_, out_;
  std::vector<float> dt_bias_, A_, D_, state_;
};

// ---------------------------------------------------------------------------------------------
// The three checks.

int64_t total_tokens(const std::vector<int32_t>& lens) { return std::accumulate(lens.begin(), lens.end(), int64_t(0)); }

// Spans of the given lengths; slots 0..n_slots-1 shuffled (n_slots > spans: some slots stay
// unused), tokens placed in a shuffled span order; every other span continues (pos > 0).
std::vector<SeqSpan> mixed_spans(std::mt19937& rng, const std::vector<int32_t>& lens, int32_t n_slots) {
  std::vector<int32_t> slots(static_cast<size_t>(n_slots));
  std::vector<int32_t> order(lens.size());
  std::iota(slots.begin(), slots.end(), 0);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<SeqSpan> spans(lens.size());
  int32_t start = 0;
  for (int32_t i : order) {
    spans[size_t(i)] = {start, lens[size_t(i)], slots[size_t(i)], i % 2 == 1 ? 10 + 3 * i : 0};
    start += lens[size_t(i)];
  }
  return spans;
}

void check_against_reference(OpHarness& op, const std::vector<SeqSpan>& spans, int64_t n_slots, double tol) {
  const std::vector<float> zero(size_t(op.state_row_size()), 0.0f);
  for (const SeqSpan& sp : spans)
    if (sp.pos == 0) op.set_state_row(sp.slot, zero);  // the caller's guarantee for fresh sequences
  std::vector<std::vector<float>> before;
  for (int64_t s = 0; s < n_slots; ++s) before.push_back(op.state_row(s));

  op.run(spans);

  std::vector<bool> used(size_t(n_slots), false);
  for (size_t i = 0; i < spans.size(); ++i) {
    const SeqSpan& sp = spans[i];
    used[size_t(sp.slot)] = true;
    std::vector<float> state = before[size_t(sp.slot)];
    const std::vector<float> want = op.reference(sp, state);
    const std::string what = "span " + std::to_string(i) + " (len " + std::to_string(sp.len) + ", slot " +
                             std::to_string(sp.slot) + ", pos " + std::to_string(sp.pos) + ")";
    expect_close(op.out_rows(sp.start, sp.len), want, tol, what + " output");
    expect_close(op.state_row(sp.slot), state, tol, what + " state");
  }
  for (int64_t s = 0; s < n_slots; ++s) {
    if (!used[size_t(s)]) {
      EXPECT_EQ(op.state_row(s), before[size_t(s)]) << "slot " << s << " of no span changed";
    }
  }
}

// Runs tokens [0, T) of one sequence (slot 1, fresh) in one span, then again in pieces of the
// given lengths (the last piece takes the rest).
void check_split_equals_whole(OpHarness& op, const std::vector<int32_t>& pieces, double tol) {
  const int32_t T = int32_t(op.T), slot = 1;
  const std::vector<float> zero(size_t(op.state_row_size()), 0.0f);
  op.set_state_row(slot, zero);
  const SeqSpan whole{0, T, slot, 0};
  op.run({&whole, 1});
  const std::vector<float> out_whole = op.out_rows(0, T), state_whole = op.state_row(slot);

  op.set_state_row(slot, zero);
  int32_t start = 0;
  for (size_t i = 0; start < T; ++i) {
    const int32_t len = i < pieces.size() ? std::min(pieces[i], T - start) : T - start;
    const SeqSpan piece{start, len, slot, start};
    op.run({&piece, 1});
    start += len;
  }
  expect_close(op.out_rows(0, T), out_whole, tol, "split output");
  expect_close(op.state_row(slot), state_whole, tol, "split final state");
}

// Sequence a: tokens [0, la), slot 2, fresh; sequence b: tokens [la, T), slot 0, continuing.
void check_no_cross_talk(OpHarness& op, int32_t la) {
  const int32_t T = int32_t(op.T);
  const SeqSpan a{0, la, 2, 0}, b{la, T - la, 0, 5};
  op.set_state_row(a.slot, std::vector<float>(size_t(op.state_row_size()), 0.0f));
  const std::vector<float> a0 = op.state_row(a.slot), b0 = op.state_row(b.slot);

  op.run({&a, 1});
  op.run({&b, 1});
  const std::vector<float> out_alone = op.out_rows(0, T), sa = op.state_row(a.slot), sb = op.state_row(b.slot);

  op.set_state_row(a.slot, a0);
  op.set_state_row(b.slot, b0);
  const SeqSpan both[2] = {b, a};
  op.run(both);
  expect_close(op.out_rows(0, T), out_alone, 1e-6, "outputs together vs alone");
  expect_close(op.state_row(a.slot), sa, 1e-6, "state of a");
  expect_close(op.state_row(b.slot), sb, 1e-6, "state of b");
}

const std::vector<int32_t> kMixedLens = {1, 7, 33, 64, 65, 1, 16, 2};
const std::vector<int32_t> kPieces = {1, 7, 15, 16, 17, 1, 2};  // chunk 16: crosses and ends inside chunks

// ---------------------------------------------------------------------------------------------

TEST(SsmConv1d, MatchesReferenceOnMixedSpansForEveryK) {
  std::mt19937 rng(11);
  const int32_t n_slots = int32_t(kMixedLens.size()) + 2;
  struct Case { int64_t K; bool bias, silu; };
  for (const Case c : {Case{4, true, true}, Case{3, false, true}, Case{2, true, false}, Case{5, true, true}}) {
    SCOPED_TRACE("K=" + std::to_string(c.K));
    const auto spans = mixed_spans(rng, kMixedLens, n_slots);
    ConvHarness op(rng, total_tokens(kMixedLens), n_slots, 37, c.K, c.bias, c.silu);
    check_against_reference(op, spans, n_slots, kTol);
  }
}

// Long spans cut into several work items, and a kernel longer than a work item's tokens.
TEST(SsmConv1d, LongSpansAndLongKernels) {
  std::mt19937 rng(12);
  const std::vector<int32_t> lens = {200, 1, 3, 97};
  for (const int64_t K : {4, 40}) {
    SCOPED_TRACE("K=" + std::to_string(K));
    const auto spans = mixed_spans(rng, lens, 5);
    ConvHarness op(rng, total_tokens(lens), 5, 200, K, true, true);
    check_against_reference(op, spans, 5, kTol);
  }
}

TEST(SsmConv1d, SplitEqualsWholeAndNoCrossTalk) {
  std::mt19937 rng(13);
  ConvHarness split(rng, 80, 3, 37, 4, true, true);
  check_split_equals_whole(split, kPieces, kTol);
  ConvHarness pair(rng, 63, 3, 37, 4, true, true);
  check_no_cross_talk(pair, 40);
}

TEST(SsmSelectiveScan, MatchesReferenceOnMixedSpans) {
  std::mt19937 rng(21);
  const int32_t n_slots = int32_t(kMixedLens.size()) + 2;
  struct Case { int64_t Di, N; bool gate; };
  for (const Case c : {Case{45, 7, true}, Case{45, 13, false}, Case{100, 16, true}}) {
    SCOPED_TRACE("Di=" + std::to_string(c.Di) + " N=" + std::to_string(c.N));
    const auto spans = mixed_spans(rng, kMixedLens, n_slots);
    ScanHarness op(rng, total_tokens(kMixedLens), n_slots, c.Di, c.N, c.gate);
    check_against_reference(op, spans, n_slots, kTol);
  }
}

TEST(SsmSelectiveScan, SplitEqualsWholeAndNoCrossTalk) {
  std::mt19937 rng(22);
  ScanHarness split(rng, 80, 3, 45, 7, true);
  check_split_equals_whole(split, kPieces, kTol);
  ScanHarness pair(rng, 63, 3, 45, 13, true);
  check_no_cross_talk(pair, 40);
}

TEST(SsmSsd, MatchesReferenceOnMixedSpans) {
  std::mt19937 rng(31);
  const int32_t n_slots = int32_t(kMixedLens.size()) + 2;
  for (const SsdDims d : {SsdDims{6, 5, 2, 7, 16}, SsdDims{6, 5, 3, 13, 16, /*dt_limited=*/true},
                          SsdDims{6, 5, 1, 13, 64}, SsdDims{4, 37, 2, 21, 7}}) {
    SCOPED_TRACE("H=" + std::to_string(d.H) + " P=" + std::to_string(d.P) + " G=" + std::to_string(d.G) +
                 " N=" + std::to_string(d.N) + " chunk=" + std::to_string(d.chunk));
    const auto spans = mixed_spans(rng, kMixedLens, n_slots);
    SsdHarness op(rng, total_tokens(kMixedLens), n_slots, d);
    check_against_reference(op, spans, n_slots, kTol);
  }
}

// Model-sized heads (Mamba-2: P = 64, N = 128), so the full-vector paths of the chunk products
// and of the decay mask run: spans of 1, 150 and 300 tokens with chunk 128 and 256.
TEST(SsmSsd, MatchesReferenceAtModelHeadSizes) {
  std::mt19937 rng(32);
  const std::vector<int32_t> lens = {150, 1, 300};
  const int32_t n_slots = 4;
  for (const SsdDims d : {SsdDims{2, 64, 1, 128, 128}, SsdDims{4, 64, 2, 128, 256}}) {
    SCOPED_TRACE("chunk=" + std::to_string(d.chunk));
    const auto spans = mixed_spans(rng, lens, n_slots);
    SsdHarness op(rng, total_tokens(lens), n_slots, d);
    check_against_reference(op, spans, n_slots, kTol);
  }
}

// Long chunks of strongly decaying heads: the decay between tokens i and j must come from the
// sum of dt·A over (j, i], not from the difference of two sums from the chunk start, which are
// in the thousands there and would lose the bits that matter.
TEST(SsmSsd, MatchesReferenceWithStrongDecay) {
  std::mt19937 rng(34);
  const std::vector<int32_t> lens = {300, 1, 257};
  SsdDims d{4, 64, 1, 128, 256};
  d.strong_decay = true;
  const auto spans = mixed_spans(rng, lens, 4);
  SsdHarness op(rng, total_tokens(lens), 4, d);
  check_against_reference(op, spans, 4, kTol);
}

TEST(SsmSsd, SplitEqualsWholeAndNoCrossTalk) {
  std::mt19937 rng(33);
  SsdHarness split(rng, 80, 3, SsdDims{6, 5, 2, 7, 16});
  check_split_equals_whole(split, kPieces, kTol);
  SsdHarness pair(rng, 63, 3, SsdDims{6, 5, 3, 13, 16});
  check_no_cross_talk(pair, 40);
}

// ---------------------------------------------------------------------------------------------

TEST(SsmOps, RejectInconsistentArguments) {
  std::mt19937 rng(41);
  const SeqSpan one{0, 4, 0, 0};
  {
    ConvHarness op(rng, 8, 2, 37, 4, true, true);
    Conv1dParams p = op.p_;
    p.weight = p.weight.rows(0, 36);  // 36 channels of weights for 37 of input
    EXPECT_THROW(op.cpu.conv1d(p, {8, {&one, 1}}), Error);
    p = op.p_;
    p.out = p.x;  // in place: work items would read rows that others overwrite
    EXPECT_THROW(op.cpu.conv1d(p, {8, {&one, 1}}), Error);
    EXPECT_THROW(op.cpu.conv1d(op.p_, {7, {&one, 1}}), Error);  // token count differs from x
    const SeqSpan past_end{6, 4, 0, 0};
    EXPECT_THROW(op.cpu.conv1d(op.p_, {8, {&past_end, 1}}), Error);
    const SeqSpan bad_slot{0, 4, 2, 0};
    EXPECT_THROW(op.cpu.conv1d(op.p_, {8, {&bad_slot, 1}}), Error);
    const SeqSpan same_slot[2] = {{0, 4, 1, 0}, {4, 4, 1, 0}};
    EXPECT_THROW(op.cpu.conv1d(op.p_, {8, same_slot}), Error);
    const SeqSpan shared_tokens[2] = {{0, 5, 0, 0}, {4, 4, 1, 0}};
    EXPECT_THROW(op.cpu.conv1d(op.p_, {8, shared_tokens}), Error);
  }
  {
    ScanHarness op(rng, 8, 2, 45, 7, true);
    SelectiveScanParams p = op.p_;
    p.C = op.p_.C.cols(0, 6);  // N = 6 against A's 7
    EXPECT_THROW(op.cpu.selective_scan(p, {8, {&one, 1}}), Error);
  }
  {
    SsdHarness op(rng, 8, 2, SsdDims{6, 5, 2, 7, 16});
    SsdParams p = op.p_;
    p.B = op.p_.B.cols(0, 6);
    EXPECT_THROW(op.cpu.ssd(p, {8, {&one, 1}}), Error);  // B and C disagree on N
    SsdHarness four_groups(rng, 8, 2, SsdDims{6, 5, 4, 7, 16});
    EXPECT_THROW(four_groups.run({&one, 1}), Error);  // 6 heads in 4 groups
    p = op.p_;
    p.out = op.p_.x;  // the chunked path would overwrite x before reading it
    EXPECT_THROW(op.cpu.ssd(p, {8, {&one, 1}}), Error);
    try {
      p = op.p_;
      p.D = Tensor::contiguous(p.D.data, DType::F32, {5});
      op.cpu.ssd(p, {8, {&one, 1}});
      ADD_FAILURE() << "a D of 5 for 6 heads was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ssd: D"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace statelm
