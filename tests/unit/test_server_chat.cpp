// POST /v1/chat/completions, n > 1 and logprobs on both endpoints, against the same requests
// run alone: a chat turn is a completion of the rendered template; each of n choices is the
// request with seed + index; the reported logprobs are the model's own (greedy picks the top).
#include <gtest/gtest.h>

#include <cmath>

#include "unit/test_server_util.h"

namespace statelm {
namespace {

using namespace test_server;

class ServerChatTest : public ::testing::Test {
 protected:
  ModelFolder model;
};

// A system turn and a user turn in two text parts (joined with "\n").
const json kMessages = json::parse(R"([{"role": "system", "content": "be"},
  {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}])");

TEST_F(ServerChatTest, ChatIsACompletionOfTheRenderedTemplate) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  const std::string rendered = "system: be\nuser: hi\nthere\nassistant:";
  Alone want = run_alone(s, alone_runner, s.tokenizer.encode(rendered, false), 20);

  auto r = s.chat({{"messages", kMessages}, {"max_tokens", 20}, {"temperature", 0}, {"future_field", {1, 2}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], want.text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], want.finish_reason);
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"]["prompt_tokens"], s.tokenizer.encode(rendered, false).size());
  EXPECT_EQ(j["usage"]["completion_tokens"], want.completion_tokens);

  auto st = s.chat({{"messages", kMessages}, {"max_completion_tokens", 20}, {"temperature", 0}, {"stream", true},
                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(st);
  ASSERT_EQ(st->status, 200) << st->body;
  Sse sse = parse_sse(st->body);
  EXPECT_TRUE(sse.well_formed && sse.done) << st->body;
  ASSERT_FALSE(sse.chunks.empty());
  EXPECT_EQ(sse.chunks[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(sse.chunks[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(sse.text, want.text);
  EXPECT_EQ(sse.finish_reason, want.finish_reason);
  EXPECT_EQ(sse.usage["completion_tokens"], want.completion_tokens);
  EXPECT_TRUE(sse.chunks.back()["choices"].empty()) << "the usage chunk comes last, without choices";

  auto m = s.client().Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(json::parse(m->body)["data"][0]["chat_template"], "tokenizer_config.json");
  EXPECT_TRUE(s.idle());
}

TEST_F(ServerChatTest, NChoicesAreTheRequestWithSeedPlusIndex) {
  TestServer s(model, {}, 2);  // 3 choices, 2 slots: one queues
  const json base{{"prompt", {5, 17, 3}}, {"max_tokens", 16}, {"temperature", 1.3}};
  std::vector<std::string> want;
  for (int i = 0; i < 3; ++i) {
    json one = base;
    one["seed"] = 40 + i;
    auto r = s.post(one);
    ASSERT_TRUE(r && r->status == 200);
    want.push_back(json::parse(r->body)["choices"][0]["text"]);
  }
  EXPECT_FALSE(want[0] == want[1] && want[1] == want[2]) << "the seeds should draw different texts";
  json req = base;
  req["seed"] = 40;
  req["n"] = 3;
  auto r = s.post(req);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 3u);
  int64_t total = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["text"], want[size_t(i)]) << "choice " << i;
  }
  total = j["usage"]["completion_tokens"];
  EXPECT_GE(total, 3);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);

  req["stream"] = true;
  auto st = s.post(req);
  ASSERT_TRUE(st && st->status == 200);
  Sse sse = parse_sse(st->body);
  EXPECT_TRUE(sse.done);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(sse.texts[i], want[size_t(i)]) << "streamed choice " << i;
    EXPECT_FALSE(sse.finish_reasons[i].empty());
  }
  // Chat streams open with one role chunk per choice.
  auto chat = s.chat({{"messages", kMessages}, {"n", 2}, {"max_tokens", 4}, {"stream", true}, {"seed", 1}});
  ASSERT_TRUE(chat && chat->status == 200);
  Sse cs = parse_sse(chat->body);
  ASSERT_GE(cs.chunks.size(), 2u);
  EXPECT_EQ(cs.chunks[0]["choices"][0]["index"], 0);
  EXPECT_EQ(cs.chunks[1]["choices"][0]["index"], 1);
  EXPECT_EQ(cs.chunks[1]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(cs.finish_reasons.size(), 2u);
  EXPECT_TRUE(s.idle());
}

TEST_F(ServerChatTest, CompletionLogprobsAreTheModelsOwn) {
  TestServer s(model);
  for (bool stream : {false, true}) {
    auto r = s.post({{"prompt", {5, 17, 3, 40}}, {"max_tokens", 12}, {"temperature", 0}, {"logprobs", 3}, {"stream", stream}});
    ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
    std::string text;
    auto take = [&](const json& choice) {
      text += choice["text"].get<std::string>();
      const json& l = choice["logprobs"];
      ASSERT_TRUE(l.is_object()) << choice.dump();
      for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) ASSERT_TRUE(l[k].is_array()) << k;
      for (size_t i = 0; i < l["tokens"].size(); ++i) {
        tokens.push_back(l["tokens"][i]);
        lps.push_back(l["token_logprobs"][i]);
        tops.push_back(l["top_logprobs"][i]);
        offsets.push_back(l["text_offset"][i]);
      }
    };
    if (stream) {
      Sse sse = parse_sse(r->body);
      for (const json& c : sse.chunks) take(c["choices"][0]);
    } else {
      take(json::parse(r->body)["choices"][0]);
    }
    ASSERT_FALSE(tokens.empty());
    std::string joined;
    int64_t offset = 0;
    for (size_t i = 0; i < tokens.size(); ++i) {
      EXPECT_EQ(offsets[i], offset) << i;
      joined += tokens[i].get<std::string>();
      offset += int64_t(tokens[i].get<std::string>().size());
      const double lp = lps[i];
      EXPECT_LE(lp, 0.0);
      ASSERT_EQ(tops[i].size(), 3u);
      double best = -1e30, mass = 0;
      for (auto it = tops[i].begin(); it != tops[i].end(); ++it) {
        best = std::max(best, it.value().get<double>());
        mass += std::exp(it.value().get<double>());
      }
      EXPECT_NEAR(lp, best, 1e-6) << "greedy takes the most likely token";
      EXPECT_LE(mass, 1.0 + 1e-5);
    }
    EXPECT_EQ(joined, text) << "stream " << stream;
  }
  // Without logprobs the field is null; out of range is a 400.
  auto r = s.post({{"prompt", {5}}, {"max_tokens", 2}});
  EXPECT_TRUE(json::parse(r->body)["choices"][0]["logprobs"].is_null());
  expect_error(s.post({{"prompt", {5}}, {"logprobs", 21}}), 400, "logprobs", "logprobs 21");
}

TEST_F(ServerChatTest, ChatLogprobs) {
  TestServer s(model);
  auto r = s.chat({{"messages", kMessages}, {"max_tokens", 6}, {"temperature", 0}, {"logprobs", true}, {"top_logprobs", 2}});
  ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "");
  json j = json::parse(r->body);
  const json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_TRUE(content.is_array());
  ASSERT_FALSE(content.empty());
  std::string joined;
  for (const json& t : content) {
    const std::string tok = t["token"];
    joined += tok;
    std::vector<int> bytes(tok.begin(), tok.end());
    for (int& b : bytes) b &= 0xff;
    EXPECT_EQ(t["bytes"].get<std::vector<int>>(), bytes);
    ASSERT_EQ(t["top_logprobs"].size(), 2u);
    EXPECT_NEAR(t["logprob"].get<double>(), t["top_logprobs"][0]["logprob"].get<double>(), 1e-6);
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
  }
  EXPECT_EQ(joined, j["choices"][0]["message"]["content"]);
  expect_error(s.chat({{"messages", kMessages}, {"top_logprobs", 2}}), 400, "top_logprobs", "top_logprobs without logprobs");
}

}  // namespace
}  // namespace statelm
