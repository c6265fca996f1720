// What the server tests (test_server*.cpp) share: the mamba-tiny model folder, an in-process
// `statelm serve` on an ephemeral port, the result a request must get (the same prompt run
// alone through generate()), and readers for SSE bodies and OpenAI error bodies.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "runtime/generate.h"
#include "server/http_server.h"
#include "unit/test_support.h"

namespace statelm::test_server {

namespace fs = std::filesystem;
using nlohmann::json;

// The chat template the test model folder ships.
inline constexpr const char* kTestChatTemplate =
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

// mamba-tiny (or another fixture model) plus a tokenizer.json that covers its 216 ids and a
// tokenizer_config.json with a chat template.
struct ModelFolder {
  test::TempDir dir;
  explicit ModelFolder(const std::string& fixture = "mamba-tiny") {
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(test::fixture("models/" + fixture + "/" + f), dir / f);
    test::write_file(dir / "tokenizer.json", test::tiny_tokenizer_json());
    test::write_file(dir / "tokenizer_config.json", json{{"chat_template", kTestChatTemplate}}.dump());
  }
  std::string path() const { return dir.path().string(); }
};

inline RunnerOptions runner_options(int32_t sequences) {
  RunnerOptions o;
  o.max_sequences = sequences;
  o.max_context = 256;
  return o;
}

using Configure = std::function<void(server::ServerOptions&, server::ModelLimits&)>;

// `statelm serve`'s lifecycle around an HttpServer: bound to 127.0.0.1:<any free port> and
// served on a thread from construction (the engine thread started too, unless asked not to);
// on destruction shut down and the scheduler stopped, as on SIGTERM. The last member of a test
// server, so that it is built after and torn down before what it serves.
class ServingThread {
 public:
  ServingThread(server::HttpServer& http, Scheduler& scheduler, bool start_engine = true)
      : port(http.bind()), http_(http), scheduler_(scheduler) {
    if (start_engine) scheduler_.start();
    thread_ = std::thread([this] { http_.serve(); });
  }
  ~ServingThread() {
    http_.shutdown();
    scheduler_.stop();
    thread_.join();
  }
  ServingThread(const ServingThread&) = delete;
  ServingThread& operator=(const ServingThread&) = delete;
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }

  const int port;

 private:
  server::HttpServer& http_;
  Scheduler& scheduler_;
  std::thread thread_;
};

// A server on 127.0.0.1:<any free port>, torn down as `statelm serve` does on SIGTERM.
class TestServer {
 public:
  explicit TestServer(const ModelFolder& model, SchedulerOptions so = {}, int32_t sequences = 4, const Configure& configure = {})
      : TestServer(model, so, runner_options(sequences), configure) {}
  TestServer(const ModelFolder& model, SchedulerOptions so, const RunnerOptions& runner_options, const Configure& configure = {})
      : tokenizer(Tokenizer::from_file(model.path())),
        runner(model.path(), backend, runner_options),
        scheduler(runner, so),
        http(scheduler, tokenizer, limits(model, configure), options(model, configure)),
        serving(http, scheduler),
        port(serving.port) {}
  httplib::Client client() const { return serving.client(); }
  httplib::Result post(const json& body, const std::string& path = "/v1/completions") const {
    return client().Post(path.c_str(), body.dump(), "application/json");
  }
  httplib::Result chat(const json& body) const { return post(body, "/v1/chat/completions"); }
  // Waits (up to 10 s) until no request holds a slot or waits for one, and a one-token probe
  // request still succeeds.
  bool idle(const httplib::Headers& headers = {}) const {
    for (int i = 0; i < 100; ++i) {
      auto r = client().Post("/v1/completions", headers, json{{"prompt", {1}}, {"max_tokens", 1}}.dump(), "application/json");
      for (int j = 0; j < 10; ++j) {
        SchedulerStats s = scheduler.stats();
        if (r && r->status == 200 && s.running == 0 && s.waiting == 0 && s.free_slots == runner.max_sequences())
          return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    SchedulerStats s = scheduler.stats();
    ADD_FAILURE() << "running " << s.running << ", waiting " << s.waiting << ", free slots " << s.free_slots;
    return false;
  }

  CpuBackend backend;
  Tokenizer tokenizer;
  ModelRunner runner;
  Scheduler scheduler;
  server::HttpServer http;
  ServingThread serving;
  const int port;

 private:
  server::ModelLimits limits(const ModelFolder& model, const Configure& configure) {
    server::ModelLimits l = server::model_limits(runner, tokenizer);
    server::ServerOptions unused;
    if (configure) configure(unused, l);
    (void)model;
    return l;
  }
  static server::ServerOptions options(const ModelFolder& model, const Configure& configure) {
    server::ServerOptions o;
    o.port = 0;
    o.model_id = "mamba-tiny";
    o.chat_prompt = server::ChatPrompt::from_model_dir(model.path());
    server::ModelLimits unused;
    if (configure) configure(o, unused);
    return o;
  }
};

// The same prompt through generate() on a runner of its own: the text and finish reason a
// request must get, whatever else the server is doing.
struct Alone {
  std::vector<int32_t> tokens;  // without a final stop token
  std::string text, finish_reason;
  int64_t completion_tokens = 0;
};
inline Alone run_alone(const TestServer& s, ModelRunner& runner, const std::vector<int32_t>& prompt, int64_t max_tokens) {
  SamplingParams p;
  p.greedy = true;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.stop_token_ids = server::model_limits(s.runner, s.tokenizer).stop_token_ids;
  GenerationResult r = generate(runner, prompt, p);
  Alone a;
  a.tokens = r.tokens;
  a.completion_tokens = int64_t(r.tokens.size());
  a.finish_reason = r.finish_reason;
  if (r.finish_reason == "stop") a.tokens.pop_back();
  a.text = s.tokenizer.decode(a.tokens, /*skip_special_tokens=*/true);
  return a;
}

// A server-sent-event body of either endpoint, per choice index.
struct Sse {
  std::string text, finish_reason;  // choice 0
  std::map<int, std::string> texts, finish_reasons;
  std::vector<json> chunks;  // every data object, in order
  json usage, error;
  bool done = false, well_formed = true;
};
inline Sse parse_sse(const std::string& body) {
  Sse s;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    if (end == std::string::npos || body.compare(at, 6, "data: ") != 0 || s.done) {
      s.well_formed = false;
      break;
    }
    const std::string data = body.substr(at + 6, end - at - 6);
    at = end + 2;
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    json j = json::parse(data);
    s.chunks.push_back(j);
    if (j.contains("error")) {
      s.error = j;
      continue;
    }
    if (j.contains("usage") && !j["usage"].is_null()) s.usage = j["usage"];
    for (const json& c : j["choices"]) {
      const int i = c["index"];
      if (c.contains("text")) s.texts[i] += c["text"].get<std::string>();
      if (c.contains("delta") && c["delta"].contains("content")) s.texts[i] += c["delta"]["content"].get<std::string>();
      if (!c["finish_reason"].is_null()) s.finish_reasons[i] = c["finish_reason"];
    }
  }
  s.text = s.texts[0];
  s.finish_reason = s.finish_reasons[0];
  return s;
}

inline void expect_error(const httplib::Result& r, int status, const std::string& param, const std::string& what) {
  ASSERT_TRUE(r) << what;
  EXPECT_EQ(r->status, status) << what << ": " << r->body;
  json j = json::parse(r->body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << what << ": " << r->body;
  ASSERT_TRUE(j.contains("error")) << what;
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << what;
  EXPECT_TRUE(e["type"].is_string()) << what;
  EXPECT_TRUE(e.contains("code")) << what;
  if (param.empty()) EXPECT_TRUE(e["param"].is_null()) << what << ": " << r->body;
  else EXPECT_EQ(e["param"], param) << what << ": " << r->body;
}

}  // namespace statelm::test_server
