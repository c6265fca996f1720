// statelm serve through the official `openai` npm client, as applications use it: completions
// and chat, whole and streamed, n = 2, logprobs in both shapes, and the errors the SDK maps to
// its exception classes (400 BadRequestError, 401 AuthenticationError). Run by CTest through
// run_node_test.sh, which skips when node or node_modules are missing.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { startServer } from "./serve.mjs";

const KEY = "test-key-123";
let server, client;

before(async () => {
  server = await startServer({ args: ["--api-key", KEY, "--max-tokens", "64"] });
  client = new OpenAI({ baseURL: server.url + "/v1", apiKey: KEY, maxRetries: 0, timeout: 60_000 });
});
after(async () => {
  assert.equal(await server.stop(), 0, "statelm serve exits cleanly on SIGTERM");
});

const messages = [
  { role: "system", content: "A scene in Verona." },
  { role: "user", content: "Who goes there?" },
];

test("models lists the demo model and its chat template", async () => {
  const list = await client.models.list();
  assert.equal(list.data.length, 1);
  assert.equal(list.data[0].id, "shakespeare-mamba2");
  assert.equal(list.data[0].chat_template, "tokenizer_config.json");
});

test("completion, whole and streamed, greedy: the same text", async () => {
  const req = { model: "shakespeare-mamba2", prompt: "ROMEO:", max_tokens: 24, temperature: 0 };
  const whole = await client.completions.create(req);
  assert.equal(whole.object, "text_completion");
  assert.equal(whole.choices.length, 1);
  assert.ok(whole.choices[0].text.length > 0);
  assert.equal(whole.usage.completion_tokens, 24);
  let streamed = "", finish = null;
  for await (const chunk of await client.completions.create({ ...req, stream: true })) {
    streamed += chunk.choices[0]?.text ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(streamed, whole.choices[0].text);
  assert.equal(finish, "length");
});

test("chat, whole and streamed, greedy: the same reply", async () => {
  const req = { model: "shakespeare-mamba2", messages, max_tokens: 20, temperature: 0 };
  const whole = await client.chat.completions.create(req);
  assert.equal(whole.object, "chat.completion");
  assert.equal(whole.choices[0].message.role, "assistant");
  const reply = whole.choices[0].message.content;
  assert.ok(reply.length > 0);
  let streamed = "", role = null, usage = null;
  const stream = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    role = chunk.choices[0]?.delta?.role ?? role;
    streamed += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  assert.equal(role, "assistant");
  assert.equal(streamed, reply);
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
});

test("n = 2: two choices, each its own sequence", async () => {
  const r = await client.chat.completions.create({ messages, n: 2, max_tokens: 16, temperature: 1.2, seed: 3 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  assert.notEqual(r.choices[0].message.content, r.choices[1].message.content);
  const seen = new Set();
  for await (const chunk of await client.completions.create({ prompt: "ROMEO:", n: 2, max_tokens: 8, stream: true, seed: 3 }))
    for (const c of chunk.choices) seen.add(c.index);
  assert.deepEqual([...seen].sort(), [0, 1]);
});

test("logprobs in the completions and chat shapes", async () => {
  const c = await client.completions.create({ prompt: "JULIET:", max_tokens: 6, temperature: 0, logprobs: 2 });
  const lp = c.choices[0].logprobs;
  assert.equal(lp.tokens.length, 6);
  assert.equal(lp.tokens.join(""), c.choices[0].text);
  assert.equal(lp.text_offset[0], 0);
  for (let i = 0; i < 6; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const top = Object.values(lp.top_logprobs[i]);
    assert.ok(Math.abs(Math.max(...top) - lp.token_logprobs[i]) < 1e-6, "greedy picks the top token");
  }
  const chat = await client.chat.completions.create({ messages, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3 });
  const content = chat.choices[0].logprobs.content;
  assert.equal(content.length, 5);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 3);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token, "utf8")]);
  }
});

test("bad max_tokens is a BadRequestError (400)", async () => {
  await assert.rejects(client.completions.create({ prompt: "x", max_tokens: 0 }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, e.constructor.name);
    assert.equal(e.status, 400);
    assert.equal(e.param, "max_tokens");
    return true;
  });
  await assert.rejects(client.chat.completions.create({ messages, max_tokens: 65 }), OpenAI.BadRequestError);
});

test("a wrong API key is an AuthenticationError (401)", async () => {
  const wrong = new OpenAI({ baseURL: server.url + "/v1", apiKey: "nope", maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, e.constructor.name);
    assert.equal(e.status, 401);
    return true;
  });
  const health = await fetch(server.url + "/health");
  assert.equal(health.status, 200, "/health needs no key");
});

test("curl-style raw requests: request ids, 413, 404", async () => {
  const auth = { Authorization: "Bearer " + KEY, "Content-Type": "application/json" };
  const r = await fetch(server.url + "/v1/models", { headers: { ...auth, "X-Request-Id": "abc-123" } });
  assert.equal(r.headers.get("x-request-id"), "abc-123");
  const big = await fetch(server.url + "/v1/completions", { method: "POST", headers: auth, body: JSON.stringify({ prompt: "a".repeat(8 << 20) }) });
  assert.equal(big.status, 413);
  assert.equal((await big.json()).error.type, "invalid_request_error");
  assert.equal((await fetch(server.url + "/v1/nothing", { headers: auth })).status, 404);
});
