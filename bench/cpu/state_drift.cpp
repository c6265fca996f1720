// How far a reduced-precision recurrent state drifts over a long sequence.
//
// One runner per state dtype (fp32, bf16, fp16) of the same model is fed the same token ids
// (fixed-seed RNG) in spans of --chunk tokens: --chunk 1 decodes every token (the state is
// rounded after each one, the worst case); a larger chunk is a chunked prefill (rounded once
// per span). At positions chunk * 2^k and at the end it reports, per dtype:
//   - logits: max |logits - logits_fp32| / max |logits_fp32| of the last token, and whether
//     the argmax agrees with the fp32 run's;
//   - state: for the Mamba-2 layers in --layers, ||S - S_ref|| / ||S_ref|| (Frobenius), where
//     S_ref is the same layer's recurrence replayed in fp64 on the CPU from exactly the inputs
//     (conv output x, B, C and raw dt) that this run's SSD saw. So it is the error of the state
//     storage and the fp32 arithmetic alone, not of upstream layers (which the logits show).
//
// Usage: statelm_state_drift [--model DIR|CONFIG] [--random-weights] [--tokens N] [--chunk C]
//                            [--layers 0,7] [--dtypes float32,bfloat16,float16] [--seed S]
//   default: models/shakespeare-mamba2, 65536 tokens in chunks of 256, first and last layer.
//   1M tokens: --tokens 1048576 (minutes on 2 cores).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/model_runner.h"

namespace statelm {
namespace {

struct Args {
  std::string model = std::string(STATELM_SOURCE_DIR) + "/models/shakespeare-mamba2";
  bool random_weights = false;
  int64_t tokens = 65536, chunk = 256;
  std::vector<int64_t> layers;  // empty: first and last Mamba-2 layer
  std::vector<DType> dtypes = {DType::F32, DType::BF16, DType::F16};
  uint64_t seed = 1234;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(ErrorKind::InvalidArgument, arg, " needs a value");
      return argv[++i];
    };
    if (arg == "--model") a.model = value();
    else if (arg == "--random-weights") a.random_weights = true;
    else if (arg == "--tokens") a.tokens = std::stoll(value());
    else if (arg == "--chunk") a.chunk = std::stoll(value());
    else if (arg == "--seed") a.seed = std::stoull(value());
    else if (arg == "--layers") {
      for (const auto& l : split(value())) a.layers.push_back(std::stoll(l));
    } else if (arg == "--dtypes") {
      a.dtypes.clear();
      for (const auto& d : split(value())) {
        auto t = dtype_from_name(d);
        if (!t || (*t != DType::F32 && *t != DType::BF16 && *t != DType::F16))
          fail(ErrorKind::InvalidArgument, "--dtypes: ", d, " is not float32, bfloat16 or float16");
        a.dtypes.push_back(*t);
      }
    } else {
      fail(ErrorKind::InvalidArgument, "unknown argument ", arg,
           " (usage: statelm_state_drift [--model DIR|CONFIG] [--random-weights] [--tokens N] [--chunk C] "
           "[--layers L,...] [--dtypes float32,bfloat16,float16] [--seed S])");
    }
  }
  if (a.tokens < 1 || a.chunk < 1) fail(ErrorKind::InvalidArgument, "--tokens and --chunk must be positive");
  if (a.dtypes.empty() || a.dtypes[0] != DType::F32) a.dtypes.insert(a.dtypes.begin(), DType::F32);  // the reference
  return a;
}

// One Mamba-2 layer's SSD recurrence in double precision, fed the inputs the engine's SSD saw:
//   dt = softplus(dt_raw + dt_bias) (clamped when the model limits it)
//   S[h, p, n] <- exp(dt * A[h]) * S[h, p, n] + dt * x[h, p] * B[g(h), n]
class Fp64Ssd {
 public:
  Fp64Ssd(const Mamba2Dims& m, const Mamba2Weights& w, Backend& backend) : m_(m) {
    A_.resize(size_t(m.n_heads));
    dt_bias_.resize(size_t(m.n_heads));
    backend.download(w.A, A_.data());
    backend.download(w.dt_bias, dt_bias_.data());
    S_.assign(size_t(m.n_heads * m.head_dim * m.d_state), 0.0);
  }

  void set_inputs(const Tensor& xbc) { xbc_ = xbc; }

  // dt: [T, H] row-strided view; xbc_: [T, conv_dim] = x | B | C (host fp32, CPU backend).
  void advance(const Tensor& dt) {
    const int64_t H = m_.n_heads, P = m_.head_dim, N = m_.d_state, G = m_.n_groups, Di = m_.d_inner;
    const int64_t heads_per_group = H / G;
    for (int64_t t = 0; t < dt.shape[0]; ++t) {
      const float* row = xbc_.ptr<float>() + t * xbc_.stride[0];
      const float* dt_row = dt.ptr<float>() + t * dt.stride[0];
      for (int64_t h = 0; h < H; ++h) {
        const double raw = double(dt_row[h]) + double(dt_bias_[size_t(h)]);
        double step = raw > 20.0 ? raw : std::log1p(std::exp(raw));
        if (m_.dt_limited) step = std::clamp(step, double(m_.dt_min), double(m_.dt_max));
        const double decay = std::exp(step * double(A_[size_t(h)]));
        const float* B = row + Di + (h / heads_per_group) * N;
        for (int64_t p = 0; p < P; ++p) {
          const double xdt = step * double(row[h * P + p]);
          double* s = S_.data() + (h * P + p) * N;
          for (int64_t n = 0; n < N; ++n) s[n] = decay * s[n] + xdt * double(B[n]);
        }
      }
    }
  }

  // ||got - S|| / ||S||
  double relative_error(std::span<const float> got) const {
    double diff = 0, ref = 0;
    for (size_t i = 0; i < S_.size(); ++i) {
      diff += (double(got[i]) - S_[i]) * (double(got[i]) - S_[i]);
      ref += S_[i] * S_[i];
    }
    return ref > 0 ? std::sqrt(diff / ref) : std::sqrt(diff);
  }

 private:
  Mamba2Dims m_;
  std::vector<float> A_, dt_bias_;
  std::vector<double> S_;
  Tensor xbc_;
};

struct Run {
  DType dtype;
  std::unique_ptr<ModelRunner> runner;
  Sequence seq;
  std::vector<std::pair<int64_t, Fp64Ssd>> refs;  // (layer, its fp64 recurrence)
  std::vector<float> logits;
  int64_t agree = 0;  // positions reported where the argmax matched fp32's
};

int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

double logits_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  return scale > 0.0 ? err / scale : err;
}

double state_error(Run& r) {
  double worst = 0;
  std::vector<float> state;
  for (auto& [layer, ref] : r.refs) {
    const Tensor slot = r.runner->states().ssm(layer).rows(r.seq.slot, 1);
    state.resize(size_t(slot.numel()));
    r.runner->backend().download(slot, state.data());
    worst = std::max(worst, ref.relative_error(state));
  }
  return worst;
}

int run(const Args& a) {
  CpuBackend cpu;
  RunnerOptions o;
  o.max_sequences = 1;
  o.max_context = a.tokens + 1;  // hybrids: KV for the whole run
  o.random_weights = a.random_weights;
  o.seed = a.seed;
  std::vector<Run> runs;
  for (DType d : a.dtypes) {
    o.state_dtype = d;
    Run r{d, std::make_unique<ModelRunner>(a.model, cpu, o), {}, {}, {}, 0};
    r.seq = r.runner->open();
    runs.push_back(std::move(r));
  }
  const ModelSpec& spec = runs[0].runner->spec();
  std::vector<int64_t> layers = a.layers;
  if (layers.empty()) {
    for (int64_t l = 0; l < spec.n_layers(); ++l)
      if (std::holds_alternative<Mamba2Dims>(spec.layers[size_t(l)].mixer)) layers.push_back(l);
    if (layers.size() > 2) layers = {layers.front(), layers.back()};
  }
  for (Run& r : runs) {
    for (int64_t l : layers) {
      if (l < 0 || l >= spec.n_layers() || !std::holds_alternative<Mamba2Dims>(spec.layers[size_t(l)].mixer))
        fail(ErrorKind::InvalidArgument, "--layers: layer ", l, " is not a Mamba-2 layer of this model");
      r.refs.emplace_back(l, Fp64Ssd(std::get<Mamba2Dims>(spec.layers[size_t(l)].mixer),
                                     r.runner->weights().layers[size_t(l)].mamba2, cpu));
    }
    Run* self = &r;
    r.runner->forward().set_debug_hook([self](int64_t layer, const std::string& name, const Tensor& t) {
      for (auto& [l, ref] : self->refs) {
        if (l != layer) continue;
        if (name == "mamba2_xbc") ref.set_inputs(t);
        else if (name == "mamba2_dt") ref.advance(t);
      }
    });
  }

  std::printf("# %s (%s%s), %lld tokens in spans of %lld (%s); fp64 state reference on layer(s)", a.model.c_str(),
              spec.architecture.c_str(), a.random_weights ? ", random weights" : "", (long long)a.tokens,
              (long long)a.chunk, a.chunk == 1 ? "decode: state rounded after every token" : "chunked prefill");
  for (int64_t l : layers) std::printf(" %lld", (long long)l);
  std::printf("\n# logits err = max|logits - logits_fp32| / max|logits_fp32| (last token); state err = "
              "||S - S_fp64|| / ||S_fp64|| (worst layer)\n%10s", "position");
  for (const Run& r : runs) {
    const std::string n(dtype_name(r.dtype));
    if (r.dtype != DType::F32) std::printf("  %12s %7s", (n + " logits").c_str(), "argmax");
    std::printf("  %14s", (n + " state").c_str());
  }
  std::printf("\n");

  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int32_t> ids(0, int32_t(spec.vocab_size - 1));
  const auto t0 = std::chrono::steady_clock::now();
  int64_t reports = 0, next_report = a.chunk;
  for (int64_t pos = 0; pos < a.tokens;) {
    const int64_t n = std::min(a.chunk, a.tokens - pos);
    std::vector<int32_t> feed(static_cast<size_t>(n));
    for (auto& id : feed) id = ids(rng);
    for (Run& r : runs) {
      Sequence* seqs[] = {&r.seq};
      r.logits = r.runner->step(seqs, std::span(&feed, 1));
    }
    pos += n;
    if (pos >= next_report || pos == a.tokens) {
      next_report = std::max(next_report * 2, pos + 1);
      ++reports;
      std::printf("%10lld", (long long)pos);
      for (Run& r : runs) {
        if (r.dtype != DType::F32) {
          const bool same = argmax(r.logits) == argmax(runs[0].logits);
          r.agree += same;
          std::printf("  %12.3e %7s", logits_error(r.logits, runs[0].logits), same ? "same" : "DIFFERS");
        }
        std::printf("  %14.3e", state_error(r));
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("# %.1f s;", seconds);
  for (const Run& r : runs)
    if (r.dtype != DType::F32)
      std::printf(" %s argmax agrees at %lld of %lld reported positions;", std::string(dtype_name(r.dtype)).c_str(),
                  (long long)r.agree, (long long)reports);
  std::printf("\n");
  for (Run& r : runs) r.runner->close(r.seq);
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
