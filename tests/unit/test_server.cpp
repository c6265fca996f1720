// `statelm serve` in-process: the HTTP server on an ephemeral port over a real scheduler and the
// mamba-tiny fixture, driven with httplib's client. Completions must be exactly what a
// sequence run alone (generate()) produces, streamed or not, under concurrency and after
// clients vanish mid-stream; every bad request is an OpenAI error body with the right status.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "unit/test_server_util.h"

namespace statelm {
namespace {

using namespace test_server;

class ServerTest : public ::testing::Test {
 protected:
  ModelFolder model;
};

TEST_F(ServerTest, HealthAndModels) {
  TestServer s(model);
  auto r = s.client().Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body), json({{"status", "ok"}}));
  r = s.client().Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "mamba-tiny");
  EXPECT_EQ(j["data"][0]["object"], "model");
}

TEST_F(ServerTest, GreedyCompletionMatchesGenerate) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  for (const std::vector<int32_t>& prompt : {std::vector<int32_t>{5, 17, 3, 40, 41}, std::vector<int32_t>{60}}) {
    Alone want = run_alone(s, alone_runner, prompt, 24);
    auto r = s.post({{"model", "mamba-tiny"}, {"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    json j = json::parse(r->body);
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], "mamba-tiny");
    EXPECT_EQ(j["choices"][0]["text"], want.text);
    EXPECT_EQ(j["choices"][0]["finish_reason"], want.finish_reason);
    EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
    EXPECT_EQ(j["usage"]["completion_tokens"], want.completion_tokens);
    EXPECT_EQ(j["usage"]["total_tokens"], int64_t(prompt.size()) + want.completion_tokens);

    auto st = s.post({{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"stream", true}});
    ASSERT_TRUE(st);
    ASSERT_EQ(st->status, 200) << st->body;
    EXPECT_NE(st->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    Sse sse = parse_sse(st->body);
    EXPECT_TRUE(sse.well_formed) << st->body;
    EXPECT_TRUE(sse.done);
    EXPECT_EQ(sse.text, want.text);
    EXPECT_EQ(sse.finish_reason, want.finish_reason);
  }
}

TEST_F(ServerTest, TextPromptIsTokenizedLikeTheTokenizer) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  Alone want = run_alone(s, alone_runner, s.tokenizer.encode("hello world"), 12);
  // The OpenAI SDK sends a single prompt as a one-element list.
  for (json prompt : {json("hello world"), json::array({"hello world"})}) {
    auto r = s.post({{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], want.text);
  }
}

TEST_F(ServerTest, StopStringSplitAcrossTokensNeverLeaks) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  const std::vector<int32_t> prompt{5, 17, 3, 40, 41};
  Alone full = run_alone(s, alone_runner, prompt, 40);
  // A two-character stop string whose first character ends one token's text and whose second
  // starts the next one's, as far into the text as possible.
  IncrementalDetokenizer detok(s.tokenizer);
  std::string text, stop;
  for (int32_t id : full.tokens) {
    std::string piece = detok.push(id);
    if (!text.empty() && !piece.empty() && text.size() > 2) stop = text.substr(text.size() - 1) + piece.substr(0, 1);
    text += piece;
  }
  ASSERT_FALSE(stop.empty()) << "the fixture's greedy text is too short: \"" << full.text << "\"";
  const std::string want = full.text.substr(0, full.text.find(stop));
  for (bool stream : {false, true}) {
    auto r = s.post({{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}, {"stop", {"\x01never", stop}},
                     {"stream", stream}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    if (stream) {
      Sse sse = parse_sse(r->body);
      EXPECT_TRUE(sse.done && sse.well_formed);
      EXPECT_EQ(sse.text, want) << "stop " << stop;
      EXPECT_EQ(sse.finish_reason, "stop");
    } else {
      json j = json::parse(r->body);
      EXPECT_EQ(j["choices"][0]["text"], want) << "stop " << stop;
      EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
    }
  }
  auto r = s.post({{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}, {"stop", stop}});
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], want);
  EXPECT_TRUE(s.idle());
}

TEST_F(ServerTest, BadRequestsGetOpenAiErrors) {
  TestServer s(model);
  auto raw = [&](const std::string& body) { return s.client().Post("/v1/completions", body, "application/json"); };
  expect_error(raw("{\"prompt\": [1, 2"), 400, "", "malformed JSON");
  expect_error(raw("[1, 2]"), 400, "", "not an object");
  expect_error(raw("{\"prompt\": \"caf\xc3\"}"), 400, "", "broken UTF-8 in the body");
  expect_error(raw(R"({"prompt": "a\ud800b"})"), 400, "", "a lone surrogate escape");
  expect_error(s.post({{"max_tokens", 4}}), 400, "prompt", "missing prompt");
  expect_error(s.post({{"prompt", 5}}), 400, "prompt", "prompt of the wrong type");
  expect_error(s.post({{"prompt", ""}}), 400, "prompt", "empty prompt");
  expect_error(s.post({{"prompt", {1, 216}}}), 400, "prompt", "token id outside the vocabulary");
  expect_error(s.post({{"prompt", {1, -3}}}), 400, "prompt", "negative token id");
  expect_error(s.post({{"prompt", {"a", "b"}}}), 400, "prompt", "several prompts");
  expect_error(s.post({{"prompt", {1, 2}}, {"max_tokens", "8"}}), 400, "max_tokens", "max_tokens as a string");
  expect_error(s.post({{"prompt", {1, 2}}, {"max_tokens", 0}}), 400, "max_tokens", "max_tokens 0");
  expect_error(s.post({{"prompt", {1, 2}}, {"temperature", -1}}), 400, "temperature", "negative temperature");
  expect_error(s.post({{"prompt", {1, 2}}, {"top_p", 0}}), 400, "top_p", "top_p 0");
  expect_error(s.post({{"prompt", {1, 2}}, {"stop", {1}}}), 400, "stop", "stop of numbers");
  expect_error(s.post({{"prompt", {1, 2}}, {"stream", "yes"}}), 400, "stream", "stream as a string");
  expect_error(s.post({{"prompt", {1, 2}}, {"n", 0}}), 400, "n", "n = 0");
  auto r = s.post({{"prompt", {1, 2}}, {"max_tokens", 255}});
  expect_error(r, 400, "max_tokens", "prompt + max_tokens beyond the context");
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  expect_error(s.client().Get("/v1/nothing"), 404, "", "unknown route");
  expect_error(s.client().Get("/v1/completions"), 404, "", "wrong method");
  // Nothing above reached the scheduler; a good request still works.
  r = s.post({{"prompt", {1, 2}}, {"max_tokens", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, FullQueueIs429WithRetryAfter) {
  SchedulerOptions so;
  so.max_waiting = 0;  // every request finds the queue full
  TestServer s(model, so);
  auto r = s.post({{"prompt", {1, 2}}, {"max_tokens", 2}});
  expect_error(r, 429, "", "queue full");
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "rate_limit_error");
}

TEST_F(ServerTest, ClientGoneMidStreamFreesItsSlot) {
  TestServer s(model, {}, 2);
  for (int round = 0; round < 3; ++round) {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Content-Type", "application/json");
    req.body = json{{"prompt", {5, 17, 3}}, {"max_tokens", 250}, {"temperature", 1.5}, {"seed", round}, {"stream", true}}.dump();
    int chunks = 0;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
    auto c = s.client();
    auto r = c.send(req);  // the receiver hangs up after the first chunk
    EXPECT_GE(chunks, 1);
  }
  EXPECT_TRUE(s.idle()) << "a slot is still held";
  auto r = s.post({{"prompt", {1, 2}}, {"max_tokens", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, ConcurrentClientsEachGetTheirAloneResult) {
  TestServer s(model, {}, 4);  // 8 clients, 4 slots: half of them queue
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  constexpr int kClients = 8;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<Alone> want;
  for (int i = 0; i < kClients; ++i) {
    prompts.push_back({int32_t(3 + i), int32_t(40 + 7 * i), int32_t(100 + i), 17});
    want.push_back(run_alone(s, alone_runner, prompts.back(), 20));
  }
  std::vector<std::string> got(kClients), reason(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      const bool stream = i % 2 == 1;
      auto r = s.post({{"prompt", prompts[i]}, {"max_tokens", 20}, {"temperature", 0}, {"stream", stream}});
      if (!r || r->status != 200) return;
      if (stream) {
        Sse sse = parse_sse(r->body);
        got[i] = sse.done ? sse.text : "<no [DONE]>";
        reason[i] = sse.finish_reason;
      } else {
        json j = json::parse(r->body);
        got[i] = j["choices"][0]["text"];
        reason[i] = j["choices"][0]["finish_reason"];
      }
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(got[i], want[i].text) << "client " << i;
    EXPECT_EQ(reason[i], want[i].finish_reason) << "client " << i;
  }
  EXPECT_TRUE(s.idle());
}

// GET /metrics as {"name{labels}": value}; comment lines skipped.
std::map<std::string, double> scrape(const TestServer& s) {
  auto r = s.client().Get("/metrics");
  std::map<std::string, double> m;
  if (!r || r->status != 200) {
    ADD_FAILURE() << "GET /metrics failed";
    return m;
  }
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    EXPECT_NE(sp, std::string::npos) << line;
    if (sp != std::string::npos) m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return m;
}

TEST_F(ServerTest, MetricsCountCompletionsAndReturnToIdle) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  const std::vector<int32_t> prompt{5, 17, 3, 40, 41};
  Alone want = run_alone(s, alone_runner, prompt, 12);
  ASSERT_GE(want.completion_tokens, 2);

  expect_error(s.post({{"prompt", {1, 216}}}), 400, "prompt", "token id outside the vocabulary");
  auto r = s.post({{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["usage"]["completion_tokens"], want.completion_tokens);
  r = s.post({{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}, {"stream", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_TRUE(parse_sse(r->body).done);

  // The gauges come from the scheduler's stats, refreshed by its next (idle) step.
  std::map<std::string, double> m;
  for (int i = 0; i < 200; ++i) {
    m = scrape(s);
    if (m["statelm_running_sequences"] == 0 && m["statelm_state_slots_free"] == s.runner.max_sequences()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(m["statelm_requests_total{status=\"200\"}"], 2);
  EXPECT_EQ(m["statelm_requests_total{status=\"400\"}"], 1);
  EXPECT_EQ(m["statelm_requests_total{status=\"503\"}"], 0);
  EXPECT_EQ(m["statelm_prompt_tokens_total"], 2 * prompt.size());
  EXPECT_EQ(m["statelm_generation_tokens_total"], 2 * want.completion_tokens);
  EXPECT_EQ(m["statelm_time_to_first_token_seconds_count"], 2);
  EXPECT_EQ(m["statelm_time_to_first_token_seconds_bucket{le=\"+Inf\"}"], 2);
  EXPECT_GT(m["statelm_time_to_first_token_seconds_sum"], 0);
  EXPECT_EQ(m["statelm_inter_token_latency_seconds_count"], 2 * (want.completion_tokens - 1));
  EXPECT_EQ(m["statelm_inter_token_latency_seconds_bucket{le=\"+Inf\"}"], 2 * (want.completion_tokens - 1));
  EXPECT_EQ(m["statelm_running_sequences"], 0);
  EXPECT_EQ(m["statelm_waiting_sequences"], 0);
  EXPECT_EQ(m["statelm_state_slots_free"], s.runner.max_sequences());
  EXPECT_EQ(m["statelm_kv_blocks_free"], s.runner.free_blocks());
  EXPECT_EQ(m["statelm_scheduler_steps_total"], s.scheduler.stats().steps);
  EXPECT_GT(m["statelm_scheduler_steps_total"], 0);
  EXPECT_EQ(m["statelm_preemptions_total"], 0);
  EXPECT_EQ(m["statelm_prefix_cache_lookups_total"], 0);

  // A wrong method on the completions route counts as its 404.
  EXPECT_EQ(s.client().Get("/v1/completions")->status, 404);
  EXPECT_EQ(scrape(s)["statelm_requests_total{status=\"404\"}"], 1);
}

}  // namespace
}  // namespace statelm
