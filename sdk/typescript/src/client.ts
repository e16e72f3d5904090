/**
 * A client of the agentlog HTTP API (`/v1`), on Node's built-in `fetch`.
 *
 * Answers are the API's JSON (snake_case, as on the wire) except where a small type helps:
 * {@link Submitted}, {@link TaskPage}, {@link Signalled}, and the typed stream events. Error
 * answers throw the {@link AgentlogError} subclass of their status (409s of signals more
 * precisely: {@link NotWaiting}, {@link UnexpectedSignal}); network failures are fetch's own
 * errors (a `TypeError`, or a `TimeoutError` DOMException), except inside `stream`, which
 * resumes after them.
 */

import { NotFound, WaitTimeout, errorFromResponse, type ErrorContext, type NotWaiting, type UnexpectedSignal } from "./errors.js";
import { streamEvents, type OutcomeJson, type StreamEvent, type StreamOptions, type TaskJson } from "./stream.js";

export const VERSION = "0.1.0";

export interface ClientOptions {
  /** The API's base URL, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <key>` (not needed against a dev server without keys). */
  apiKey?: string | null;
  /** Bounds each request (default 10 s), except the waits that ask the server to hold them
   * (`wait`, `submit` with `waitMs`) and streams, which get their own. */
  timeoutMs?: number;
  /** A `fetch` of your own (tests, proxies); the global one by default. */
  fetch?: typeof fetch;
}

/** The optional fields of a task to submit. Those left undefined are not sent, so the API's
 * defaults apply. */
export interface TaskOptions {
  taskId?: string;
  lane?: string;
  orderingKey?: string;
  idempotencyKey?: string;
  delayMs?: number;
  deadlineMs?: number;
  maxAttempts?: number;
  labels?: Record<string, string>;
}

/** One task of {@link AgentlogClient.submitBatch}. */
export interface TaskSpec extends TaskOptions {
  agentType: string;
  input: unknown;
}

/** A submit's answer. `duplicate`: the idempotency key named an earlier task and nothing
 * was written. `position` (`topic:partition:offset`) is where the task was written, for
 * `get(taskId, {after: position})` (read your writes). With `waitMs`, `task` and `outcome`
 * when it finished in time. */
export interface Submitted {
  taskId: string;
  duplicate: boolean;
  position: string | null;
  delayed: boolean | null;
  task: TaskJson | null;
  outcome: OutcomeJson | null;
  raw: Record<string, unknown>;
}

/** The answer to {@link AgentlogClient.signal}. `duplicate`: the task had already received a
 * signal with this `signalId` (whatever its state now), so nothing was written: retrying a
 * signal is safe. Otherwise the signal is on the log and resumes the task unless something
 * else (its timeout, another signal) resumed it first. */
export interface Signalled {
  taskId: string;
  /** The signal's name. */
  signal: string;
  /** The signal's id: the one given, or the one the API answered (`null` when it gave none). */
  signalId: string | null;
  duplicate: boolean;
  /** The API's answer as it came. */
  raw: Record<string, unknown>;
}

/** Options of {@link AgentlogClient.signal}. */
export interface SignalOptions {
  /** Names this signal: a second signal with the same id is a duplicate, not written again.
   * Without it each call is a new signal. */
  signalId?: string;
}

/** One page of {@link AgentlogClient.list}, newest first; pass `nextCursor` for the next. */
export interface TaskPage {
  tasks: TaskJson[];
  nextCursor: string | null;
}

export interface ListQuery {
  status?: string;
  agentType?: string;
  createdAfterMs?: number;
  limit?: number;
  cursor?: string;
}

/** Usage of one agent type's tasks on one model, in {@link StatsJson}. */
export interface ModelUsageJson {
  agent_type: string;
  model: string | null;
  tasks: number;
  input_tokens: number;
  output_tokens: number;
  cost_micros: Record<string, number>;
  counters: Record<string, number>;
}

/** `GET /v1/stats` (snake_case JSON, as on the wire). */
export interface StatsJson {
  agent_types: Record<string, Record<string, unknown>>;
  tenant: Record<string, unknown>;
  usage: {
    tasks: number;
    input_tokens: number;
    output_tokens: number;
    cost_micros: Record<string, number>;
    by_model: ModelUsageJson[];
  };
  [field: string]: unknown;
}

/** The JSON of one task to submit (`POST /v1/tasks`, or an item of a batch). */
export function taskSpec(agentType: string, input: unknown, options: TaskOptions = {}): Record<string, unknown> {
  const body: Record<string, unknown> = { agent_type: agentType, input };
  const optional: Record<string, unknown> = {
    task_id: options.taskId,
    lane: options.lane,
    ordering_key: options.orderingKey,
    idempotency_key: options.idempotencyKey,
    delay_ms: options.delayMs,
    deadline_ms: options.deadlineMs,
    max_attempts: options.maxAttempts,
    labels: options.labels,
  };
  for (const [key, value] of Object.entries(optional)) if (value !== undefined && value !== null) body[key] = value;
  return body;
}

function submittedOf(body: Record<string, unknown>): Submitted {
  return {
    taskId: String(body.task_id),
    duplicate: Boolean(body.duplicate ?? false),
    position: (body.position as string | undefined) ?? null,
    delayed: (body.delayed as boolean | undefined) ?? null,
    task: (body.task as TaskJson | undefined) ?? null,
    outcome: (body.outcome as OutcomeJson | undefined) ?? null,
    raw: body,
  };
}

/** Task ids are the caller's (1 to 200 characters): '/', '?' or '#' must not bend the path. */
function taskPath(taskId: string, tail = ""): string {
  return `/v1/tasks/${encodeURIComponent(taskId)}${tail}`;
}

type Query = Record<string, string | number | undefined | null>;

/**
 * A client of the agentlog API.
 *
 * ```ts
 * const client = new AgentlogClient({ baseUrl: "http://127.0.0.1:8080" });
 * const { taskId } = await client.submit("summarize", { text: "…" });
 * for await (const event of client.stream(taskId)) {
 *   if (event.type === "chunk") process.stdout.write(event.text ?? JSON.stringify(event.json));
 *   else if (event.type === "outcome") console.log(event.status, event.output);
 * }
 * ```
 */
export class AgentlogClient {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly #headers: Record<string, string>;
  readonly #fetch: typeof fetch;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.#fetch = options.fetch ?? globalThis.fetch;
    this.#headers = { accept: "application/json", "user-agent": `agentlog-sdk-typescript/${VERSION}` };
    if (options.apiKey) this.#headers.authorization = `Bearer ${options.apiKey}`;
  }

  /** Submits one task (`POST /v1/tasks`). `waitMs` waits (at most the server's
   * `api.max_wait_ms`) for the outcome. */
  async submit(agentType: string, input: unknown, options: TaskOptions & { waitMs?: number } = {}): Promise<Submitted> {
    const { waitMs, ...task } = options;
    const timeout = waitMs ? waitMs + this.timeoutMs : this.timeoutMs;
    const body = await this.#json("POST", "/v1/tasks", { wait_ms: waitMs }, taskSpec(agentType, input, task), timeout);
    return submittedOf(body as Record<string, unknown>);
  }

  /** Submits tasks together (`POST /v1/tasks/batch`): all are checked before any is written. */
  async submitBatch(tasks: TaskSpec[]): Promise<Submitted[]> {
    const items = tasks.map(({ agentType, input, ...options }) => taskSpec(agentType, input, options));
    const body = (await this.#json("POST", "/v1/tasks/batch", {}, { tasks: items })) as { tasks: Record<string, unknown>[] };
    return body.tasks.map(submittedOf);
  }

  /** The task (`GET /v1/tasks/{id}`). With `after` (a submit's `position`), once the API has
   * read that far, so a task just submitted is found. */
  async get(taskId: string, options: { after?: string; waitMs?: number } = {}): Promise<TaskJson> {
    const timeout = options.waitMs ? options.waitMs + this.timeoutMs : this.timeoutMs;
    return (await this.#json("GET", taskPath(taskId), { after: options.after, wait_ms: options.waitMs }, undefined, timeout)) as TaskJson;
  }

  /**
   * Your tenant's stats (`GET /v1/stats`): per agent type outcomes and latencies, and `usage`:
   * the tokens and cost your completed tasks reported (`tasks`, `input_tokens`,
   * `output_tokens`, `cost_micros` per currency, and `by_model` per agent type and model).
   */
  async stats(): Promise<StatsJson> {
    return (await this.#json("GET", "/v1/stats")) as StatsJson;
  }

  /** The task's outcome now, or null when it has none (yet). */
  async outcome(taskId: string): Promise<OutcomeJson | null> {
    try {
      return (await this.#json("GET", taskPath(taskId, "/outcome"))) as OutcomeJson;
    } catch (e) {
      if (e instanceof NotFound) return null;
      throw e;
    }
  }

  /**
   * Waits up to `timeoutMs` (default 60 s) for the task's outcome and returns it (`{task_id,
   * status, output, error_kind, message, …}`). Uses the API's waiting `GET
   * /v1/tasks/{id}/outcome?wait_ms=`, asked again while the server's longest wait is shorter
   * than what is left. Throws {@link WaitTimeout} when it did not come in time.
   */
  async wait(taskId: string, options: { timeoutMs?: number } = {}): Promise<OutcomeJson> {
    const timeoutMs = options.timeoutMs ?? 60_000;
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new WaitTimeout(0, "wait_timeout", `task \`${taskId}\` has no outcome after ${timeoutMs} ms`);
      try {
        // The server holds the request up to `remaining`: the request's own bound outlasts it.
        return (await this.#json("GET", taskPath(taskId, "/outcome"), { wait_ms: Math.max(1, Math.floor(remaining)) }, undefined, remaining + this.timeoutMs)) as OutcomeJson;
      } catch (e) {
        if (!(e instanceof NotFound) || e.code !== "no_outcome") throw e;
      }
    }
  }

  /** One page of tasks, newest first (`GET /v1/tasks`). */
  async list(query: ListQuery = {}): Promise<TaskPage> {
    const params = { status: query.status, agent_type: query.agentType, created_after_ms: query.createdAfterMs, limit: query.limit, cursor: query.cursor };
    const body = (await this.#json("GET", "/v1/tasks", params)) as { tasks: TaskJson[]; next_cursor?: string | null };
    return { tasks: body.tasks, nextCursor: body.next_cursor ?? null };
  }

  /** Asks for the task to be cancelled (`POST /v1/tasks/{id}/cancel`); {@link Conflict}
   * when it already ended. */
  async cancel(taskId: string, reason?: string): Promise<{ task_id: string; cancel_requested: boolean }> {
    const body = reason === undefined ? {} : { reason };
    return (await this.#json("POST", taskPath(taskId, "/cancel"), {}, body)) as { task_id: string; cancel_requested: boolean };
  }

  /**
   * Sends the signal `name` to a task waiting for it (`POST /v1/tasks/{id}/signals/{name}`,
   * body `{"signal_id", "payload"}`; `signal_id` only when `signalId` is given, `payload` only
   * when not `undefined`). The task resumes as a new attempt whose handler finds the signal
   * in `ctx.resumeSignal` (and `ctx.waitForSignal(name, …)` returns it).
   *
   * Returns {@link Signalled}: accepted (202), or `duplicate` (200) when the task already
   * received a signal with this `signalId`. Throws {@link NotWaiting} (409, with the task's
   * `taskStatus`) when the task is not waiting, {@link UnexpectedSignal} (409, with the
   * `waitingFor`) when it waits for another signal, `NotFound` (404) for a task the
   * tenant does not have, `BadRequest` (400) for a name outside `[a-z0-9_.-]{1,64}`, and
   * `PayloadTooLarge` (413) for a payload over 256 KiB.
   */
  async signal(taskId: string, name: string, payload?: unknown, options: SignalOptions = {}): Promise<Signalled> {
    const body: Record<string, unknown> = {};
    if (options.signalId !== undefined && options.signalId !== null) body.signal_id = options.signalId;
    if (payload !== undefined) body.payload = payload;
    const path = taskPath(taskId, `/signals/${encodeURIComponent(name)}`);
    const [, answer] = await this.#request("POST", path, {}, body, this.timeoutMs, { taskId, signal: name });
    const raw = (answer ?? {}) as Record<string, unknown>;
    const signalId = raw.signal_id ?? options.signalId ?? null;
    return {
      taskId: String(raw.task_id ?? taskId),
      signal: String(raw.signal ?? name),
      signalId: signalId === null ? null : String(signalId),
      duplicate: raw.status === "duplicate",
      raw,
    };
  }

  /**
   * The task's progress and chunk events as they happen, then its outcome, after which the
   * iteration ends. A dropped connection is resumed after the last event received
   * (`Last-Event-ID`): nothing missed, nothing repeated. Pass a former event's `id` as
   * `lastEventId` to continue a stream read earlier.
   */
  stream(taskId: string, options: StreamOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    const headers = { ...this.#headers, accept: "text/event-stream" };
    return streamEvents(this.#fetch, this.baseUrl + taskPath(taskId, "/stream"), headers, options);
  }

  async #json(method: string, path: string, query: Query = {}, body?: unknown, timeoutMs = this.timeoutMs): Promise<unknown> {
    return (await this.#request(method, path, query, body, timeoutMs))[1];
  }

  /** The answer's status and JSON; an error answer throws its typed error, read with `context`. */
  async #request(method: string, path: string, query: Query = {}, body?: unknown, timeoutMs = this.timeoutMs, context: ErrorContext = {}): Promise<[number, unknown]> {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(query)) if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    const headers: Record<string, string> = { ...this.#headers };
    if (body !== undefined) headers["content-type"] = "application/json";
    const init: RequestInit = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await this.#fetch(url, init);
    if (response.status >= 400) throw await errorFromResponse(response, context);
    return [response.status, await response.json()];
  }
}
