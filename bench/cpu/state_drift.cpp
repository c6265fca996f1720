// How far a bf16 recurrent state drifts from an fp32 one over a long decode.
//
// Two runners of the same model (one with RunnerOptions::state_dtype = F32, one BF16) are fed
// the same N token ids (fixed-seed RNG), one token per step, so every token is a decode step
// and the bf16 state is rounded after every token: the worst case for accumulated rounding. At
// every power-of-two position (and the last) it prints the bf16 run's logit error relative to
// the fp32 run, max |Δ| / max |fp32|, whether the argmax agrees there, and over the window
// since the previous row the worst relative error and the share of positions whose argmax
// agrees.
//
// Usage: statelm_state_drift [--model DIR|CONFIG] [--random-weights] [--tokens N] [--seed S]
//   default model tests/fixtures/models/mamba2-tiny, 4096 tokens; for a size that matters:
//   statelm_state_drift --model bench/configs/mamba2-130m.json --random-weights --tokens 1024
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/model_runner.h"

namespace statelm {
namespace {

struct Args {
  std::string model = std::string(STATELM_SOURCE_DIR) + "/tests/fixtures/models/mamba2-tiny";
  bool random_weights = false;
  int64_t tokens = 4096;
  uint64_t seed = 1234;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(ErrorKind::InvalidArgument, arg, " needs a value");
      return argv[++i];
    };
    if (arg == "--model") {
      a.model = value();
    } else if (arg == "--random-weights") {
      a.random_weights = true;
    } else if (arg == "--tokens") {
      a.tokens = std::stoll(value());
    } else if (arg == "--seed") {
      a.seed = std::stoull(value());
    } else {
      fail(ErrorKind::InvalidArgument, "unknown argument ", arg,
           " (usage: statelm_state_drift [--model DIR|CONFIG] [--random-weights] [--tokens N] [--seed S])");
    }
  }
  if (a.tokens < 1) fail(ErrorKind::InvalidArgument, "--tokens must be positive");
  return a;
}

int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  return scale > 0.0 ? err / scale : err;
}

int run(const Args& a) {
  CpuBackend cpu;
  RunnerOptions o;
  o.max_sequences = 1;
  o.max_context = a.tokens + 1;  // hybrids: KV for the whole run
  o.random_weights = a.random_weights;
  o.seed = a.seed;
  ModelRunner r32(a.model, cpu, o);
  o.state_dtype = DType::BF16;
  ModelRunner r16(a.model, cpu, o);
  const ModelSpec& spec = r32.spec();
  std::printf("# %s (%s%s), %lld tokens decoded one at a time; state fp32 %zu B/slot, bf16 %zu B/slot\n",
              a.model.c_str(), spec.architecture.c_str(), a.random_weights ? ", random weights" : "",
              (long long)a.tokens, r32.states().bytes_per_slot(), r16.states().bytes_per_slot());
  std::printf("# rel err = max|logits_bf16 - logits_fp32| / max|logits_fp32|; window = positions since the previous row\n");
  std::printf("%8s  %12s  %8s  %16s  %15s\n", "position", "rel err", "argmax", "window max err", "window agree");

  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int32_t> ids(0, int32_t(spec.vocab_size - 1));
  Sequence s32 = r32.open(), s16 = r16.open();
  Sequence* p32[] = {&s32};
  Sequence* p16[] = {&s16};
  double window_err = 0.0;
  int64_t window_agree = 0, window_len = 0, total_agree = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t pos = 1; pos <= a.tokens; ++pos) {
    const std::vector<int32_t> feed = {ids(rng)};
    const std::vector<float> l32 = r32.step(p32, std::span(&feed, 1));
    const std::vector<float> l16 = r16.step(p16, std::span(&feed, 1));
    const double err = relative_error(l16, l32);
    const bool agree = argmax(l16) == argmax(l32);
    window_err = std::max(window_err, err);
    window_agree += agree;
    total_agree += agree;
    ++window_len;
    if ((pos & (pos - 1)) == 0 || pos == a.tokens) {
      std::printf("%8lld  %12.3e  %8s  %16.3e  %8lld/%-6lld\n", (long long)pos, err, agree ? "same" : "DIFFERS",
                  window_err, (long long)window_agree, (long long)window_len);
      std::fflush(stdout);
      window_err = 0.0;
      window_agree = window_len = 0;
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("# argmax agrees at %lld of %lld positions; %.1f ms per token (both runs)\n", (long long)total_agree,
              (long long)a.tokens, 1e3 * seconds / double(a.tokens));
  r32.close(s32);
  r16.close(s16);
  return 0;
}

}  // namespace
}  // namespace statelm

int main(int argc, char** argv) {
  try {
    return statelm::run(statelm::parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "statelm_state_drift: %s\n", e.what());
    return 1;
  }
}
