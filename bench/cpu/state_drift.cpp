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
// On CUDA (--device cuda: bf16 weights and activations, the product's numerics) the hook
// downloads the SSD's inputs, so the fp64 replay sees the very bf16 values the kernels read. The
// CUDA kernels keep the state in fp32, bf16 or fp16 as the CPU does (fp16 overflows to inf past
// 65504 on both, unclamped). --ref-heads K replays heads 0..K-1 of each layer only (each head's
// recurrence is independent): the full fp64 replay of a 2.7B-shaped layer is 0.7 TFLOP per 1M
// tokens, on the host.
//
// Usage: statelm_state_drift [--model DIR|CONFIG] [--random-weights] [--tokens N] [--chunk C]
//                            [--layers 0,7] [--dtypes float32,bfloat16,float16] [--seed S]
//                            [--device cpu|cuda] [--ref-heads K] [--json-file F]
//   default: models/shakespeare-mamba2 on the CPU, 65536 tokens in chunks of 256, first and
//   last layer, every head. 1M tokens: --tokens 1048576 (minutes on 2 cores). --json-file: the
//   table as JSON too, rewritten after every row (a run cut short keeps its rows).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "bench_backend.h"
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
  std::string device = "cpu";
  int64_t ref_heads = 0;  // 0: every head
  std::string json_file;
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
    else if (arg == "--device") a.device = value();
    else if (arg == "--ref-heads") a.ref_heads = std::stoll(value());
    else if (arg == "--json-file") a.json_file = value();
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
           "[--layers L,...] [--dtypes float32,bfloat16,float16] [--seed S] [--device cpu|cuda] [--ref-heads K] "
           "[--json-file F])");
    }
  }
  if (a.tokens < 1 || a.chunk < 1) fail(ErrorKind::InvalidArgument, "--tokens and --chunk must be positive");
  if (a.ref_heads < 0) fail(ErrorKind::InvalidArgument, "--ref-heads must be positive (0: every head)");
  if (a.dtypes.empty() || a.dtypes[0] != DType::F32) a.dtypes.insert(a.dtypes.begin(), DType::F32);  // the reference
  return a;
}

// A tensor's rows on the host as fp32: CPU fp32 tensors are read in place; others (device, or
// bf16) are downloaded whole-row-span: a row-strided view whose last dimension is contiguous
// covers (rows - 1) * stride + width elements of its parent, which download as one flat piece.
struct HostRows {
  const float* data = nullptr;
  int64_t stride = 0;  // elements between rows
};

HostRows host_rows(Backend& backend, const Tensor& t, std::vector<float>& buffer) {
  STATELM_CHECK(t.ndim == 2 && (t.stride[1] == 1 || t.shape[1] == 1), "state_drift: a 2-D row view, got ", t.describe());
  if (t.device == Device::Cpu && t.dtype == DType::F32) return {t.ptr<float>(), t.stride[0]};
  const int64_t span = t.shape[0] == 0 ? 0 : (t.shape[0] - 1) * t.stride[0] + t.shape[1];
  buffer.resize(size_t(span));
  if (span) backend.download(Tensor::contiguous(t.data, t.dtype, {span}, t.device), buffer.data());
  return {buffer.data(), t.stride[0]};
}

// One Mamba-2 layer's SSD recurrence in double precision, fed the inputs the engine's SSD saw:
//   dt = softplus(dt_raw + dt_bias) (clamped when the model limits it)
//   S[h, p, n] <- exp(dt * A[h]) * S[h, p, n] + dt * x[h, p] * B[g(h), n]
// for heads 0..heads-1 (each head's recurrence is its own), split across the host's threads.
class Fp64Ssd {
 public:
  Fp64Ssd(const Mamba2Dims& m, const Mamba2Weights& w, Backend& backend, int64_t heads)
      : m_(m), heads_(heads > 0 ? std::min(heads, m.n_heads) : m.n_heads) {
    A_.resize(size_t(m.n_heads));
    dt_bias_.resize(size_t(m.n_heads));
    backend.download(w.A, A_.data());
    backend.download(w.dt_bias, dt_bias_.data());
    S_.assign(size_t(heads_ * m.head_dim * m.d_state), 0.0);
  }

  int64_t heads() const { return heads_; }

  // xbc: [T, conv_dim] = x | B | C, as the SSD reads it.
  void set_inputs(Backend& backend, const Tensor& xbc) { xbc_ = host_rows(backend, xbc, xbc_buffer_); }

  // dt: [T, H] raw (before dt_bias and softplus), a row-strided view.
  void advance(Backend& backend, const Tensor& dt) {
    const HostRows d = host_rows(backend, dt, dt_buffer_);
    const int64_t T = dt.shape[0];
    const int64_t workers = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, heads_);
    std::vector<std::thread> pool;
    for (int64_t k = 0; k < workers; ++k)
      pool.emplace_back([&, k] { advance_heads(d, T, heads_ * k / workers, heads_ * (k + 1) / workers); });
    for (auto& th : pool) th.join();
  }

  // ||got - S|| / ||S|| over the replayed heads; `got` is the slot's state [H, P, N].
  double relative_error(std::span<const float> got) const {
    double diff = 0, ref = 0;
    for (size_t i = 0; i < S_.size(); ++i) {
      diff += (double(got[i]) - S_[i]) * (double(got[i]) - S_[i]);
      ref += S_[i] * S_[i];
    }
    return ref > 0 ? std::sqrt(diff / ref) : std::sqrt(diff);
  }

 private:
  void advance_heads(const HostRows& dt, int64_t T, int64_t h0, int64_t h1) {
    const int64_t P = m_.head_dim, N = m_.d_state, G = m_.n_groups, Di = m_.d_inner;
    const int64_t heads_per_group = m_.n_heads / G;
    for (int64_t t = 0; t < T; ++t) {
      const float* row = xbc_.data + t * xbc_.stride;
      const float* dt_row = dt.data + t * dt.stride;
      for (int64_t h = h0; h < h1; ++h) {
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

  Mamba2Dims m_;
  int64_t heads_;
  std::vector<float> A_, dt_bias_;
  std::vector<double> S_;
  HostRows xbc_;
  std::vector<float> xbc_buffer_, dt_buffer_;
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
    const auto& m = std::get<Mamba2Dims>(r.runner->spec().layers[size_t(layer)].mixer);
    worst = std::max(worst, ref.relative_error(std::span(state).first(size_t(ref.heads() * m.head_dim * m.d_state))));
  }
  return worst;
}

using bench::make_backend;

void write_json(const std::string& path, const nlohmann::json& j) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) fail(ErrorKind::Io, "--json-file: cannot write ", tmp);
  const std::string text = j.dump(1) + "\n";
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !ok) fail(ErrorKind::Io, "--json-file: cannot write ", tmp);
  std::filesystem::rename(tmp, path);
}

int run(const Args& a) {
  const std::unique_ptr<Backend> backend = make_backend(a.device);
  Backend& be = *backend;
  RunnerOptions o;
  o.max_sequences = 1;
  o.max_context = a.tokens + 1;  // hybrids: KV for the whole run
  o.random_weights = a.random_weights;
  o.seed = a.seed;
  std::vector<Run> runs;
  for (DType d : a.dtypes) {
    o.state_dtype = d;
    Run r{d, std::make_unique<ModelRunner>(a.model, be, o), {}, {}, {}, 0};
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
                                     r.runner->weights().layers[size_t(l)].mamba2, be, a.ref_heads));
    }
    Run* self = &r;
    r.runner->forward().set_debug_hook([self, &be](int64_t layer, const std::string& name, const Tensor& t) {
      for (auto& [l, ref] : self->refs) {
        if (l != layer) continue;
        if (name == "mamba2_xbc") ref.set_inputs(be, t);
        else if (name == "mamba2_dt") ref.advance(be, t);
      }
    });
  }

  const int64_t ref_heads = runs[0].refs.empty() ? 0 : runs[0].refs[0].second.heads();
  std::printf("# %s (%s%s) on %s (%s weights and activations), %lld tokens in spans of %lld (%s); fp64 state "
              "reference on heads 0-%lld of layer(s)",
              a.model.c_str(), spec.architecture.c_str(), a.random_weights ? ", random weights" : "", a.device.c_str(),
              std::string(dtype_name(be.compute_dtype())).c_str(), (long long)a.tokens, (long long)a.chunk,
              a.chunk == 1 ? "decode: state rounded after every token" : "chunked prefill", (long long)ref_heads - 1);
  for (int64_t l : layers) std::printf(" %lld", (long long)l);
  nlohmann::json out = {{"model", a.model},
                        {"architecture", spec.architecture},
                        {"random_weights", a.random_weights},
                        {"device", a.device},
                        {"compute_dtype", dtype_name(be.compute_dtype())},
                        {"tokens", a.tokens},
                        {"chunk", a.chunk},
                        {"layers", layers},
                        {"ref_heads", ref_heads},
                        {"seed", a.seed},
                        {"complete", false},
                        {"rows", nlohmann::json::array()}};
  for (const Run& r : runs) out["state_dtypes"].push_back(dtype_name(r.dtype));
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
      nlohmann::json row = {{"position", pos},
                            {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
      for (Run& r : runs) {
        nlohmann::json& cell = row[std::string(dtype_name(r.dtype))];
        if (r.dtype != DType::F32) {
          const bool same = argmax(r.logits) == argmax(runs[0].logits);
          const double err = logits_error(r.logits, runs[0].logits);
          r.agree += same;
          std::printf("  %12.3e %7s", err, same ? "same" : "DIFFERS");
          cell["logits_error"] = err;
          cell["argmax_same"] = same;
        }
        const double serr = state_error(r);
        std::printf("  %14.3e", serr);
        cell["state_error"] = serr;
      }
      std::printf("\n");
      std::fflush(stdout);
      out["rows"].push_back(row);
      if (!a.json_file.empty()) write_json(a.json_file, out);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("# %.1f s;", seconds);
  for (const Run& r : runs)
    if (r.dtype != DType::F32)
      std::printf(" %s argmax agrees at %lld of %lld reported positions;", std::string(dtype_name(r.dtype)).c_str(),
                  (long long)r.agree, (long long)reports);
  std::printf("\n");
  out["seconds"] = seconds;
  out["complete"] = true;
  if (!a.json_file.empty()) write_json(a.json_file, out);
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
