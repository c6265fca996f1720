// The server's edges: API keys, request ids, the limits (prompt, max_tokens, body size,
// concurrent requests), bad chat bodies with their exact statuses, and clients that vanish or
// never read, which must cost nothing but their own request.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <optional>

#include "server/connection_probe.h"
#include "unit/test_server_util.h"

namespace statelm {
namespace {

using namespace test_server;

class ServerLimitsTest : public ::testing::Test {
 protected:
  ModelFolder model;
};

TEST_F(ServerLimitsTest, ApiKeyGuardsV1Only) {
  TestServer s(model, {}, 2, [](server::ServerOptions& o, server::ModelLimits&) { o.api_key = "sekret-key"; });
  auto c = s.client();
  auto r = c.Get("/v1/models");
  expect_error(r, 401, "", "no key");
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "invalid_api_key");
  expect_error(c.Get("/v1/models", {{"Authorization", "Bearer sekret-kez"}}), 401, "", "wrong key");
  expect_error(c.Get("/v1/models", {{"Authorization", "Bearer sekret-key2"}}), 401, "", "longer key");
  expect_error(c.Post("/v1/completions", json{{"prompt", {1}}}.dump(), "application/json"), 401, "", "completion without key");
  const httplib::Headers auth{{"Authorization", "Bearer sekret-key"}};
  r = c.Get("/v1/models", auth);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);
  r = c.Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("/v1/chat/completions"), std::string::npos) << "the chat page";
  EXPECT_TRUE(s.idle(auth));
}

TEST_F(ServerLimitsTest, RequestIdsAreEchoedOrMade) {
  TestServer s(model);
  auto r = s.client().Get("/health", {{"X-Request-Id", "my-trace-42"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->get_header_value("X-Request-Id"), "my-trace-42");
  r = s.client().Get("/v1/models", {{"X-Request-Id", "bad id with spaces"}});
  const std::string made = r->get_header_value("X-Request-Id");
  EXPECT_EQ(made.rfind("req-", 0), 0u) << made;
  EXPECT_NE(s.client().Get("/health")->get_header_value("X-Request-Id"), made);
}

TEST_F(ServerLimitsTest, PromptAndMaxTokensLimits) {
  TestServer s(model, {}, 2, [](server::ServerOptions&, server::ModelLimits& l) {
    l.max_prompt_tokens = 4;
    l.max_tokens = 8;
  });
  expect_error(s.post({{"prompt", {1, 2, 3, 4, 5}}, {"max_tokens", 2}}), 400, "prompt", "prompt over --max-prompt-tokens");
  expect_error(s.post({{"prompt", {1}}, {"max_tokens", 9}}), 400, "max_tokens", "max_tokens over --max-tokens");
  expect_error(s.chat({{"messages", {{{"role", "user"}, {"content", "a long message"}}}}}), 400, "messages", "chat prompt too long");
  auto r = s.post({{"prompt", {1, 2, 3, 4}}, {"temperature", 0}, {"ignore_eos", true}});  // max_tokens omitted: 16, capped to 8
  ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "");
  EXPECT_LE(json::parse(r->body)["usage"]["completion_tokens"].get<int64_t>(), 8);
}

TEST_F(ServerLimitsTest, BodyOverTheLimitIs413) {
  TestServer s(model, {}, 2, [](server::ServerOptions& o, server::ModelLimits&) { o.max_body_bytes = 1000; });
  json big{{"prompt", std::string(2000, 'a')}};
  auto r = s.post(big);
  expect_error(r, 413, "", "body over --max-body-bytes");
  r = s.post({{"prompt", {1}}, {"max_tokens", 1}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerLimitsTest, BadChatBodies) {
  TestServer s(model);
  auto raw = [&](const std::string& body) { return s.client().Post("/v1/chat/completions", body, "application/json"); };
  const json user = json::array({{{"role", "user"}, {"content", "hi"}}});
  expect_error(raw("{\"messages\": [}"), 400, "", "malformed JSON");
  expect_error(raw("{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xc3\"}]}"), 400, "", "invalid UTF-8");
  expect_error(raw(R"({"messages": [{"role": "user", "content": "a\udc00"}]})"), 400, "", "lone surrogate");
  expect_error(s.chat({{"max_tokens", 3}}), 400, "messages", "missing messages");
  expect_error(s.chat({{"messages", "hi"}}), 400, "messages", "messages as a string");
  expect_error(s.chat({{"messages", user}, {"temperature", "hot"}}), 400, "temperature", "temperature as a string");
  expect_error(s.chat({{"messages", user}, {"max_tokens", 0}}), 400, "max_tokens", "max_tokens 0");
  expect_error(s.chat({{"messages", user}, {"max_tokens", -5}}), 400, "max_tokens", "negative max_tokens");
  expect_error(s.chat({{"messages", user}, {"max_completion_tokens", 1.5}}), 400, "max_completion_tokens", "fractional");
  expect_error(s.chat({{"messages", user}, {"max_tokens", 1000}}), 400, "max_tokens", "beyond the context");
  expect_error(s.chat({{"messages", {{{"role", "user"}, {"content", std::string(300, 'x')}}}}}), 400, "messages",
               "prompt alone over the context");
  expect_error(s.chat({{"messages", user}, {"n", 17}}), 400, "n", "n over 16");
  expect_error(s.chat({{"messages", user}, {"stream_options", 3}}), 400, "stream_options", "stream_options");
  // Unknown fields are ignored, as OpenAI does.
  auto r = s.chat({{"messages", user}, {"max_tokens", 2}, {"frequency_penalty", 0}, {"user", "x"}, {"whatever", {{"a", 1}}}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

// A streaming request whose client never reads: the server's writes fill the socket buffers
// and block (until the write timeout), so it holds its request slot meanwhile.
int stalled_stream(int port, const json& body) {
  const int sock = socket(AF_INET, SOCK_STREAM, 0);
  int small = 1024;
  setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(sock, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const std::string text = body.dump();
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(text.size()) + "\r\n\r\n" + text;
  EXPECT_EQ(write(sock, request.data(), request.size()), ssize_t(request.size()));
  return sock;
}

// Memory admission with a KV cache smaller than the context (llama-tiny: 256 tokens of context,
// 8 blocks of 16 = 128 tokens of KV for every sequence together). A request the cache can never
// hold is 413 at once, with the bytes it needs; one beyond the context stays 400; one that fits,
// but not beside another, waits for its memory and completes.
TEST(ServerMemoryLimits, RequestsTheKvCacheCanNeverHoldAre413) {
  ModelFolder model("llama-tiny");
  RunnerOptions ro = runner_options(2);
  ro.max_context = 256;
  ro.kv_blocks = 8;
  TestServer s(model, {}, ro);
  auto r = s.post({{"prompt", {1, 2, 3, 4, 5}}, {"max_tokens", 200}});
  expect_error(r, 413, "", "prompt + max_tokens beyond the KV cache");
  const json e = json::parse(r->body)["error"];
  EXPECT_EQ(e["code"], "request_too_large");
  EXPECT_EQ(e["type"], "invalid_request_error");
  const std::string msg = e["message"];
  EXPECT_NE(msg.find("prompt (5 tokens) + max_tokens (200)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("holds 128 tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("can never run here"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::to_string(s.runner.memory_plan().sequence_bytes(205)) + " bytes"), std::string::npos) << msg;
  expect_error(s.post({{"prompt", {1, 2, 3}}, {"max_tokens", 300}}), 400, "max_tokens", "beyond the context");
  // Two choices of 3 + 100 tokens: 7 blocks each, 8 in all. The second waits for the first.
  r = s.post({{"prompt", {1, 2, 3}}, {"max_tokens", 100}, {"n", 2}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["choices"].size(), 2u);
  const auto metrics = s.client().Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("statelm_requests_total{status=\"413\"} 1"), std::string::npos) << metrics->body;
  EXPECT_TRUE(s.idle());
}

// Megabytes of events (16 choices x 240 tokens x 20 alternatives): more than socket buffers hold.
const json kFloodingStream{{"prompt", {5, 17}}, {"max_tokens", 240}, {"n", 16}, {"stream", true}, {"logprobs", 20}};

TEST_F(ServerLimitsTest, ConcurrentRequestLimitIs429) {
  TestServer s(model, {}, 4, [](server::ServerOptions& o, server::ModelLimits&) { o.max_concurrent_requests = 1; });
  const int sock = stalled_stream(s.port, kFloodingStream);
  // The stream's status line proves it holds the one slot (without this, a probe below can
  // win the race for it under load and the stream is the one refused).
  char status_line[12];
  ASSERT_EQ(recv(sock, status_line, sizeof status_line, MSG_WAITALL), ssize_t(sizeof status_line));
  ASSERT_EQ(std::string(status_line, sizeof status_line), "HTTP/1.1 200");
  std::optional<httplib::Result> r;
  for (int i = 0; i < 200; ++i) {  // until the server has seen it
    r.emplace(s.post({{"prompt", {1}}, {"max_tokens", 1}}));
    if (*r && (*r)->status == 429) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  expect_error(*r, 429, "", "second request over --max-concurrent-requests");
  EXPECT_EQ((*r)->get_header_value("Retry-After"), "1");
  close(sock);
  EXPECT_TRUE(s.idle());
}

// A client that gives up on a non-streamed request: its choices are cancelled, not generated.
TEST_F(ServerLimitsTest, NonStreamedRequestOfAGoneClientIsCancelled) {
  // 1000 choices x 240 tokens, one at a time: seconds of work even for mamba-tiny.
  constexpr int64_t kChoices = 1000, kTokens = 240;
  TestServer s(model, {}, 1, [](server::ServerOptions&, server::ModelLimits& l) { l.max_n = kChoices; });
  auto c = s.client();
  c.set_read_timeout(0, 200 * 1000);  // gives up after 200 ms and closes the connection
  auto r = c.Post("/v1/completions",
                  json{{"prompt", {5, 17}}, {"max_tokens", kTokens}, {"n", kChoices}, {"temperature", 1.5}}.dump(),
                  "application/json");
  EXPECT_FALSE(r) << "the request should not have finished within 200 ms";
  EXPECT_TRUE(s.idle());
  EXPECT_LT(s.scheduler.stats().tokens_out, kChoices * kTokens / 2) << "the abandoned choices kept generating";
}

TEST(ConnectionProbe, SeesThePeerClose) {
  const int server = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(server, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(server, 1), 0);
  socklen_t len = sizeof a;
  getsockname(server, reinterpret_cast<sockaddr*>(&a), &len);
  const int client = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const int accepted = accept(server, nullptr, nullptr);
  sockaddr_in c{};
  len = sizeof c;
  getsockname(client, reinterpret_cast<sockaddr*>(&c), &len);
  auto probe = server::ConnectionProbe::find("127.0.0.1", ntohs(a.sin_port), "127.0.0.1", ntohs(c.sin_port));
  ASSERT_TRUE(probe.found());
  EXPECT_FALSE(probe.peer_gone());
  ASSERT_EQ(write(client, "GET", 3), 3);  // a pipelined byte is not a hang-up
  EXPECT_FALSE(probe.peer_gone());
  close(client);
  EXPECT_TRUE(probe.peer_gone());
  EXPECT_FALSE(server::ConnectionProbe::find("127.0.0.1", 1, "127.0.0.1", 2).found());
  close(accepted);
  close(server);
}

// A client that sends a streaming request and never reads: its writes block (then time out)
// on its own HTTP thread; everyone else is served as usual.
TEST_F(ServerLimitsTest, ClientThatNeverReadsDoesNotStallOthers) {
  TestServer s(model, {}, 4);
  const int sock = stalled_stream(s.port, kFloodingStream);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    auto r = s.post({{"prompt", {3, 4}}, {"max_tokens", 8}, {"temperature", 0}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  close(sock);
  EXPECT_TRUE(s.idle());
}

}  // namespace
}  // namespace statelm
