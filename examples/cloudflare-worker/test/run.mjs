// Runs the Worker in Cloudflare's runtime (workerd, through Miniflare) and
// fires concurrent requests at it. Driven by e2e/worker_test.go in the
// repository's root; see README.md for the protocol.
//
//   TINYBIRD_URL=http://127.0.0.1:8080 TINYBIRD_TOKEN=... [REQUESTS=300] node test/run.mjs
//
// 1. Bundles src/index.js with the project's wrangler, exactly as
//    `wrangler deploy` would (--dry-run, into a temporary directory).
// 2. Starts the bundle in Miniflare with the compatibility date from
//    wrangler.toml and TINYBIRD_URL and TINYBIRD_TOKEN as its vars.
// 3. Sends REQUESTS concurrent GET /api/hello requests and prints one JSON
//    line on stdout: {"ids":[...]}, the X-Request-Id of every response,
//    which is the id of the event the Worker logs for it.
// 4. Keeps workerd running, so the ingests in ctx.waitUntil go on, until
//    stdin closes (the caller has seen every event arrive), then stops it.
//    Miniflare's dispose kills workerd at once, so stopping earlier could
//    cut off ingests still in flight.
//
// Everything else (wrangler's output, the Worker's console) goes to stderr.

import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const requests = Number(process.env.REQUESTS ?? "300");
const holdMs = Number(process.env.HOLD_TIMEOUT_MS ?? "120000");
for (const name of ["TINYBIRD_URL", "TINYBIRD_TOKEN"]) {
  if (!process.env[name]) fail(`${name} is not set`);
}
if (!Number.isInteger(requests) || requests < 1) fail(`REQUESTS=${process.env.REQUESTS}: want a positive integer`);

function fail(msg) {
  console.error(`run.mjs: ${msg}`);
  process.exit(1);
}

// wrangler's own bundle of the Worker, as `wrangler deploy` would upload it.
async function bundle(outdir) {
  const wrangler = join(root, "node_modules", "wrangler", "bin", "wrangler.js");
  const args = [wrangler, "deploy", "--dry-run", "--outdir", outdir];
  const env = { ...process.env, WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" };
  const code = await new Promise((resolve, reject) => {
    const p = spawn(process.execPath, args, { cwd: root, env, stdio: ["ignore", "pipe", "inherit"] });
    p.stdout.pipe(process.stderr);
    p.on("error", reject);
    p.on("exit", resolve);
  });
  if (code !== 0) fail(`wrangler deploy --dry-run exited with ${code}`);
  return join(outdir, "index.js");
}

async function main() {
  const toml = await readFile(join(root, "wrangler.toml"), "utf8");
  const compatibilityDate = /^compatibility_date\s*=\s*"([^"]+)"/m.exec(toml)?.[1];
  if (!compatibilityDate) fail("no compatibility_date in wrangler.toml");

  const outdir = await mkdtemp(join(tmpdir(), "tbproxy-worker-"));
  try {
    const scriptPath = await bundle(outdir);
    const mf = new Miniflare({
      modules: true,
      scriptPath,
      modulesRoot: outdir,
      compatibilityDate,
      bindings: { TINYBIRD_URL: process.env.TINYBIRD_URL, TINYBIRD_TOKEN: process.env.TINYBIRD_TOKEN },
      // What Cloudflare's edge would put in request.cf (Miniflare would
      // otherwise try to download it).
      cf: { country: "CH", city: "Zürich", colo: "ZRH" },
      handleRuntimeStdio(stdout, stderr) {
        stdout.pipe(process.stderr);
        stderr.pipe(process.stderr);
      },
    });
    try {
      await mf.ready;
      const ids = await Promise.all(
        Array.from({ length: requests }, async (_, i) => {
          const name = `Zürich "${i}"`;
          const res = await mf.dispatchFetch(`https://api.example.com/api/hello?name=${encodeURIComponent(name)}`, {
            headers: { "User-Agent": `tbproxy-worker-e2e/1.0 (request ${i}; "quoted")` },
          });
          const body = await res.json();
          if (res.status !== 200 || body.hello !== name) {
            throw new Error(`request ${i}: got ${res.status} ${JSON.stringify(body)}`);
          }
          const id = res.headers.get("X-Request-Id");
          if (!id) throw new Error(`request ${i}: no X-Request-Id`);
          return id;
        }),
      );
      process.stdout.write(`${JSON.stringify({ ids })}\n`);

      // Hold workerd (and its waitUntil work) until stdin closes.
      await new Promise((resolve) => {
        const timer = setTimeout(() => {
          console.error(`run.mjs: stdin still open after ${holdMs} ms; stopping`);
          resolve();
        }, holdMs);
        process.stdin.on("end", () => {
          clearTimeout(timer);
          resolve();
        });
        process.stdin.on("error", resolve);
        process.stdin.resume();
      });
    } finally {
      await mf.dispose();
    }
  } finally {
    await rm(outdir, { recursive: true, force: true });
  }
}

main().catch((err) => fail(err?.stack ?? String(err)));
