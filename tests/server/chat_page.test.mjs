// The chat page (GET /) in headless Chromium, as a person uses it: load it, type a message,
// send it, watch the reply stream in and the tokens/s figure appear. Debian's chromium, driven
// by playwright-core (no browser download); run_node_test.sh skips without either.
import assert from "node:assert/strict";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { startServer } from "./serve.mjs";

let server, browser;

before(async () => {
  server = await startServer();
  // Flags for a machine without network or GPU: no sandbox (root in CI), no background
  // connections (refused here, and slow to fail). Playwright gives it a fresh profile.
  browser = await chromium.launch({
    executablePath: process.env.STATELM_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test("a message streams a reply and shows tokens/s", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(server.url + "/");
  assert.equal(await page.title(), "statelm chat");
  await page.waitForFunction(() => document.getElementById("model").textContent.includes("shakespeare-mamba2"));
  await page.fill("#max-tokens", "40");
  await page.fill("#input", "Who goes there?");
  await page.click("#send");
  // The reply grows while it streams: seen with some text before the end.
  await page.waitForFunction(() => (document.querySelector(".msg.assistant")?.textContent ?? "").length > 0, null, { timeout: 60_000 });
  await page.waitForFunction(() => !document.getElementById("send").disabled, null, { timeout: 120_000 });
  const reply = await page.textContent(".msg.assistant");
  const stats = await page.textContent("#stats");
  assert.ok(reply.length > 0 && !reply.includes("["), "reply: " + reply);
  assert.match(stats, /\d+ tokens .* [\d.]+ tokens\/s/);
  await page.screenshot({ path: path.join(os.tmpdir(), "statelm-chat-page.png") });
  // A second turn carries the first: the conversation has four bubbles.
  await page.fill("#input", "Speak, friend.");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelectorAll(".msg").length === 4 && !document.getElementById("send").disabled,
                             null, { timeout: 120_000 });
  assert.deepEqual(errors, []);
});
