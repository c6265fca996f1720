// A streaming session's memory: text appended to one server session, chunk after chunk, for a
// total of --tokens tokens (1M by default), through the real HTTP API —
// POST /v1/sessions, then POST /v1/sessions/{id}/append with the next piece of text — on an
// in-process `statelm serve` (its scheduler, its SQLite session store in a temp folder).
// Every --every appends it samples the process's resident memory (/proc/self/statm), what malloc
// holds in use (mallinfo2: a leak grows it; RSS also keeps what malloc retains), statelm's own
// buffers (host_buffer_stats; on CUDA the allocator's bytes in use), the session's stored blob and
// database files, and the wall and CPU time per append, and prints one table row: a Mamba
// session's memory and time per append stay flat however much it has read. A measurement, not a
// timed test; results in bench/RESULTS.md.
//
//   statelm_session_memory [--model DIR] [--tokens N] [--chunk-chars C] [--every K] [--device cpu|cuda]
//                          [--max-concurrent N]
//   default: models/shakespeare-mamba2 reading models/tinyshakespeare-validation.txt over and
//   over, 8000 characters (~2750 tokens) an append, a row every 50 appends, the server's default
//   256 concurrent requests. OMP_NUM_THREADS=1 makes the CPU time per append steady on a busy
//   machine (no spinning worker threads).
//
// Reading the malloc column: each HTTP worker thread that serves a request keeps its own malloc
// caches, so "malloc" rises by ~14 KB an append until every thread of the server's pool
// (--max-concurrent + 8) has served once, then stays put; with --max-concurrent 4 it is flat
// from the first rows. Nothing grows with the tokens appended.
#include <httplib.h>
#include <malloc.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "bench_backend.h"
#include "core/error.h"
#include "runtime/scheduler.h"
#include "runtime/session_store.h"
#include "server/http_server.h"
#include "tokenizer/tokenizer.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Args {
  std::string model = std::string(STATELM_SOURCE_DIR) + "/models/shakespeare-mamba2";
  std::string text = std::string(STATELM_SOURCE_DIR) + "/models/tinyshakespeare-validation.txt";
  int64_t tokens = 1 << 20, chunk_chars = 8000, every = 50;
  int max_concurrent = 256;  // the server's default --max-concurrent-requests (its HTTP pool: 8 more threads)
  std::string device = "cpu";
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(ErrorKind::InvalidArgument, flag, ": needs a value");
      return argv[++i];
    };
    if (flag == "--model") a.model = value();
    else if (flag == "--text") a.text = value();
    else if (flag == "--tokens") a.tokens = std::stoll(value());
    else if (flag == "--chunk-chars") a.chunk_chars = std::stoll(value());
    else if (flag == "--every") a.every = std::stoll(value());
    else if (flag == "--device") a.device = value();
    else if (flag == "--max-concurrent") a.max_concurrent = std::stoi(value());
    else fail(ErrorKind::InvalidArgument, "unknown flag ", flag,
              " (--model --text --tokens --chunk-chars --every --device --max-concurrent)");
  }
  if (a.tokens < 1 || a.chunk_chars < 1 || a.every < 1 || a.max_concurrent < 1) fail(ErrorKind::InvalidArgument, "sizes must be positive");
  return a;
}

int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * int64_t(sysconf(_SC_PAGESIZE));
}

using bench::make_backend;

// statelm's buffers in use: the CUDA allocator's, or the host buffers' on the CPU.
int64_t buffers_in_use(Backend& backend) {
#ifdef STATELM_WITH_CUDA
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) return int64_t(cuda->memory_stats().in_use);
#endif
  (void)backend;
  return int64_t(host_buffer_stats().in_use);
}

int64_t malloc_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return int64_t(m.uordblks + m.hblkhd);
}

double cpu_seconds() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

int run(const Args& a) {
  std::ifstream in(a.text, std::ios::binary);
  if (!in) fail(ErrorKind::Io, a.text, ": cannot read");
  std::stringstream text_stream;
  text_stream << in.rdbuf();
  const std::string text = text_stream.str();
  if (text.empty()) fail(ErrorKind::InvalidArgument, a.text, ": empty");

  const fs::path dir = fs::temp_directory_path() / ("statelm-session-memory-" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto backend = make_backend(a.device);
  Tokenizer tokenizer = Tokenizer::from_file((fs::path(a.model) / "tokenizer.json").string());
  RunnerOptions ro;
  ro.max_sequences = 2;
  ModelRunner runner(a.model, *backend, ro);
  Scheduler scheduler(runner, SchedulerOptions{});
  SessionStore store((dir / "sessions.db").string());
  server::ServerOptions so;
  so.port = 0;
  so.model_id = fs::path(a.model).filename().string();
  so.sessions = &store;
  so.max_concurrent_requests = a.max_concurrent;
  server::HttpServer http(scheduler, tokenizer, server::model_limits(runner, tokenizer), so);
  const int port = http.bind();
  scheduler.start();
  std::thread serving([&] { http.serve(); });

  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(600, 0);
  auto post = [&](const std::string& path, const json& body) {
    auto r = client.Post(path.c_str(), body.dump(), "application/json");
    if (!r || r->status != 200) fail(ErrorKind::Internal, path, ": ", r ? std::to_string(r->status) + " " + r->body : "no response");
    return json::parse(r->body);
  };
  const std::string id = post("/v1/sessions", json::object())["id"];
  const std::string append = "/v1/sessions/" + id + "/append";

  std::printf("# %s on %s: session %s, appends of %lld characters of %s\n", so.model_id.c_str(), a.device.c_str(),
              id.c_str(), (long long)a.chunk_chars, fs::path(a.text).filename().c_str());
  std::printf("%8s %10s %9s %10s %12s %10s %10s %10s %12s\n", "appends", "tokens", "RSS MiB", "malloc MiB",
              a.device == "cpu" ? "buffers MiB" : "device MiB", "blob KiB", "db KiB", "ms/append", "cpu ms/append");
  const auto start = std::chrono::steady_clock::now();
  auto last = start;
  double last_cpu = cpu_seconds();
  int64_t tokens = 0, appends = 0, blob = 0;
  size_t at = 0;
  int64_t last_appends = 0;
  auto row = [&] {
    const auto now = std::chrono::steady_clock::now();
    const double cpu = cpu_seconds(), n = double(std::max<int64_t>(1, appends - last_appends));
    const double ms = std::chrono::duration<double, std::milli>(now - last).count() / n;
    const double cpu_ms = 1000.0 * (cpu - last_cpu) / n;
    last = now;
    last_cpu = cpu;
    last_appends = appends;
    int64_t db = 0;
    for (const auto& e : fs::directory_iterator(dir)) db += int64_t(e.file_size());
    std::printf("%8lld %10lld %9.1f %10.1f %12.1f %10.1f %10.1f %10.1f %12.1f\n", (long long)appends, (long long)tokens,
                double(resident_bytes()) / 1048576.0, double(malloc_in_use()) / 1048576.0,
                double(buffers_in_use(*backend)) / 1048576.0, double(blob) / 1024.0, double(db) / 1024.0,
                appends ? ms : 0.0, appends ? cpu_ms : 0.0);
    std::fflush(stdout);
  };
  row();
  while (tokens < a.tokens) {
    std::string piece;
    while (int64_t(piece.size()) < a.chunk_chars) {  // the text over and over
      const size_t n = std::min(text.size() - at, size_t(a.chunk_chars) - piece.size());
      piece.append(text, at, n);
      at = (at + n) % text.size();
    }
    const json r = post(append, json{{"prompt", piece}});
    tokens += r["appended_tokens"].get<int64_t>();
    blob = r["blob_bytes"].get<int64_t>();
    ++appends;
    if (appends % a.every == 0 || tokens >= a.tokens) row();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const json info = json::parse(client.Get(("/v1/sessions/" + id).c_str())->body);
  std::printf("# %lld tokens in %lld appends, %.1f s (%.0f tokens/s); the session holds %lld tokens in a %lld-byte blob "
              "(state %lld bytes)\n",
              (long long)tokens, (long long)appends, seconds, double(tokens) / seconds, (long long)info["tokens"].get<int64_t>(),
              (long long)info["blob_bytes"].get<int64_t>(), (long long)info["state_bytes"].get<int64_t>());
  http.shutdown();
  scheduler.stop();
  serving.join();
  fs::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace statelm

int main(int argc, char** argv) {
  setenv("STATELM_LOG", "warning", /*overwrite=*/0);  // no log line per request: the table is the output
  try {
    return statelm::run(statelm::parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "statelm_session_memory: error: %s\n", e.what());
    return 1;
  }
}
