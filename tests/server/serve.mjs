// Starts `statelm serve` on a free port for the node tests and stops it afterwards.
//   const server = await startServer({ args: ["--api-key", "k"] });  ...  await server.stop();
// STATELM_BINARY (the built binary) and STATELM_SOURCE_DIR (the repository) come from CTest
// (tests/server/CMakeLists.txt); the model is the shipped demo, models/shakespeare-mamba2.
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export const binary = process.env.STATELM_BINARY;
export const sourceDir = process.env.STATELM_SOURCE_DIR;

export async function startServer({ args = [], model = "models/shakespeare-mamba2", env = {} } = {}) {
  if (!binary || !sourceDir) throw new Error("set STATELM_BINARY and STATELM_SOURCE_DIR");
  // Sessions (if this build has the API) go to a scratch database, not the user's.
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "statelm-node-"));
  const child = spawn(binary, ["serve", path.join(sourceDir, model), "--port", "0", ...args], {
    env: { ...process.env, XDG_DATA_HOME: scratch, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("statelm serve did not start in 60 s:\n" + log)), 60_000);
    child.stderr.on("data", (d) => {
      log += d;
      const m = /serving .* on http:\/\/[^:]+:(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.on("exit", (code) => reject(new Error(`statelm serve exited (${code}):\n${log}`)));
  });
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    log: () => log,
    stop: () =>
      new Promise((resolve) => {
        const done = (code) => {
          fs.rmSync(scratch, { recursive: true, force: true });
          resolve(code);
        };
        if (child.exitCode !== null) return done(child.exitCode);
        child.on("exit", done);
        child.kill("SIGTERM");
      }),
  };
}
