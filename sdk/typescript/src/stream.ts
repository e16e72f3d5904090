/**
 * A task's stream (`GET /v1/tasks/{id}/stream`): typed events, resumed after a drop.
 *
 * The server sends Server-Sent Events: `progress` and `chunk` events whose `id` is a log
 * position (`<partition>:<offset>`), then one `outcome` event, then it ends. A connection may
 * drop at any time (a proxy's idle timeout, an API replica restarting); the iterator here
 * reconnects with `Last-Event-ID` set to the last position received, which the server
 * continues strictly after, so the caller sees every event once, in order. As a second line
 * of defence an event at or before the last position of its partition is skipped, so even a
 * server that replayed too much could not make the caller see a chunk twice.
 *
 * The resume bookkeeping is one small state machine ({@link Resume}), kept apart from the
 * I/O so its rules read in one place.
 */

import { createParser, type EventSourceMessage } from "eventsource-parser";

import { AgentlogError, StreamError, errorFromResponse } from "./errors.js";

/** A `progress` frame of attempt `attempt`: `percent` (0–100) and/or `message`. */
export interface ProgressEvent {
  type: "progress";
  /** The log position `<partition>:<offset>`: pass it as `lastEventId` to resume after it. */
  id: string | null;
  attempt: number;
  percent: number | null;
  message: string | null;
  atMs: number | null;
}

/** A `chunk` of attempt `attempt`: `text` or `json`. `seq` counts from 0 per attempt; when
 * it goes back to 0 a new attempt (or a re-run) started over, and a client assembling text
 * should start over too. */
export interface ChunkEvent {
  type: "chunk";
  id: string | null;
  attempt: number;
  seq: number;
  text?: string;
  json?: unknown;
  atMs: number | null;
}

/** The task once it reached its terminal outcome, as `GET /v1/tasks/{id}` answers it
 * (`task`), with the outcome's fields at hand. The last event of a stream. */
export interface OutcomeEvent {
  type: "outcome";
  id: string | null;
  task: TaskJson;
  taskId: string;
  /** completed, failed, dead_lettered, cancelled or expired. */
  status: string;
  output: unknown;
  errorKind: string | null;
  message: string | null;
  attempt: number | null;
  /** What the completed attempt consumed, as its agent reported it; null when it did not. */
  usage: UsageJson | null;
}

export type StreamEvent = ProgressEvent | ChunkEvent | OutcomeEvent;

/** A task as the API answers it (snake_case JSON, as on the wire). */
export interface TaskJson {
  task_id: string;
  status?: string;
  outcome?: OutcomeJson | null;
  [field: string]: unknown;
}

/** An outcome as the API answers it. */
export interface OutcomeJson {
  task_id?: string;
  status: string;
  output?: unknown;
  error_kind?: string | null;
  message?: string | null;
  attempt?: number | null;
  /** What the completed attempt consumed ({@link UsageJson}); null when it reported nothing. */
  usage?: UsageJson | null;
  [field: string]: unknown;
}

/** Tokens and cost one completed attempt reported (snake_case, as on the wire). */
export interface UsageJson {
  input_tokens: number;
  output_tokens: number;
  model: string | null;
  /** Millionths of `currency`'s unit. */
  cost_micros: number | null;
  currency: string | null;
  counters: Record<string, number>;
}

/** `"<partition>:<offset>"` as numbers, or null when it is not one. */
export function parsePosition(text: string): [number, number] | null {
  const match = /^(\d+):(\d+)$/.exec(text);
  return match ? [Number(match[1]), Number(match[2])] : null;
}

function num(value: unknown): number | null {
  return typeof value === "number" ? value : null;
}

/** The typed event of one SSE message; null for event types this SDK does not know (a
 * newer server may add some: they are skipped, not fatal). */
export function eventOf(message: EventSourceMessage, id: string | null): StreamEvent | null {
  const type = message.event;
  if (type !== "progress" && type !== "chunk" && type !== "outcome") return null;
  let data: unknown;
  try {
    data = JSON.parse(message.data);
  } catch (e) {
    throw new StreamError(0, "bad_event", `the data of a \`${type}\` event is not JSON: ${(e as Error).message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) throw new StreamError(0, "bad_event", `the data of a \`${type}\` event is not an object`);
  const d = data as Record<string, unknown>;
  if (type === "progress") {
    return { type, id, attempt: num(d.attempt) ?? 0, percent: num(d.percent), message: typeof d.message === "string" ? d.message : null, atMs: num(d.at_ms) };
  }
  if (type === "chunk") {
    const chunk: ChunkEvent = { type, id, attempt: num(d.attempt) ?? 0, seq: num(d.seq) ?? 0, atMs: num(d.at_ms) };
    if (typeof d.text === "string") chunk.text = d.text;
    if ("json" in d) chunk.json = d.json;
    return chunk;
  }
  const task = d as TaskJson;
  const outcome: Partial<OutcomeJson> = task.outcome ?? {};
  return {
    type,
    id,
    task,
    taskId: String(task.task_id ?? ""),
    status: String(outcome.status ?? task.status ?? ""),
    output: outcome.output ?? null,
    errorKind: outcome.error_kind ?? null,
    message: outcome.message ?? null,
    attempt: outcome.attempt ?? null,
    usage: outcome.usage ?? null,
  };
}

/** The connection ended without the outcome, or answered a passing error: connect again. */
class Retry extends Error {}

/** Statuses worth another connection: the API replica or the log is passing through trouble. */
const RETRY_STATUSES = new Set([502, 503, 504]);

/**
 * Where a stream is, and whether and when to connect again.
 *
 * `failures` counts connections in a row that brought no event; past `maxReconnects` the
 * stream gives up with `StreamError`. Waits double from `backoffMs` up to 5 s, and start
 * again from `backoffMs` once an event arrives.
 */
export class Resume {
  lastId: string | null;
  lastPosition: [number, number] | null;
  failures = 0;

  constructor(lastEventId: string | null, readonly maxReconnects: number, readonly backoffMs: number) {
    this.lastId = lastEventId || null;
    this.lastPosition = this.lastId ? parsePosition(this.lastId) : null;
  }

  headers(base: Record<string, string>): Record<string, string> {
    return this.lastId ? { ...base, "last-event-id": this.lastId } : { ...base };
  }

  /** Throws the API's error for an error answer (`Retry` for a passing one). */
  async check(response: Response): Promise<void> {
    if (RETRY_STATUSES.has(response.status)) {
      await response.body?.cancel().catch(() => undefined);
      throw new Retry(`HTTP ${response.status}`);
    }
    if (response.status >= 400) throw await errorFromResponse(response);
    const contentType = response.headers.get("content-type") ?? "";
    if (!contentType.startsWith("text/event-stream")) {
      await response.body?.cancel().catch(() => undefined);
      throw new StreamError(response.status, "not_an_event_stream", `the answer is ${contentType || "untyped"}, not text/event-stream`);
    }
  }

  /** The event to hand the caller, or null (unknown type, or already seen). The parser
   * gives each message its own `id` only (no carry-over), as the position of that record. */
  accept(message: EventSourceMessage): StreamEvent | null {
    const id = message.id || null;
    if (id !== null) {
      const position = parsePosition(id);
      const last = this.lastPosition;
      if (id === this.lastId || (position && last && position[0] === last[0] && position[1] <= last[1])) {
        return null; // at or before what was already handed over: a repeat
      }
      this.lastId = id;
      this.lastPosition = position;
    }
    const event = eventOf(message, id);
    if (event !== null) this.failures = 0;
    return event;
  }

  /** How long to wait before connecting again; `StreamError` when out of attempts. */
  delay(why: string): number {
    this.failures += 1;
    if (this.failures > this.maxReconnects) {
      throw new StreamError(0, "stream_lost", `the stream dropped ${this.failures} times in a row without an event; last: ${why}`);
    }
    return Math.min(5000, this.backoffMs * 2 ** (this.failures - 1));
  }
}

/** Options of {@link streamEvents}. */
export interface StreamOptions {
  /** A former event's `id`: continue after it. */
  lastEventId?: string | null;
  /** Connections in a row without an event before giving up (default 10). */
  maxReconnects?: number;
  /** First wait between connections, doubled per failure up to 5 s (default 100 ms). */
  backoffMs?: number;
  /** Silence after which a connection is taken for dead and resumed (default 60 s; the
   * server sends a keep-alive comment every 15 s). */
  readTimeoutMs?: number;
  /** Aborts the stream: the iterator throws the signal's reason. */
  signal?: AbortSignal;
}

/**
 * The events of one task's stream, resumed across drops, ending after the outcome.
 * Breaking out of a `for await` loop closes the connection.
 */
export async function* streamEvents(
  fetchFn: typeof fetch,
  url: string,
  headers: Record<string, string>,
  options: StreamOptions = {},
): AsyncGenerator<StreamEvent, void, undefined> {
  const state = new Resume(options.lastEventId ?? null, options.maxReconnects ?? 10, options.backoffMs ?? 100);
  const readTimeoutMs = options.readTimeoutMs ?? 60_000;
  const outer = options.signal;
  while (true) {
    outer?.throwIfAborted();
    const connection = new AbortController();
    const abort = () => connection.abort(outer?.reason);
    outer?.addEventListener("abort", abort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    let silent = false;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        silent = true;
        connection.abort(new Error(`no data for ${readTimeoutMs} ms`));
      }, readTimeoutMs);
    };
    let why: string;
    try {
      arm();
      const response = await fetchFn(url, { headers: state.headers(headers), signal: connection.signal });
      await state.check(response);
      if (response.body === null) throw new Retry("the answer has no body");
      const pending: EventSourceMessage[] = [];
      const parser = createParser({ onEvent: (message) => pending.push(message) });
      const decoder = new TextDecoder();
      const reader = response.body.getReader();
      try {
        while (true) {
          const { done, value } = await reader.read();
          if (done) break;
          arm();
          parser.feed(decoder.decode(value, { stream: true }));
          while (pending.length > 0) {
            const event = state.accept(pending.shift()!);
            if (event === null) continue;
            outer?.throwIfAborted(); // events parsed before an abort are not handed over after it
            yield event;
            if (event.type === "outcome") return;
          }
        }
      } finally {
        reader.releaseLock();
      }
      why = "the stream ended before the outcome";
    } catch (e) {
      if (outer?.aborted) throw outer.reason;
      if (e instanceof AgentlogError) throw e;
      if (e instanceof Retry) why = e.message;
      else if (silent) why = `no data for ${readTimeoutMs} ms`;
      else why = describe(e);
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", abort);
      // Closes the connection whichever way we leave: outcome, error, or a caller's `break`.
      connection.abort();
    }
    await sleep(state.delay(why), outer);
  }
}

function describe(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const cause = (e as { cause?: unknown }).cause;
  return cause instanceof Error ? `${e.name}: ${e.message} (${cause.message})` : `${e.name}: ${e.message}`;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
