/**
 * An agent server: runs agentlog attempts over `node:http` (agent protocol v1).
 *
 * agentlog's `http` runtime POSTs each attempt as JSON to the agent type's URL; the app
 * decodes it, calls the handler registered for the agent type, and answers a framed
 * (`application/x-ndjson`) stream: whatever `progress`, `chunk` and `checkpoint` frames the
 * handler sends, each written as it is produced, then one `result`, `error` or `suspend`
 * frame (`suspend` when the handler awaits a signal it was not resumed by:
 * {@link Context.waitForSignal}).
 *
 * A handler of an agent type declared with `delegates = true` submits sub-tasks to other
 * agent types and awaits their outcomes through the attempt's callback URL
 * ({@link Context.delegate}).
 *
 * Dispatch: a request to `/<agent_type>` runs that type's handler; a request to `/` runs the
 * handler named by the body's `agent_type`. So one app serves several agent types, each
 * declared in agentlog with `url = "http://host:port/<agent_type>"` (or all at `/`).
 */

import * as http from "node:http";

import { AgentlogError, DelegationFailed, DelegationUnavailable, Suspension, WaitTimeout, errorFromResponse } from "./errors.js";
import {
  MAX_CHECKPOINT_LINE_BYTES,
  MAX_LINE_BYTES,
  NDJSON,
  PROTOCOL_VERSION,
  checkpointFrame,
  chunkFrame,
  decodeInput,
  encodeLine,
  errorFrame,
  errorFrameOf,
  progressFrame,
  resultFrame,
  Usage,
  type UsageFrame,
  type UsageReport,
  stringify,
  suspendFrame,
  type InputEncoding,
} from "./frames.js";

/** Largest attempt body read. agentlog's records are at most ~1 MB; the margin is for base64. */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;

/** What a handler may return: bytes, a string, any JSON value, or a `Result`. */
export type Handler = (ctx: Context) => unknown | Promise<unknown>;

/**
 * The signal that resumed a task (the attempt's `signal`, protocol §5): sent with
 * `POST /v1/tasks/{id}/signals/{name}` (the client's `signal()`), or the timeout marker
 * when none came in time and the agent type declares `on_signal_timeout = "resume"`.
 */
export interface ResumeSignal {
  /** The signal's name: the one the suspended attempt waited for. */
  name: string;
  /** The signal's id (its sender's `signalId`); `null` for a timeout. */
  id: string | null;
  /** What the sender sent (any JSON); `null` when it sent none, and for a timeout. */
  payload: unknown;
  /** True when no signal came within the wait: decide yourself (remind someone and wait
   * again, take a default). */
  timedOut: boolean;
}

/** Options of a sub-task ({@link Context.delegate}, {@link Context.submitChild}). */
export interface ChildOptions {
  /** The input's content type (the API's default, `application/json`, when not given). */
  contentType?: string;
  /** The child's labels. */
  labels?: Record<string, string>;
  /**
   * The child's number in this attempt: its id is `<parent id>.<n>`. By default one more
   * than the highest number this attempt used (0 first). Every attempt of the task (a
   * retry, a re-run after a worker died, a resumed attempt) numbers alike when it submits in
   * the same order, and the same `n` finds the same child: it is not submitted twice.
   */
  n?: number;
}

/** A sub-task's outcome ({@link Context.childOutcome}). */
export interface ChildOutcome {
  /** The child's number in the parent's attempt. */
  n: number;
  /** The child's id, `<parent id>.<n>`. */
  taskId: string;
  /** `completed`, `failed`, `dead_lettered`, `cancelled` or `expired`. */
  status: string;
  /** The child's output when completed (JSON, or text as a string); `null` otherwise. */
  output: unknown;
  /** The output's content type when completed; `null` otherwise. */
  contentType: string | null;
  /** The child's error kind when it did not complete; `null` otherwise. */
  errorKind: string | null;
  /** The child's error message when it did not complete; `null` otherwise. */
  message: string | null;
  /** The callback's answer as it came. */
  raw: Record<string, unknown>;
}

/** How long one `GET …/children/{n}/outcome` asks the worker to hold it (the most it
 * accepts is 60 s); {@link Context.childOutcome} asks again until the outcome comes. */
export const CHILD_WAIT_MS = 30_000;
/** Bounds the callback's requests beyond the wait they ask for. */
const CALLBACK_TIMEOUT_MS = 15_000;

/** @internal What the app hands a {@link Context}: how to send a frame, and where the
 * context records that the attempt suspends. */
export interface AttemptIo {
  signal: AbortSignal;
  send: (line: Buffer) => Promise<void>;
  suspended: (suspension: Suspension) => void;
}

/**
 * One attempt of a task, as the handler sees it.
 *
 * `input` is decoded per `inputEncoding` (a JSON value, a string, or a Buffer);
 * `contentType` is the input's. `signal` is aborted once agentlog hung up (the task was
 * cancelled or the attempt timed out): pass it on to `fetch` and the like, or look at
 * `cancelled` between steps. Nothing the handler sends after that is delivered.
 *
 * `lastCheckpoint` is the task's latest checkpoint, saved by an earlier attempt with
 * {@link Context.checkpoint} (`null` when there is none): a multi-step handler resumes from
 * it instead of starting over.
 *
 * `resumeSignal` is the signal that resumed the task after an attempt suspended
 * ({@link Context.waitForSignal}); `callbackUrl` is where the attempt submits and awaits
 * sub-tasks ({@link Context.delegate}), when its agent type declares `delegates = true`.
 */
export class Context {
  readonly taskId: string;
  readonly agentType: string;
  readonly attempt: number;
  /** The same for every attempt of a task: pass it on to side-effecting calls. */
  readonly idempotencyKey: string;
  readonly input: unknown;
  readonly contentType: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly inputEncoding: InputEncoding;
  /** Aborted once agentlog hung up (a cancel, or the attempt's timeout). Not the signal that
   * resumed a waiting task: that one is {@link Context.resumeSignal}. */
  readonly signal: AbortSignal;
  /**
   * The task's latest checkpoint (the `state` an earlier attempt passed to
   * {@link Context.checkpoint}), as JSON decodes it; `null` when there is none (the first
   * attempt, or no attempt saved one). It is what this attempt received: saving a checkpoint
   * does not change it. A checkpoint saved a moment before the task moved to another worker
   * may be missed, so treat it as "at least this far".
   */
  readonly lastCheckpoint: unknown;
  /** The attempt that saved {@link Context.lastCheckpoint}; `null` when there is none. */
  readonly lastCheckpointAttempt: number | null;
  /**
   * The signal that resumed the task (the attempt's `signal`): its `name`, `id`, `payload`
   * and whether it `timedOut`; `null` when this attempt was not resumed by one. (Not to be
   * confused with {@link Context.signal}, the AbortSignal of a hang-up.)
   * {@link Context.waitForSignal} returns it when its name matches.
   */
  readonly resumeSignal: ResumeSignal | null;
  /**
   * Where this attempt submits and awaits sub-tasks (the attempt's `callback_url`), valid
   * while the attempt runs; `null` unless the agent type declares `delegates = true`.
   * {@link Context.delegate} uses it.
   */
  readonly callbackUrl: string | null;
  readonly #send: (line: Buffer) => Promise<void>;
  readonly #suspended: (suspension: Suspension) => void;
  #suspension: Suspension | null = null;
  /** Whether a `waitForSignal` of this attempt returned `resumeSignal` already. */
  #signalTaken = false;
  /** The next child number when none is given: one more than the highest used. */
  #nextChild = 0;
  /** The numbers of the children this attempt submitted, by task id. */
  readonly #childNumbers = new Map<string, number>();
  /** What the attempt consumed so far ({@link Context.usage}); `null` until reported. */
  #usage: Usage | null = null;

  /** @internal Built by the app for each attempt. */
  constructor(attempt: Attempt, input: unknown, io: AttemptIo) {
    this.taskId = attempt.task_id;
    this.agentType = attempt.agent_type;
    this.attempt = attempt.attempt ?? 1;
    this.idempotencyKey = attempt.idempotency_key || attempt.task_id;
    this.input = input;
    this.contentType = attempt.content_type ?? "application/json";
    this.labels = Object.freeze({ ...(attempt.labels ?? {}) });
    this.inputEncoding = attempt.input_encoding ?? "json";
    this.signal = io.signal;
    this.lastCheckpoint = attempt.checkpoint ?? null;
    this.lastCheckpointAttempt = attempt.checkpoint_attempt ?? null;
    const resumed = attempt.signal ?? null;
    this.resumeSignal =
      resumed === null
        ? null
        : Object.freeze({ name: resumed.name, id: resumed.id ?? null, payload: resumed.payload ?? null, timedOut: resumed.timed_out ?? false });
    this.callbackUrl = attempt.callback_url || null;
    this.#send = async (line) => {
      // Once the attempt suspends, nothing more is sent: its last frame is the `suspend`.
      if (this.#suspension !== null) throw this.#suspension;
      await io.send(line);
    };
    this.#suspended = io.suspended;
  }

  /** True once agentlog hung up (see `signal`). */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /**
   * Reports what this attempt consumed, typically after each model call: tokens, cost and
   * counters add up over the reports. One model and one currency per attempt. Sent with the
   * handler's result (the `result` frame's `usage`), so a failed or suspended attempt reports
   * none. Throws a `RangeError` naming the field for a report agentlog would refuse
   * (negative or non-integer counts, a model over 128 characters, a currency that is not three
   * upper-case letters, a cost without a currency, more than 32 counters).
   */
  usage(report: UsageReport): void {
    const usage = this.#usage ?? new Usage();
    usage.add(report);
    this.#usage = usage;
  }

  /** @internal The `usage` of the result frame, when the handler reported any. */
  usageFrame(): UsageFrame | null {
    return this.#usage?.frame() ?? null;
  }

  /** Reports how far the attempt is (`percent` 0–100, `message`); shown as the task's
   * `progress` and streamed to clients. Rejects with `ChunkTooLarge` past 64 KiB. */
  async progress(update: { percent?: number | null; message?: string | null } = {}): Promise<void> {
    await this.#send(encodeLine(progressFrame(update.percent, update.message), MAX_LINE_BYTES));
  }

  /** Streams one chunk of output: a string as a text chunk, anything else as a JSON chunk.
   * Rejects with `ChunkTooLarge` (nothing sent) when the frame's line would exceed 64 KiB:
   * split it and emit the parts. */
  async emit(value: unknown): Promise<void> {
    await this.#send(encodeLine(chunkFrame(value), MAX_LINE_BYTES));
  }

  /**
   * Saves `state` (any JSON value) as the task's checkpoint: should this attempt fail and be
   * retried, or its worker die, the task's next attempt receives the latest one in
   * {@link Context.lastCheckpoint}. Sent as a `checkpoint` frame in order with the others;
   * agentlog writes it to its log before the attempt's outcome.
   *
   * Rejects, with nothing sent, with `CheckpointTooLarge` when the frame's line would
   * exceed 256 KiB (UTF-8 bytes; keep less state, e.g. a reference to data stored
   * elsewhere), and with a TypeError when `state` is not JSON (NaN, Infinity, a BigInt, a
   * cycle, `undefined`). A `null` state reads as no checkpoint to the next attempt.
   */
  async checkpoint(state: unknown): Promise<void> {
    await this.#send(encodeLine(checkpointFrame(state), MAX_CHECKPOINT_LINE_BYTES));
  }

  /**
   * Waits for the signal `name` (at most `timeoutMs`, 1 ms to 6 days) without holding a
   * worker: when this attempt was resumed by that signal ({@link Context.resumeSignal} has
   * its name) it returns it at once, also when it `timedOut` (check that); otherwise it ends
   * the attempt: it throws a {@link Suspension}, which the app answers with the final frame
   * `{"type": "suspend", "signal": name, "timeout_ms": timeoutMs}`, and the task waits.
   * Frames sent before stay sent; nothing is saved for you.
   *
   * **The handler runs again from the top** when the signal comes (a new attempt, with the
   * task's last checkpoint): checkpoint what is done before the wait and skip it when
   * {@link Context.lastCheckpoint} says so. A resumed attempt hands its signal to the first
   * `waitForSignal` of that name only; a later call (waiting again, e.g. after a timeout and
   * a reminder) suspends again. A handler that waits for several signals in turn should
   * checkpoint each answer, since an attempt receives only the signal that resumed it.
   *
   * Rejects with a TypeError or RangeError (nothing sent) when `name` does not match
   * `[a-z0-9_.-]{1,64}` or `timeoutMs` is not a whole number from 1 to 518,400,000.
   */
  async waitForSignal(name: string, timeoutMs: number): Promise<ResumeSignal> {
    const frame = suspendFrame(name, timeoutMs);
    if (this.#suspension !== null) throw this.#suspension;
    const resumed = this.resumeSignal;
    if (resumed !== null && resumed.name === name && !this.#signalTaken) {
      this.#signalTaken = true;
      return resumed;
    }
    this.#suspension = new Suspension(frame.signal, frame.timeout_ms);
    this.#suspended(this.#suspension);
    throw this.#suspension;
  }

  /**
   * Submits a sub-task of agent type `agentType` and waits for its outcome: returns the
   * child's output when it completed (JSON as its value, text as a string), and throws
   * {@link DelegationFailed} (with the child's `status`, `errorKind` and message) when it
   * failed, was dead-lettered, cancelled or expired. The child runs on its own type's
   * workers, in any language, while this attempt keeps its worker slot (its timeout bounds
   * the wait).
   *
   * Needs an agent type declared with `delegates = true` in agentlog's config (the attempt
   * then carries a {@link Context.callbackUrl}); without one it throws
   * {@link DelegationUnavailable} at once. Children are
   * numbered per attempt (`options.n`, see {@link ChildOptions}), so a retried or resumed
   * attempt that delegates in the same order finds its children instead of submitting them
   * again. Callback errors throw the API's typed errors (`BadRequest` 400, `NotFound` 404
   * when the attempt is no longer running, `PayloadTooLarge` 413); a hang-up of agentlog
   * aborts the wait.
   */
  async delegate(agentType: string, input: unknown, options: ChildOptions = {}): Promise<unknown> {
    // The number is taken at once, before any await: calls made together (Promise.all) are
    // numbered in the order of the calls, in every attempt alike.
    const child = this.#submit(agentType, input, options);
    await child.submitted;
    const outcome = await this.childOutcome(child.n);
    if (outcome.status === "completed") return outcome.output;
    throw new DelegationFailed(outcome);
  }

  /**
   * Submits a sub-task (`POST <callbackUrl>/children`) and returns its task id
   * (`<parent id>.<n>`) without waiting; {@link Context.childOutcome} awaits it. Numbered as
   * {@link Context.delegate} numbers them (the number is the id's last part).
   */
  async submitChild(agentType: string, input: unknown, options: ChildOptions = {}): Promise<string> {
    return this.#submit(agentType, input, options).submitted;
  }

  /**
   * The outcome of a child of this attempt, by its number `n` or its task id (as
   * {@link Context.submitChild} returned it), once it has one (`GET
   * <callbackUrl>/children/<n>/outcome?wait_ms=30000`, asked again while the child is
   * pending), whatever its status: {@link Context.delegate} is the one that throws for a
   * failure. The attempt's own timeout bounds the wait; `timeoutMs` gives up earlier with
   * `WaitTimeout`.
   */
  async childOutcome(child: number | string, options: { timeoutMs?: number } = {}): Promise<ChildOutcome> {
    this.#callback("");
    let n: number;
    if (typeof child === "string") {
      const known = this.#childNumbers.get(child);
      if (known === undefined) throw new RangeError(`no child \`${child}\` was submitted by this attempt; pass its number n`);
      n = known;
    } else {
      checkChildNumber(child);
      n = child;
    }
    const timeoutMs = options.timeoutMs ?? null;
    if (timeoutMs !== null && !(typeof timeoutMs === "number" && timeoutMs >= 0)) throw new RangeError(`timeoutMs must be a number of milliseconds of at least 0, not ${String(timeoutMs)}`);
    const deadline = timeoutMs === null ? null : Date.now() + timeoutMs;
    const url = this.#callback(`/children/${n}/outcome`);
    while (true) {
      if (this.#suspension !== null) throw this.#suspension;
      const waitMs = deadline === null ? CHILD_WAIT_MS : Math.max(0, Math.min(CHILD_WAIT_MS, Math.ceil(deadline - Date.now())));
      url.searchParams.set("wait_ms", String(waitMs));
      const started = Date.now();
      const [status, body] = await this.#callbackRequest("GET", url, undefined, waitMs + CALLBACK_TIMEOUT_MS);
      if (status === 200) return childOutcomeOf(n, body);
      if (status !== 202) throw new AgentlogError(status, "unexpected_answer", `the callback answered ${status} to the outcome of child ${n}`, { body });
      if (deadline !== null && Date.now() >= deadline) {
        throw new WaitTimeout(0, "wait_timeout", `child ${n} of task \`${this.taskId}\` has no outcome after ${timeoutMs} ms`);
      }
      // Still pending: ask again, at once unless the worker did not hold the request.
      if (Date.now() - started < 200) await pause(200, this.signal);
    }
  }

  /** Submits a child: its number, taken at once (before any await, so calls made together
   * are numbered in the order of the calls), and the promise of its task id. */
  #submit(agentType: string, input: unknown, options: ChildOptions): { n: number; submitted: Promise<string> } {
    const url = this.#callback("/children");
    if (this.#suspension !== null) throw this.#suspension;
    if (typeof agentType !== "string" || agentType === "") throw new TypeError("agentType must be a non-empty string");
    if (input === undefined) throw new TypeError("a child's input must be a JSON value, not undefined");
    const n = this.#childNumber(options.n);
    const body: Record<string, unknown> = { n, agent_type: agentType, input };
    if (options.contentType !== undefined && options.contentType !== null) body.content_type = options.contentType;
    if (options.labels !== undefined && options.labels !== null) body.labels = options.labels;
    const line = stringify(body);
    const submitted = (async () => {
      const [status, answer] = await this.#callbackRequest("POST", url, line, CALLBACK_TIMEOUT_MS);
      const taskId = (answer as { task_id?: unknown } | null)?.task_id;
      if (status >= 300 || typeof taskId !== "string") {
        throw new AgentlogError(status, "unexpected_answer", `the callback answered ${status} without a task id to the submission of child ${n}`, { body: answer });
      }
      this.#childNumbers.set(taskId, n);
      return taskId;
    })();
    return { n, submitted };
  }

  #childNumber(n: number | undefined): number {
    if (n === undefined || n === null) n = this.#nextChild;
    checkChildNumber(n);
    this.#nextChild = Math.max(this.#nextChild, n + 1);
    return n;
  }

  /** The callback URL with `tail` added to its path (its query, if any, kept);
   * {@link DelegationUnavailable} when the attempt has none. */
  #callback(tail: string): URL {
    if (this.callbackUrl === null) {
      throw new DelegationUnavailable(
        `attempt ${this.attempt} of task \`${this.taskId}\` has no callback_url: declare its agent type \`${this.agentType}\` with \`delegates = true\` in agentlog's config to submit sub-tasks`,
      );
    }
    const url = new URL(this.callbackUrl);
    url.pathname = url.pathname.replace(/\/+$/, "") + tail;
    return url;
  }

  /** One request to the callback: its status and JSON body; an error answer throws its typed
   * error. Aborted when agentlog hangs up. */
  async #callbackRequest(method: string, url: URL, body: string | undefined, timeoutMs: number): Promise<[number, unknown]> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    // Aborted by a hang-up or past `timeoutMs` (AbortSignal.any would need Node 20.3).
    const abort = new AbortController();
    const hangUp = () => abort.abort(this.signal.reason);
    if (this.signal.aborted) hangUp();
    this.signal.addEventListener("abort", hangUp, { once: true });
    const timer = setTimeout(() => abort.abort(new DOMException(`the callback did not answer within ${timeoutMs} ms`, "TimeoutError")), timeoutMs);
    try {
      const init: RequestInit = { method, headers, signal: abort.signal };
      if (body !== undefined) init.body = body;
      const response = await fetch(url, init);
      if (response.status >= 400) throw await errorFromResponse(response);
      const text = await response.text();
      try {
        return [response.status, text ? JSON.parse(text) : null];
      } catch {
        throw new AgentlogError(response.status, "bad_answer", `the callback's answer is not JSON: ${text.slice(0, 200)}`);
      }
    } finally {
      clearTimeout(timer);
      this.signal.removeEventListener("abort", hangUp);
    }
  }
}

function checkChildNumber(n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`a child's number must be a whole number of at least 0, not ${String(n)}`);
}

function childOutcomeOf(n: number, body: unknown): ChildOutcome {
  const raw = (body !== null && typeof body === "object" ? body : {}) as Record<string, unknown>;
  const text = (value: unknown) => (typeof value === "string" ? value : null);
  const status = String(raw.status ?? "");
  return {
    n,
    taskId: String(raw.task_id ?? ""),
    status,
    output: status === "completed" ? (raw.output ?? null) : null,
    contentType: text(raw.content_type),
    errorKind: text(raw.error_kind),
    message: text(raw.message),
    raw,
  };
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** The attempt's body (docs/protocol/attempt.schema.json), once checked. */
interface Attempt {
  protocol?: number;
  task_id: string;
  agent_type: string;
  attempt?: number;
  idempotency_key?: string;
  content_type?: string;
  input: unknown;
  input_encoding?: InputEncoding;
  labels?: Record<string, string> | null;
  /** The task's latest checkpoint; null or absent when none. */
  checkpoint?: unknown;
  checkpoint_attempt?: number | null;
  /** The signal that resumed the task; null or absent when none. */
  signal?: { name: string; id?: string | null; payload?: unknown; timed_out?: boolean } | null;
  /** Where a delegating attempt submits sub-tasks; null or absent unless `delegates = true`. */
  callback_url?: string | null;
}

class BadAttempt extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/**
 * The agent app. Register handlers with {@link AgentApp.agent}, then serve it:
 *
 * ```ts
 * const app = new AgentApp()
 *   .agent("summarize", async (ctx) => {
 *     await ctx.progress({ percent: 0, message: "calling the model" });
 *     for await (const token of model((ctx.input as { text: string }).text)) await ctx.emit(token);
 *     return { summary: "…" };
 *   });
 * app.listen(9000, "127.0.0.1");            // or http.createServer(app.handler)
 * ```
 */
export class AgentApp {
  readonly #handlers = new Map<string, Handler>();

  /** The node `request` listener, for an `http.Server` of your own (or a framework that
   * accepts one). Bound: pass it as is. */
  readonly handler: (req: http.IncomingMessage, res: http.ServerResponse) => void = (req, res) => {
    this.#serve(req, res).catch((error: unknown) => {
      // Only a bug of this module gets here; the answer may be half written: cut it.
      res.destroy(error instanceof Error ? error : new Error(String(error)));
    });
  };

  /** The agent types this app serves, sorted. */
  get agentTypes(): string[] {
    return [...this.#handlers.keys()].sort();
  }

  /** Registers `handler` for `agentType`; returns the app, so calls chain. */
  agent(agentType: string, handler: Handler): this {
    if (!agentType || agentType.includes("/")) throw new RangeError(`agent type ${JSON.stringify(agentType)} must be non-empty and contain no '/'`);
    if (this.#handlers.has(agentType)) throw new RangeError(`agent type ${JSON.stringify(agentType)} already has a handler`);
    this.#handlers.set(agentType, handler);
    return this;
  }

  /** Serves the app on `port` (0: any free one) and `host` (default 127.0.0.1: bind wider
   * only on purpose). Returns the server at once; it emits `listening` when ready. */
  listen(port: number, host = "127.0.0.1"): http.Server {
    const server = http.createServer(this.handler);
    server.listen(port, host);
    return server;
  }

  async #serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let handler: Handler;
    let attempt: Attempt;
    let input: unknown;
    try {
      if (req.method !== "POST") throw new BadAttempt(405, "method_not_allowed", "agentlog attempts are POSTed");
      const body = await readBody(req);
      [handler, attempt] = this.#attempt(req.url ?? "/", body);
      try {
        input = decodeInput(attempt.input, attempt.input_encoding ?? "json");
      } catch (e) {
        throw new BadAttempt(400, "bad_request", (e as Error).message);
      }
    } catch (e) {
      if (!(e instanceof BadAttempt)) throw e;
      jsonAnswer(res, e.status, { error: { code: e.code, message: e.message } }, e.status === 405);
      return;
    }
    await this.#run(handler, attempt, input, res);
  }

  /** The handler and the checked attempt of a request, or `BadAttempt`. */
  #attempt(url: string, body: Buffer): [Handler, Attempt] {
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString("utf8"));
    } catch (e) {
      throw new BadAttempt(400, "bad_request", `the body is not JSON: ${(e as Error).message}`);
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new BadAttempt(400, "bad_request", "the body must be a JSON object");
    const attempt = parsed as Record<string, unknown>;
    const protocol = attempt.protocol ?? PROTOCOL_VERSION;
    if (protocol !== PROTOCOL_VERSION) {
      throw new BadAttempt(400, "unsupported_protocol", `protocol ${JSON.stringify(protocol)} is not supported; this agent speaks protocol ${PROTOCOL_VERSION}`);
    }
    checkAttempt(attempt);
    const checked = attempt as unknown as Attempt;
    let path: string;
    try {
      path = decodeURIComponent(new URL(url, "http://agent").pathname).replace(/^\/+|\/+$/g, "");
    } catch {
      throw new BadAttempt(400, "bad_request", "the path is not valid percent-encoding");
    }
    const agentType = path || checked.agent_type;
    const handler = this.#handlers.get(agentType);
    if (handler === undefined) {
      const known = this.agentTypes.join(", ") || "none";
      throw new BadAttempt(404, "unknown_agent_type", `no handler for agent type ${JSON.stringify(agentType)}; this app serves: ${known}`);
    }
    return [handler, { ...checked, agent_type: agentType }];
  }

  async #run(handler: Handler, attempt: Attempt, input: unknown, res: http.ServerResponse): Promise<void> {
    const hangUp = new AbortController();
    // 'close' before the answer was ended: agentlog hung up (cancel, or the attempt's timeout).
    res.on("close", () => {
      if (!res.writableFinished) hangUp.abort(new Error("agentlog closed the connection"));
    });
    const send = async (line: Buffer): Promise<void> => {
      if (hangUp.signal.aborted || res.writableEnded) return;
      // Written at once (chunked, no buffering): agentlog reads each frame as it is produced.
      // On backpressure, wait for the socket rather than queue without bound.
      if (!res.write(line)) await drained(res, hangUp.signal);
    };
    res.writeHead(200, { "content-type": NDJSON, "cache-control": "no-store" });
    res.flushHeaders();
    let suspension: Suspension | null = null;
    const ctx = new Context(attempt, input, { signal: hangUp.signal, send, suspended: (s) => (suspension ??= s) });
    let line: Buffer;
    try {
      const value = await handler(ctx);
      try {
        const frame = resultFrame(value);
        const usage = ctx.usageFrame();
        if (usage !== null) frame.usage = usage;
        line = encodeLine(frame);
      } catch (e) {
        // A deterministic bug (NaN, a BigInt, a cycle): another attempt would fail alike.
        const error = e as Error;
        line = encodeLine(errorFrame("invalid_output", `the handler's return value does not encode: ${error.name}: ${error.message}`, false));
      }
    } catch (e) {
      line = encodeLine(errorFrameOf(e));
    }
    // The attempt suspends once `waitForSignal` said so, whatever the handler did after (even
    // when it caught the Suspension): the last frame is the `suspend`.
    const suspended = suspension as Suspension | null;
    if (suspended !== null) line = encodeLine(suspendFrame(suspended.signal, suspended.timeoutMs));
    if (hangUp.signal.aborted || res.writableEnded) return;
    res.end(line);
  }
}

/** A new {@link AgentApp} (for those who prefer a factory to `new`). */
export function createAgentServer(): AgentApp {
  return new AgentApp();
}

/** The fields the handler relies on, with their types (a 400 names the first wrong one). */
function checkAttempt(attempt: Record<string, unknown>): void {
  const wrong = (name: string, what: string) => new BadAttempt(400, "bad_request", `\`${name}\` must be ${what}`);
  for (const name of ["task_id", "agent_type"]) {
    const value = attempt[name];
    if (typeof value !== "string" || value === "") throw wrong(name, "a non-empty string");
  }
  if (!("input" in attempt)) throw wrong("input", "present");
  if ("attempt" in attempt && !(Number.isInteger(attempt.attempt) && (attempt.attempt as number) >= 1)) throw wrong("attempt", "an integer of at least 1");
  for (const name of ["idempotency_key", "content_type"]) {
    if (name in attempt && typeof attempt[name] !== "string") throw wrong(name, "a string");
  }
  const saver = attempt.checkpoint_attempt ?? null;
  if (saver !== null && !Number.isInteger(saver)) throw wrong("checkpoint_attempt", "an integer or null");
  const signal = attempt.signal ?? null;
  if (signal !== null) {
    const s = signal as Record<string, unknown>;
    if (typeof signal !== "object" || Array.isArray(signal) || typeof s.name !== "string" || s.name === "") throw wrong("signal", "null or an object with a non-empty `name`");
    if ((s.id ?? null) !== null && typeof s.id !== "string") throw wrong("signal.id", "a string or null");
    if ("timed_out" in s && typeof s.timed_out !== "boolean") throw wrong("signal.timed_out", "a boolean");
  }
  const callback = attempt.callback_url ?? null;
  if (callback !== null && !(typeof callback === "string" && URL.canParse(callback))) throw wrong("callback_url", "a URL or null");
  const encoding = attempt.input_encoding ?? "json";
  if (encoding !== "json" && encoding !== "utf8" && encoding !== "base64") throw wrong("input_encoding", "json, utf8 or base64");
  const labels = attempt.labels ?? {};
  if (typeof labels !== "object" || Array.isArray(labels) || !Object.values(labels as object).every((v) => typeof v === "string")) {
    throw wrong("labels", "an object of strings");
  }
}

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  try {
    for await (const part of req as AsyncIterable<Buffer>) {
      size += part.length;
      if (size > MAX_REQUEST_BYTES) throw new BadAttempt(413, "payload_too_large", `the body is over ${MAX_REQUEST_BYTES} bytes`);
      parts.push(part);
    }
  } catch (e) {
    if (e instanceof BadAttempt) throw e;
    throw new BadAttempt(400, "bad_request", "the client left before sending the body");
  }
  return Buffer.concat(parts);
}

function drained(res: http.ServerResponse, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    res.on("drain", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

function jsonAnswer(res: http.ServerResponse, status: number, body: unknown, allow = false): void {
  const data = Buffer.from(JSON.stringify(body));
  const headers: http.OutgoingHttpHeaders = { "content-type": "application/json", "content-length": data.length };
  if (allow) headers.allow = "POST";
  res.writeHead(status, headers);
  res.end(data);
}
