/**
 * An agent server: runs agentlog attempts over `node:http` (agent protocol v1).
 *
 * agentlog's `http` runtime POSTs each attempt as JSON to the agent type's URL; the app
 * decodes it, calls the handler registered for the agent type, and answers a framed
 * (`application/x-ndjson`) stream: whatever `progress`, `chunk` and `checkpoint` frames the
 * handler sends, each written as it is produced, then one `result` or `error` frame.
 *
 * Dispatch: a request to `/<agent_type>` runs that type's handler; a request to `/` runs the
 * handler named by the body's `agent_type`. So one app serves several agent types, each
 * declared in agentlog with `url = "http://host:port/<agent_type>"` (or all at `/`).
 */

import * as http from "node:http";

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
  type InputEncoding,
} from "./frames.js";

/** Largest attempt body read. agentlog's records are at most ~1 MB; the margin is for base64. */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;

/** What a handler may return: bytes, a string, any JSON value, or a `Result`. */
export type Handler = (ctx: Context) => unknown | Promise<unknown>;

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
  readonly #send: (line: Buffer) => Promise<void>;

  /** @internal Built by the app for each attempt. */
  constructor(attempt: Attempt, input: unknown, signal: AbortSignal, send: (line: Buffer) => Promise<void>) {
    this.taskId = attempt.task_id;
    this.agentType = attempt.agent_type;
    this.attempt = attempt.attempt ?? 1;
    this.idempotencyKey = attempt.idempotency_key || attempt.task_id;
    this.input = input;
    this.contentType = attempt.content_type ?? "application/json";
    this.labels = Object.freeze({ ...(attempt.labels ?? {}) });
    this.inputEncoding = attempt.input_encoding ?? "json";
    this.signal = signal;
    this.lastCheckpoint = attempt.checkpoint ?? null;
    this.lastCheckpointAttempt = attempt.checkpoint_attempt ?? null;
    this.#send = send;
  }

  /** True once agentlog hung up (see `signal`). */
  get cancelled(): boolean {
    return this.signal.aborted;
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
    const ctx = new Context(attempt, input, hangUp.signal, send);
    let line: Buffer;
    try {
      const value = await handler(ctx);
      try {
        line = encodeLine(resultFrame(value));
      } catch (e) {
        // A deterministic bug (NaN, a BigInt, a cycle): another attempt would fail alike.
        const error = e as Error;
        line = encodeLine(errorFrame("invalid_output", `the handler's return value does not encode: ${error.name}: ${error.message}`, false));
      }
    } catch (e) {
      line = encodeLine(errorFrameOf(e));
    }
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
