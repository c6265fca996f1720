// statelm_cuda_kernel_bench: CudaBackend's ops one by one at the shapes of the peer benchmark
// (../shared/bench/peer_bench.py), on random inputs. Per case: the median time (kernel_bench.h
// says how it is timed), the bytes the op must move and the FLOPs it must do (formulas beside each
// case in kernel_cases_*.cpp), and those as fractions of the copy bandwidth and the bf16 matmul
// rate measured by the same backend in the same run (runtime/engine_bench.h). "limit" is the
// shorter time the hardware allows, max(bytes / copy rate, FLOPs / matmul rate); "%limit" is
// that over the measured time.
//
//   statelm_cuda_kernel_bench [--filter REGEX] [--json] [--json-file PATH] [--list] ...
// --filter matches "family name shape tag" of a case (ECMAScript regex, searched), e.g.
// --filter 'ssd_|attention_decode'. Needs a GPU; CI only compiles it (never a CTest test).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "backend/cuda/device_info.h"
#include "bench/cuda/kernel_bench.h"
#include "core/error.h"
#include "runtime/engine_bench.h"

namespace statelm::bench {
namespace {

struct MainOptions {
  std::string filter;
  bool list = false, json = false, roofline = true;
  std::string json_file;
  double max_seconds = 0;  // 0 = no limit
  int device = 0;
  uint64_t seed = 1;
  Options bench;
};

std::string label(const Case& c) {
  return c.family + " " + c.name + " " + c.shape + (c.tag.empty() ? "" : " " + c.tag);
}

void write_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << text << "\n";
    if (!f) fail(ErrorKind::Io, "--json-file: cannot write ", tmp);
  }
  std::filesystem::rename(tmp, path);
}

nlohmann::json case_json(const Case& c) {
  nlohmann::json j = {{"family", c.family}, {"name", c.name}, {"shape", c.shape}, {"params", c.params},
                      {"bytes", c.bytes},   {"flops", c.flops}};
  if (!c.tag.empty()) j["tag"] = c.tag;
  return j;
}

// Fills the measured fields of j (from a run of case c) against the roofline r.
void add_measurement(nlohmann::json& j, const Measured& m, const Roofline& r) {
  const double s = m.timing.median_s;
  const double bytes = m.bytes >= 0 ? m.bytes : j["bytes"].get<double>();
  const double flops = m.flops >= 0 ? m.flops : j["flops"].get<double>();
  j["bytes"] = bytes;
  j["flops"] = flops;
  j["ms"] = s * 1e3;
  j["min_ms"] = m.timing.min_s * 1e3;
  j["reps"] = m.timing.reps;
  j["calls_per_rep"] = m.timing.inner;
  j["method"] = m.method;
  if (m.method == "graph") {
    j["calls_per_graph"] = m.graph_calls;
    j["eager_ms"] = m.eager.median_s * 1e3;
  }
  j["bytes_per_second"] = bytes / s;
  j["flops_per_second"] = flops / s;
  if (!m.note.empty()) j["note"] = m.note;
  if (r.copy_bytes_per_s > 0 && r.matmul_flops_per_s > 0) {
    const double t_bytes = bytes / r.copy_bytes_per_s, t_flops = flops / r.matmul_flops_per_s;
    j["fraction_of_copy_bandwidth"] = t_bytes / s;
    j["fraction_of_matmul_rate"] = t_flops / s;
    j["limit_ms"] = std::max(t_bytes, t_flops) * 1e3;
    j["fraction_of_limit"] = std::max(t_bytes, t_flops) / s;
    j["bound"] = t_bytes >= t_flops ? "memory" : "compute";
  }
}

void print_row(FILE* f, const nlohmann::json& j) {
  std::string what = j["name"].get<std::string>();
  if (j.contains("tag")) what += " [" + j["tag"].get<std::string>() + "]";
  std::fprintf(f, "%-48s %-34s ", what.c_str(), j["shape"].get<std::string>().c_str());
  if (j.contains("error")) {
    std::fprintf(f, "ERROR %s\n", j["error"].get<std::string>().substr(0, 200).c_str());
    return;
  }
  if (j.contains("skipped")) {
    std::fprintf(f, "skipped (%s)\n", j["skipped"].get<std::string>().c_str());
    return;
  }
  if (!j.contains("ms")) {  // --list
    std::fprintf(f, "%10.1f MB %10.3f GFLOP\n", j["bytes"].get<double>() / 1e6, j["flops"].get<double>() / 1e9);
    return;
  }
  std::fprintf(f, "%10.4f ms%s %9.1f GB/s %8.2f TFLOP/s", j["ms"].get<double>(), j["method"] == "graph" ? "*" : " ",
               j["bytes_per_second"].get<double>() / 1e9, j["flops_per_second"].get<double>() / 1e12);
  if (j.contains("fraction_of_limit"))
    std::fprintf(f, " %5.1f%% copy %5.1f%% mm %5.1f%% limit (%s)", 100 * j["fraction_of_copy_bandwidth"].get<double>(),
                 100 * j["fraction_of_matmul_rate"].get<double>(), 100 * j["fraction_of_limit"].get<double>(),
                 j["bound"].get<std::string>().c_str());
  std::fprintf(f, "\n");
}

int run(const MainOptions& o) {
  std::vector<Case> cases = ssm_cases();
  for (Case& c : dense_cases()) cases.push_back(std::move(c));
  if (!o.filter.empty()) {
    const std::regex re(o.filter);
    std::erase_if(cases, [&](const Case& c) { return !std::regex_search(label(c), re); });
  }
  if (o.list) {
    nlohmann::json out = {{"cases", nlohmann::json::array()}};
    for (const Case& c : cases) out["cases"].push_back(case_json(c));
    if (o.json) std::printf("%s\n", out.dump(1).c_str());
    else for (const auto& j : out["cases"]) print_row(stdout, j);
    return 0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };

  CudaBackendOptions bo;
  bo.device = o.device;
  bo.dtype = DType::BF16;
  CudaBackend backend(bo);
  const auto devices = cuda::list_devices();
  nlohmann::json out = {{"device", devices.at(size_t(o.device)).name},
                        {"dtype", "bfloat16"},
                        {"timing", "host clock around backend.synchronize(), median of repetitions after a "
                                   "warm-up; method eager: calls_per_rep back-to-back calls per repetition; method "
                                   "graph: replays of a CUDA graph of calls_per_graph calls"},
                        {"cases", nlohmann::json::array()}};
  Roofline roof;
  if (o.roofline) {
    // The peer's ceilings: a 4 GiB device-to-device copy and a bf16 8192^3 matmul.
    roof = measure_roofline(backend, DType::BF16, size_t(4) << 30, 8192);
    out["copy_bytes_per_second"] = roof.copy_bytes_per_s;
    out["copy_shape"] = "4 GiB -> 4 GiB";
    out["matmul_flops_per_second"] = roof.matmul_flops_per_s;
    out["matmul_shape"] = roof.matmul_shape;
    std::fprintf(stderr, "measured limits: copy %.0f GB/s (read + write, 4 GiB), matmul %.1f TFLOP/s (%s)\n",
                 roof.copy_bytes_per_s / 1e9, roof.matmul_flops_per_s / 1e12, roof.matmul_shape.c_str());
  }
  if (o.bench.graphs)
    std::fprintf(stderr, "times marked * are per call of a replayed CUDA graph (eager: eager_ms in the JSON)\n");
  Bench bench(backend, o.bench, o.seed);
  for (const Case& c : cases) {
    nlohmann::json j = case_json(c);
    if (o.max_seconds > 0 && elapsed() > o.max_seconds) {
      j["skipped"] = str_cat("--max-seconds ", o.max_seconds, " reached");
    } else {
      try {
        add_measurement(j, c.run(bench), roof);
      } catch (const std::exception& e) {
        j["error"] = e.what();
      }
    }
    print_row(stderr, j);
    out["cases"].push_back(j);
    out["elapsed_s"] = elapsed();
    if (!o.json_file.empty()) write_atomic(o.json_file, out.dump(1));
  }
  if (o.json) {
    std::printf("%s\n", out.dump(1).c_str());
  } else {
    for (const auto& j : out["cases"]) print_row(stdout, j);
    if (o.bench.graphs) std::printf("* per call of a replayed CUDA graph\n");
  }
  return 0;
}

}  // namespace
}  // namespace statelm::bench

int main(int argc, char** argv) {
  using namespace statelm::bench;
  MainOptions o;
  CLI::App app{"statelm_cuda_kernel_bench: CUDA ops at the peer benchmark's shapes, against the measured limits"};
  app.add_option("--filter", o.filter, "Run the cases whose \"family name shape tag\" matches this regex");
  app.add_flag("--list", o.list, "List the cases (bytes, FLOPs; JSON with --json) without running them; needs no GPU");
  app.add_flag("--json", o.json, "Print JSON instead of the table");
  app.add_option("--json-file", o.json_file, "Also write the JSON here, rewritten after every case");
  app.add_option("--reps", o.bench.reps, "Repetitions per case (the median is reported)")->check(CLI::PositiveNumber);
  double min_rep_ms = 5;
  app.add_option("--min-rep-ms", min_rep_ms, "Each repetition runs the op back to back for at least this long");
  app.add_option("--case-seconds", o.bench.case_budget_s,
                 "Timed seconds per case, roughly (fewer repetitions if needed)");
  app.add_option("--max-seconds", o.max_seconds, "Skip the cases left after this many seconds (0: no limit)");
  app.add_option("--kv-block", o.bench.kv_block_size, "KV cache block size (tokens) of the attention cases")
      ->check(CLI::PositiveNumber);
  app.add_option("--device", o.device, "CUDA device index");
  app.add_option("--seed", o.seed, "Seed of the random inputs");
  app.add_flag("!--no-roofline", o.roofline, "Skip measuring copy bandwidth and matmul rate");
  app.add_flag("!--no-graphs", o.bench.graphs, "Time decode-sized ops eagerly only (no CUDA-graph replays)");
  CLI11_PARSE(app, argc, argv);
  o.bench.min_rep_s = min_rep_ms * 1e-3;
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "statelm_cuda_kernel_bench: %s\n", e.what());
    return 1;
  }
}
