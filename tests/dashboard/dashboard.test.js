// The dashboard (GET /) in a real browser: Debian's chromium, headless, driven by
// playwright-core, against a real `agentlog dev` (embedded log, API keys configured, the
// builtin agents) on a 127.0.0.1 port chosen here.
//
// It enters a wrong key and then the admin tenant's key, submits a task from the form and
// follows it to its task page until it shows completed with its timeline and streamed output,
// answers a waiting task's signal, resubmits a dead letter from the DLQ page (after fixing
// what made it fail) and checks through the API that it ran again, takes a snapshot on the
// admin page, checks that a plain tenant is refused there, and screenshots every page.
// It measures the page's weight and first contentful paint and asserts them under the
// issue's targets (200 KB, 1 s).
//
// AGENTLOG_BIN names the binary; CHROMIUM the browser (default /usr/bin/chromium). Without
// either the test skips, except under CI=true, where it fails. Screenshots go to
// DASHBOARD_SCREENSHOTS (scripts/dashboard-test.sh --update-screenshots sets docs/dashboard),
// else to a temporary directory.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { once } from "node:events";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";

const BIN = process.env.AGENTLOG_BIN || "";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const CI = process.env.CI === "true";
/** The targets. */
const MAX_PAGE_BYTES = 200 * 1024;
const MAX_FIRST_PAINT_MS = 1000;
const READY_MS = 90_000;
const ADMIN_KEY = "dash-admin-key-0123456789";
const TEAM_KEY = "dash-team-key-9876543210";

function skipReason() {
  const missing = [];
  if (!BIN) missing.push("AGENTLOG_BIN is not set (the agentlog binary to run)");
  if (!fs.existsSync(CHROMIUM)) missing.push(`no chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  if (!missing.length) return false;
  // Under CI nothing may skip: the test runs and fails on what is missing.
  return CI ? false : missing.join("; ");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const sha256 = (text) => createHash("sha256").update(text).digest("hex");

async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Polls `check` (async, answering a truthy value) until it does, at most `ms`. */
async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await sleep(100);
  }
}

/** `agentlog dev` on the embedded log in a temporary directory, with two keys. */
async function startAgentlog() {
  if (!BIN) throw new Error("CI=true but AGENTLOG_BIN does not name the agentlog binary: the dashboard test cannot run");
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "agentlog-dashboard-"));
  const [apiPort, registryPort] = [await freePort(), await freePort()];
  const gate = path.join(root, "gate.json");
  const config = `[log]
backend = "embedded"

[log.embedded]
data_dir = "${path.join(root, "log")}"

[supervisor]
state_dir = "${path.join(root, "supervisor")}"
heartbeat_interval_ms = 500

[projection]
dir = "${path.join(root, "projection")}"

[api]
listen = "127.0.0.1:${apiPort}"
admin_tenants = ["ops"]

[[api.keys]]
tenant = "ops"
sha256 = "${sha256(ADMIN_KEY)}"

[[api.keys]]
tenant = "team"
sha256 = "${sha256(TEAM_KEY)}"

[registry]
listen = "127.0.0.1:${registryPort}"
url = "http://127.0.0.1:${registryPort}"
# The registry this process serves answers keyed requests only, and this process registers
# its schemas there.
api_key = "${ADMIN_KEY}"

[agents.echo]
description = "returns its input"
runtime = { kind = "builtin", name = "echo" }

[agents.textstats]
description = "counts chars, words and lines of {\\"text\\": ...}"
runtime = { kind = "builtin", name = "textstats" }

[agents.sleep]
description = "sleeps {\\"ms\\": N}"
runtime = { kind = "builtin", name = "sleep" }
concurrency = 2

[agents.tokens]
description = "streams {\\"text\\": ...} word by word"
runtime = { kind = "builtin", name = "tokens" }

[agents.approval]
description = "drafts {\\"text\\": ...} and waits for the signal approval"
runtime = { kind = "builtin", name = "approval" }

# Prints the file gate.json: fails (exit 1, retryable) until the test writes it, and with one
# attempt allowed a failure is a dead letter.
[agents.gate]
description = "answers the content of a file that does not exist until the test writes it"
runtime = { kind = "exec", program = "/bin/sh", args = ["-c", "cat >/dev/null; cat \\"$GATE\\""], env = { GATE = "${gate}" } }
[agents.gate.retry]
max_attempts = 1
retry_on = ["exit"]
`;
  fs.writeFileSync(path.join(root, "agentlog.toml"), config);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AGENTLOG__") && k !== "AGENTLOG_CONFIG"));
  const logPath = path.join(root, "agentlog.out");
  const fd = fs.openSync(logPath, "w");
  const child = spawn(BIN, ["--config", path.join(root, "agentlog.toml"), "dev"], { cwd: root, env, stdio: ["ignore", fd, fd] });
  fs.closeSync(fd);
  const output = () => {
    try {
      // An exit ends with anyhow's `Error: ...` and a backtrace: show the error first.
      const text = fs.readFileSync(logPath, "utf8");
      const error = text.lastIndexOf("Error: ");
      return error >= 0 ? text.slice(error, error + 3000) : text.slice(-4000);
    } catch {
      return "";
    }
  };
  const url = `http://127.0.0.1:${apiPort}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(root, { recursive: true, force: true });
  };
  try {
    await until(
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`agentlog dev exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
        try {
          const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) });
          await response.body?.cancel();
          return response.status === 200;
        } catch {
          return false; // not listening yet
        }
      },
      READY_MS,
      "agentlog dev ready",
    );
  } catch (e) {
    await stop();
    throw e;
  }
  return { url, gate, output, stop };
}

/** The API, as the test calls it besides the browser. */
function client(url, key) {
  return async (pathname, { method = "GET", body } = {}) => {
    const headers = { authorization: `Bearer ${key}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(`${url}${pathname}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  };
}

async function launch() {
  const { chromium } = await import("playwright-core");
  // Without the background-networking flags chromium dials Google's services at start, and
  // this closed network refuses those connections. Playwright starts it with a fresh profile
  // of its own (a new temporary --user-data-dir, removed on close).
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

function screenshotDir() {
  const dir = process.env.DASHBOARD_SCREENSHOTS || fs.mkdtempSync(path.join(os.tmpdir(), "agentlog-dashboard-shots-"));
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** A page that records every request's URL and every script error or CSP violation. */
async function openPage(browser, url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const seen = { urls: [], errors: [] };
  page.on("request", (request) => seen.urls.push(request.url()));
  page.on("pageerror", (error) => seen.errors.push(`pageerror: ${error.message}`));
  page.on("console", (message) => {
    // The 401s of the key flow are logged as failed loads; they are expected.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) seen.errors.push(`console: ${message.text()}`);
  });
  return { context, page, seen };
}

test("the dashboard on agentlog dev: key, submit, task page, signal, dead letter resubmitted, admin", { skip: skipReason(), timeout: 300_000 }, async (t) => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`CI=true but there is no chromium at ${CHROMIUM}: the dashboard test cannot run`);
  const agentlog = await startAgentlog();
  t.after(() => agentlog.stop());
  const browser = await launch();
  t.after(() => browser.close());
  const shots = screenshotDir();
  const ops = client(agentlog.url, ADMIN_KEY);
  const { page, seen, context } = await openPage(browser, agentlog.url);
  t.after(() => context.close());
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`) });

  await t.test("the files are served with a strict CSP, nosniff and an ETag, without a key", async () => {
    const response = await fetch(`${agentlog.url}/`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type"), /^text\/html/);
    assert.match(response.headers.get("content-security-policy"), /script-src 'self';/);
    assert.equal(response.headers.get("x-content-type-options"), "nosniff");
    const etag = response.headers.get("etag");
    assert.ok(etag);
    await response.body?.cancel();
    const again = await fetch(`${agentlog.url}/`, { headers: { "if-none-match": etag } });
    assert.equal(again.status, 304);
    const script = await fetch(`${agentlog.url}/dashboard/app.js`);
    assert.match(script.headers.get("content-type"), /^text\/javascript/);
    await script.body?.cancel();
    const missing = await fetch(`${agentlog.url}/dashboard/nope.js`);
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    // The data is not: the API still wants a key.
    const stats = await fetch(`${agentlog.url}/v1/stats`);
    assert.equal(stats.status, 401);
    await stats.body?.cancel();
  });

  await t.test("weight and first paint are under the targets; a wrong key shows the API's error", async () => {
    await page.goto(`${agentlog.url}/`, { waitUntil: "load" });
    const figures = await page.evaluate(() => {
      const navigation = performance.getEntriesByType("navigation")[0];
      const resources = performance.getEntriesByType("resource").filter((r) => new URL(r.name).pathname.startsWith("/dashboard/"));
      const paint = performance.getEntriesByType("paint").find((p) => p.name === "first-contentful-paint");
      return {
        bytes: navigation.decodedBodySize + resources.reduce((sum, r) => sum + r.decodedBodySize, 0),
        files: 1 + resources.length,
        firstContentfulPaintMs: paint ? paint.startTime : null,
        domContentLoadedMs: navigation.domContentLoadedEventEnd,
      };
    });
    console.log(`dashboard: ${figures.bytes} bytes in ${figures.files} files; first contentful paint ${figures.firstContentfulPaintMs?.toFixed(0)} ms; DOMContentLoaded ${figures.domContentLoadedMs.toFixed(0)} ms`);
    assert.ok(figures.bytes > 0 && figures.bytes < MAX_PAGE_BYTES, `page weight ${figures.bytes} bytes`);
    assert.ok(figures.firstContentfulPaintMs !== null && figures.firstContentfulPaintMs < MAX_FIRST_PAINT_MS, `first contentful paint ${figures.firstContentfulPaintMs} ms`);

    await page.locator("#key-dialog").waitFor({ state: "visible" });
    await page.fill("#key-input", "not-a-key");
    await page.click("#key-form button[type=submit]");
    await page.locator("#key-error", { hasText: "the API key is not valid" }).waitFor();
    await shot("key");
    await page.fill("#key-input", ADMIN_KEY);
    await page.click("#key-form button[type=submit]");
    await page.locator("#who", { hasText: "tenant ops (admin)" }).waitFor();
    assert.equal(await page.locator("#key-dialog").isVisible(), false);
    assert.equal(await page.locator("#nav-admin").isVisible(), true);
  });

  await t.test("the overview charts throughput and latency per agent type", async () => {
    // Work over a few of the page's samples (every 2 s), until its throughput chart draws a
    // line of several points for both types.
    const drawn = async () => {
      const segments = await page.locator("section.card:first-child svg.chart path.line").evaluateAll((paths) => paths.map((p) => (p.getAttribute("d").match(/L/g) || []).length));
      return segments.filter((n) => n >= 3).length >= 2;
    };
    await until(
      async () => {
        for (const [agent_type, input] of [["echo", { n: 1 }], ["textstats", { text: "hello agent world" }]]) {
          for (let j = 0; j < 3; j++) assert.equal((await ops("/v1/tasks", { method: "POST", body: { agent_type, input } })).status, 202);
        }
        await sleep(500);
        return drawn();
      },
      30_000,
      "throughput lines on the overview",
    );
    await page.locator(".health.ok").waitFor();
    await page.locator("td", { hasText: "textstats" }).first().waitFor();
    await shot("overview");
  });

  let taskId;
  await t.test("a task submitted from the form completes on its task page, with its timeline and stream", async () => {
    await page.click("#nav a[data-page=tasks]");
    await page.locator("#submit-type option[value=tokens]").waitFor({ state: "attached" });
    await page.selectOption("#submit-type", "tokens");
    await page.fill("#submit-input", JSON.stringify({ text: "agents stream their output as they think", delay_ms: 60 }));
    await page.click("#submit-form button[type=submit]");
    await page.waitForURL(/#\/task\//);
    taskId = decodeURIComponent(new URL(page.url()).hash.replace("#/task/", ""));
    await page.locator("dl.fields dd .badge.st-completed").waitFor({ timeout: 30_000 });
    await page.locator("td code", { hasText: "TaskCompleted" }).waitFor();
    await page.locator("#stream-text", { hasText: "agents stream their output as they think" }).waitFor();
    await page.locator("#stream-state", { hasText: "ended" }).waitFor();
    const view = await ops(`/v1/tasks/${encodeURIComponent(taskId)}`);
    assert.equal(view.body.status, "completed");
    assert.equal(view.body.agent_type, "tokens");
    await shot("task");
    await page.click("#nav a[data-page=tasks]");
    await page.locator("td a", { hasText: taskId }).waitFor();
    await shot("tasks");
  });

  await t.test("a waiting task resumes with the signal sent from its page", async () => {
    const submitted = await ops("/v1/tasks", { method: "POST", body: { agent_type: "approval", input: { text: "refund order 17" } } });
    assert.equal(submitted.status, 202);
    await page.goto(`${agentlog.url}/#/task/${encodeURIComponent(submitted.body.task_id)}`);
    await page.locator("form.signal button", { hasText: "Send approval" }).click({ timeout: 30_000 });
    await page.locator("dl.fields dd .badge.st-completed").waitFor({ timeout: 30_000 });
    const view = await ops(`/v1/tasks/${encodeURIComponent(submitted.body.task_id)}`);
    assert.equal(view.body.outcome.output.approved, true);
  });

  await t.test("a dead letter resubmitted from the DLQ page runs again", async () => {
    const submitted = await ops("/v1/tasks", { method: "POST", body: { agent_type: "gate", input: { order: 17 } } });
    assert.equal(submitted.status, 202);
    const id = submitted.body.task_id;
    await until(async () => (await ops(`/v1/tasks/${encodeURIComponent(id)}`)).body?.status === "dead_lettered", 30_000, "the gate task dead-lettered");
    await page.click("#nav a[data-page=dlq]");
    const row = page.locator(`tr[data-task="${id}"]`);
    await row.waitFor({ timeout: 15_000 });
    await row.locator(".badge.st-dead_lettered").waitFor();
    // What made it fail is fixed; then the operator resubmits.
    fs.writeFileSync(agentlog.gate, JSON.stringify({ approved: true, order: 17 }));
    await row.locator("button.resubmit").click();
    await page.locator(".flash .ok", { hasText: "Resubmitted" }).waitFor();
    await until(async () => (await ops(`/v1/tasks/${encodeURIComponent(id)}`)).body?.status === "completed", 30_000, "the resubmitted task completed");
    const view = await ops(`/v1/tasks/${encodeURIComponent(id)}`);
    assert.deepEqual(view.body.outcome.output, { approved: true, order: 17 });
    assert.ok(view.body.timeline.filter((e) => e.event === "TaskSubmitted").length >= 2, JSON.stringify(view.body.timeline));
    await row.locator(".badge.st-completed").waitFor({ timeout: 15_000 });
    await shot("dlq");
  });

  await t.test("lanes show waiting tasks and agents their health and load", async () => {
    for (let i = 0; i < 10; i++) assert.equal((await ops("/v1/tasks", { method: "POST", body: { agent_type: "sleep", input: { ms: 1500 } } })).status, 202);
    await page.click("#nav a[data-page=lanes]");
    const waiting = page.locator('tr[data-type="sleep"] td[data-lane="normal"]');
    await until(async () => Number((await waiting.textContent()) || 0) > 0, 15_000, "waiting sleep tasks on the lanes page");
    await shot("lanes");
    await page.click("#nav a[data-page=agents]");
    await page.locator("td .badge.st-running").first().waitFor();
    await until(async () => (await page.locator("td", { hasText: "2/2" }).count()) > 0, 15_000, "a sleep agent at full load");
    await shot("agents");
  });

  await t.test("the admin page takes a snapshot for an admin tenant and refuses a plain tenant", async () => {
    await page.click("#nav a[data-page=admin]");
    await page.locator("#replay-state").waitFor();
    await page.click("#snapshot");
    await page.locator(".flash .ok", { hasText: "Snapshot taken" }).waitFor();
    await shot("admin");

    const other = await openPage(browser, agentlog.url);
    t.after(() => other.context.close());
    await other.page.goto(`${agentlog.url}/#/admin`);
    await other.page.locator("#key-dialog").waitFor({ state: "visible" });
    await other.page.fill("#key-input", TEAM_KEY);
    await other.page.click("#key-form button[type=submit]");
    await other.page.locator("#who", { hasText: "tenant team" }).waitFor();
    assert.equal(await other.page.locator("#nav-admin").isVisible(), false);
    await other.page.locator("#admin-refused", { hasText: "not in api.admin_tenants" }).waitFor();
    // A tenant sees its own tasks only: the admin tenant's task is not found for it.
    const foreign = await client(agentlog.url, TEAM_KEY)(`/v1/tasks/${encodeURIComponent(taskId)}`);
    assert.equal(foreign.status, 404);
    assert.deepEqual(other.seen.errors, []);
  });

  await t.test("the key never reached a URL, and no script error or CSP violation happened", async () => {
    for (const url of seen.urls) {
      assert.ok(!url.includes(ADMIN_KEY) && !url.includes(TEAM_KEY), url);
    }
    assert.deepEqual(seen.errors, []);
    console.log(`screenshots in ${shots}`);
  });
});
