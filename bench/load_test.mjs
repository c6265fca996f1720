#!/usr/bin/env node
// Load test of `statelm serve` over loopback: N concurrent streaming clients (default 256), each
// sending chat-free /v1/completions requests back to back for a fixed time with random prompts,
// random lengths, half greedy and half sampled, and a share cancelled mid-stream (the client
// aborts). Reports completed / failed / cancelled counts, p50 / p99 time to first token and
// inter-token latency, tokens/s, and checks that every completed greedy stream is exactly the
// text of the same request run alone afterwards. Exits 1 on any failure or mismatch.
//
//   node bench/load_test.mjs [--binary build/statelm] [--model models/shakespeare-mamba2]
//                            [--clients 256] [--seconds 10] [--cancel 0.15] [--max-sequences 64]
// Bounded: the load phase runs --seconds, the alone phase one request per distinct greedy
// prompt (16 at most); the whole run stays near 20 s on a quiet 2-core machine.
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const opt = { binary: "build/statelm", model: "models/shakespeare-mamba2", clients: 256, seconds: 10, cancel: 0.15, "max-sequences": 64 };
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, "");
  if (!(k in opt)) throw new Error("unknown flag --" + k);
  opt[k] = typeof opt[k] === "number" ? Number(process.argv[i + 1]) : process.argv[i + 1];
}

// Deterministic randomness, so runs are comparable.
let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const pick = (a) => a[Math.floor(rand() * a.length)];

// 16 prompts from the validation text; each has its own greedy length, so (prompt) names a
// greedy request and can be replayed alone.
const words = fs.readFileSync(path.join(root, "models/tinyshakespeare-validation.txt"), "utf8").split(/\s+/).filter(Boolean);
const prompts = Array.from({ length: 16 }, (_, i) => ({
  text: words.slice(i * 97, i * 97 + 4 + (i % 5) * 6).join(" "),
  max_tokens: 12 + (i * 7) % 37,
}));

// A free loopback port (the server logs its port at info level, which this run turns off to
// keep thousands of request lines out of the way).
const freePort = () => new Promise((resolve) => {
  const srv = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = srv.address();
    srv.close(() => resolve(port));
  });
});

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "statelm-load-"));

async function startServer() {
  const port = await freePort();
  const child = spawn(path.resolve(root, opt.binary),
    ["serve", path.resolve(root, opt.model), "--port", String(port), "--max-sequences", String(opt["max-sequences"]),
     "--max-concurrent-requests", String(opt.clients + 16), "--max-context", "512"],
    // A scratch data directory: sessions (where the build has them) stay out of the user's.
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, STATELM_LOG: "warning", XDG_DATA_HOME: scratch } });
  let exited = false;
  child.on("exit", () => { exited = true; });
  for (let i = 0; i < 600 && !exited; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) return { port, child };
    } catch (_) { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("statelm serve did not start");
}

// One streamed request: resolves with its outcome and timings.
async function streamOnce(base, body, cancelAfter) {
  const controller = new AbortController();
  const start = performance.now();
  const out = { text: "", ttft: null, gaps: [], status: "completed", tokens: 0 };
  try {
    const r = await fetch(base + "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }), signal: controller.signal,
    });
    if (r.status !== 200) return { ...out, status: "failed", error: `HTTP ${r.status}: ${await r.text()}` };
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", last = start, done = false;
    while (!done) {
      const { value, done: eof } = await reader.read();
      if (eof) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(6, end);
        buffer = buffer.slice(end + 2);
        if (data === "[DONE]") { done = true; break; }
        const chunk = JSON.parse(data);
        if (chunk.error) return { ...out, status: "failed", error: chunk.error.message };
        const piece = chunk.choices[0].text;
        if (!piece) continue;
        const now = performance.now();
        if (out.ttft === null) out.ttft = now - start; else out.gaps.push(now - last);
        last = now;
        out.text += piece;
        out.tokens += 1;
        if (cancelAfter && out.tokens >= cancelAfter) {
          controller.abort();
          return { ...out, status: "cancelled" };
        }
      }
    }
    return done ? out : { ...out, status: "failed", error: "stream ended without [DONE]" };
  } catch (e) {
    return { ...out, status: controller.signal.aborted ? "cancelled" : "failed", error: String(e) };
  }
}

const pct = (a, p) => (a.length ? a.slice().sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(p * a.length))] : NaN);

const { port, child } = await startServer();
const base = `http://127.0.0.1:${port}`;
const counts = { completed: 0, failed: 0, cancelled: 0 };
const ttfts = [], gaps = [], greedy = new Map(), errors = [];
let tokens = 0;
const t0 = performance.now(), deadline = t0 + opt.seconds * 1000;

await Promise.all(Array.from({ length: opt.clients }, async () => {
  while (performance.now() < deadline) {
    const p = prompts[Math.floor(rand() * prompts.length)];
    const isGreedy = rand() < 0.5;
    const body = isGreedy ? { prompt: p.text, max_tokens: p.max_tokens, temperature: 0 }
                          : { prompt: p.text, max_tokens: 8 + Math.floor(rand() * 40), temperature: 0.9, seed: Math.floor(rand() * 1e9) };
    const cancelAfter = rand() < opt.cancel ? 1 + Math.floor(rand() * 6) : 0;
    const r = await streamOnce(base, body, cancelAfter);
    counts[r.status] += 1;
    tokens += r.tokens;
    if (r.ttft !== null) ttfts.push(r.ttft);
    gaps.push(...r.gaps);
    if (r.status === "failed" && errors.length < 5) errors.push(r.error);
    if (r.status === "completed" && isGreedy) {
      if (!greedy.has(p)) greedy.set(p, []);
      greedy.get(p).push(r.text);
    }
  }
}));
const loadSeconds = (performance.now() - t0) / 1000;

// Each greedy prompt alone, one at a time, on the same (now idle) server.
let mismatches = 0, checked = 0;
for (const [p, texts] of greedy) {
  const r = await streamOnce(base, { prompt: p.text, max_tokens: p.max_tokens, temperature: 0 }, 0);
  for (const t of texts) {
    checked += 1;
    if (t !== r.text) {
      mismatches += 1;
      if (errors.length < 5) errors.push(`greedy mismatch for "${p.text}": ${JSON.stringify(t)} vs alone ${JSON.stringify(r.text)}`);
    }
  }
}
child.kill("SIGTERM");
await new Promise((resolve) => child.on("exit", resolve));
fs.rmSync(scratch, { recursive: true, force: true });

const ms = (x) => (Number.isFinite(x) ? x.toFixed(1) : "–");
console.log(`| clients | seconds | completed | failed | cancelled | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | greedy streams = alone |`);
console.log(`|---|---|---|---|---|---|---|---|---|---|---|`);
console.log(`| ${opt.clients} | ${loadSeconds.toFixed(1)} | ${counts.completed} | ${counts.failed} | ${counts.cancelled} | ` +
            `${(tokens / loadSeconds).toFixed(0)} | ${ms(pct(ttfts, 0.5))} ms | ${ms(pct(ttfts, 0.99))} ms | ` +
            `${ms(pct(gaps, 0.5))} ms | ${ms(pct(gaps, 0.99))} ms | ${checked - mismatches}/${checked} |`);
for (const e of errors) console.log("error: " + e);
process.exit(counts.failed || mismatches ? 1 : 0);
