// `agentlog dev` for the end-to-end tests, on each backend the issue asks for: the embedded
// log in a temporary directory, and Kafka when AGENTLOG_TEST_KAFKA names a broker (`make
// test` starts one and sets it; `scripts/kafka-local.sh start` for a run by hand), with topics
// of a prefix unique to the run (`agentlog dev` creates them, as `agentlog topics apply` does).
//
// The rule of the suites: a test that could not run shows as skipped, never as passed, and
// under CI=true nothing may skip: the Kafka variant without a broker fails.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { freePort, sleep } from "./helpers.js";

/** Every backend the end-to-end suites run on (one agentlog process each). */
export const BACKENDS = ["embedded", "kafka"];

/** How long agentlog may take to be ready (on Kafka: topics, the consumer groups' joins). */
export const READY_MS = 90_000;

const KAFKA = (process.env.AGENTLOG_TEST_KAFKA ?? "").trim();
const CI = process.env.CI === "true";

/**
 * The `skip` option of a backend's suite: false when it can run; a reason (the suite shows as
 * skipped) when it cannot. Under CI=true the Kafka variant never skips: without a broker its
 * `before` hook fails ({@link startAgentlog}), and so does every test of it.
 */
export function backendSkip(backend) {
  if (backend === "kafka" && !KAFKA && !CI) return "AGENTLOG_TEST_KAFKA is not set (a Kafka broker, e.g. 127.0.0.1:19092 after scripts/kafka-local.sh start)";
  return false;
}

function logSection(backend, root, prefix) {
  if (backend === "embedded") return `[log]\nbackend = "embedded"\n\n[log.embedded]\ndata_dir = "${path.join(root, "log")}"\n`;
  if (backend === "kafka") {
    // The broker's JVM, agentlog and the tests share 2 cores: give admin and metadata calls
    // more room than the 5 s default (as the Rust suites do).
    return `[log]\nbackend = "kafka"\ntopic_prefix = "${prefix}"\n\n[log.kafka]\nbootstrap_servers = "${KAFKA}"\nrequest_timeout_ms = 15000\n`;
  }
  throw new Error(`unknown backend ${backend}`);
}

/**
 * Starts `agentlog --config <file> dev` on `backend` with the agent types `agents` (the
 * `[agents.*]` tables) and waits until it is ready. Returns `{url, backend, prefix, output(),
 * stop()}`; `stop()` sends SIGTERM to the process started here (SIGKILL after 20 s) and
 * removes its directory.
 */
export async function startAgentlog({ bin, backend, agents, name = "sdk-ts-e2e", maxWaitMs = 10_000 }) {
  const prefix = `${name.replaceAll("-", "")}${randomUUID().replaceAll("-", "").slice(0, 10)}.`;
  if (backend === "kafka" && !KAFKA) throw new Error("CI=true but AGENTLOG_TEST_KAFKA does not name a Kafka broker: the Kafka variant of the end-to-end tests cannot run");
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `agentlog-${name}-${backend}-`));
  const [apiPort, registryPort] = [await freePort(), await freePort()];
  const config = `${logSection(backend, root, prefix)}
[supervisor]
state_dir = "${path.join(root, "supervisor")}"
heartbeat_interval_ms = 200

[projection]
dir = "${path.join(root, "projection")}"

[api]
listen = "127.0.0.1:${apiPort}"
max_wait_ms = ${maxWaitMs}

[registry]
listen = "127.0.0.1:${registryPort}"
url = "http://127.0.0.1:${registryPort}"

${agents}`;
  fs.writeFileSync(path.join(root, "agentlog.toml"), config);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AGENTLOG__") && k !== "AGENTLOG_CONFIG"));
  const logPath = path.join(root, "agentlog.out");
  const fd = fs.openSync(logPath, "w");
  const child = spawn(bin, ["--config", path.join(root, "agentlog.toml"), "dev"], { cwd: root, env, stdio: ["ignore", fd, fd] });
  fs.closeSync(fd);
  const output = () => {
    try {
      return fs.readFileSync(logPath, "utf8").slice(-4000);
    } catch {
      return "";
    }
  };
  const running = {
    url: `http://127.0.0.1:${apiPort}`,
    backend,
    prefix,
    output,
    stop: async () => {
      await stop(child);
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    await waitReady(child, running.url, backend, output);
  } catch (e) {
    await running.stop();
    throw e;
  }
  return running;
}

async function waitReady(child, url, backend, output) {
  const deadline = Date.now() + READY_MS;
  while (true) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`agentlog dev (${backend}) exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
    try {
      const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) });
      await response.body?.cancel();
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`agentlog dev (${backend}) was not ready within ${READY_MS} ms:\n${output()}`);
    await sleep(100);
  }
}

/** Stops the process we started, by its pid: SIGTERM, then SIGKILL after 20 s. */
async function stop(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(timer);
}
