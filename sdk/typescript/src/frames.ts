/**
 * The wire format of agent protocol v1 (docs/agent-protocol.md): the attempt's input
 * encodings and the NDJSON frames an agent answers with.
 *
 * Kept apart from the HTTP server so the encoding rules (which encoding a return value gets,
 * when a line is too long) live in one place and are tested on their own.
 */

import { AgentError, CheckpointTooLarge, ChunkTooLarge, DelegationFailed, DelegationUnavailable } from "./errors.js";

/** The protocol version this SDK speaks (the attempt's `protocol` field). */
export const PROTOCOL_VERSION = 1;
/** Longest `progress` or `chunk` line agentlog accepts, in bytes, newline excluded. */
export const MAX_LINE_BYTES = 64 * 1024;
/** Longest `checkpoint` line agentlog accepts, in bytes, newline excluded. */
export const MAX_CHECKPOINT_LINE_BYTES = 256 * 1024;
export const NDJSON = "application/x-ndjson";
export const TEXT_PLAIN = "text/plain; charset=utf-8";
/** The longest message an error frame carries (a stack-sized message is cut, not refused). */
export const MAX_ERROR_MESSAGE_CHARS = 8 * 1024;
/** The longest wait of a `suspend` frame: 6 days (agentlog's `timers` topic keeps records 7
 * days; a longer wait is a chain of waits with `on_signal_timeout = "resume"`). */
export const MAX_SIGNAL_TIMEOUT_MS = 6 * 24 * 60 * 60 * 1000;
/** What a signal's name must match (the path segment of `POST /v1/tasks/{id}/signals/{name}`). */
export const SIGNAL_NAME = /^[a-z0-9_.-]{1,64}$/;

export type InputEncoding = "json" | "utf8" | "base64";

export type ProgressFrame = { type: "progress"; percent?: number; message?: string };
export type ChunkFrame = { type: "chunk"; text: string } | { type: "chunk"; json: unknown };
export type CheckpointFrame = { type: "checkpoint"; state: unknown };
export type ResultFrame = { type: "result"; output: unknown; output_encoding?: "utf8" | "base64"; content_type?: string; usage?: UsageFrame };
/** The `usage` object of a `result` frame (agent protocol §2). */
export type UsageFrame = {
  input_tokens: number;
  output_tokens: number;
  model?: string;
  cost_micros?: number;
  currency?: string;
  counters?: Record<string, number>;
};

/** One report of what an attempt consumed ({@link Context.usage}); every field optional. */
export interface UsageReport {
  inputTokens?: number;
  outputTokens?: number;
  /** The model, as the provider names it: 1 to 128 characters. One per attempt. */
  model?: string;
  /** Cost in millionths of `currency`'s unit (1500 is 0.0015 USD); given with `currency`. */
  costMicros?: number;
  /** ISO 4217 code (three upper-case letters); given with `costMicros`. One per attempt. */
  currency?: string;
  /** Provider-specific counts (`cached_input_tokens`, …): at most 32, names `[a-z0-9_.-]{1,64}`. */
  counters?: Record<string, number>;
}

export const MAX_MODEL_CHARS = 128;
export const MAX_COUNTERS = 32;
const COUNTER_NAME = /^[a-z0-9_.-]{1,64}$/;
const CURRENCY = /^[A-Z]{3}$/;

function count(field: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`usage.${field} must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}, not ${String(value)}`);
  }
  return value;
}

/**
 * What an attempt consumed, summed over the reports its handler makes. Each report is checked
 * as agentlog checks it, so a bad one throws a `RangeError` naming the field where the handler
 * made it (and changes nothing), not a failed attempt later.
 */
export class Usage {
  inputTokens = 0;
  outputTokens = 0;
  model: string | null = null;
  costMicros: number | null = null;
  currency: string | null = null;
  counters: Record<string, number> = {};

  add(report: UsageReport): void {
    const input = count("input_tokens", report.inputTokens ?? 0);
    const output = count("output_tokens", report.outputTokens ?? 0);
    const { model, currency } = report;
    if (model !== undefined) {
      const chars = typeof model === "string" ? [...model] : [];
      if (chars.length < 1 || chars.length > MAX_MODEL_CHARS || /\p{Cc}/u.test(model)) {
        throw new RangeError(`usage.model must be 1 to ${MAX_MODEL_CHARS} characters without control characters`);
      }
      if (this.model !== null && this.model !== model) {
        throw new RangeError(`usage.model: an attempt reports one model, \`${this.model}\` already`);
      }
    }
    if ((report.costMicros === undefined) !== (currency === undefined)) {
      throw new RangeError("usage.costMicros and usage.currency come together (an ISO 4217 code such as USD)");
    }
    let cost: number | null = null;
    if (report.costMicros !== undefined) {
      cost = count("cost_micros", report.costMicros);
      if (typeof currency !== "string" || !CURRENCY.test(currency)) {
        throw new RangeError(`usage.currency must be an ISO 4217 code of three upper-case letters, not ${String(currency)}`);
      }
      if (this.currency !== null && this.currency !== currency) {
        throw new RangeError(`usage.currency: an attempt reports one currency, ${this.currency} already`);
      }
    }
    const merged = { ...this.counters };
    for (const [name, value] of Object.entries(report.counters ?? {})) {
      if (!COUNTER_NAME.test(name)) throw new RangeError(`usage.counters: a counter's name is 1 to 64 of a-z, 0-9, _, ., -, not ${JSON.stringify(name)}`);
      merged[name] = (merged[name] ?? 0) + count(`counters.${name}`, value);
    }
    if (Object.keys(merged).length > MAX_COUNTERS) throw new RangeError(`usage.counters: at most ${MAX_COUNTERS} counters`);
    this.inputTokens += input;
    this.outputTokens += output;
    if (model !== undefined) this.model = model;
    if (cost !== null && currency !== undefined) {
      this.costMicros = (this.costMicros ?? 0) + cost;
      this.currency = currency;
    }
    this.counters = merged;
  }

  /** The `usage` object of the `result` frame. */
  frame(): UsageFrame {
    const out: UsageFrame = { input_tokens: this.inputTokens, output_tokens: this.outputTokens };
    if (this.model !== null) out.model = this.model;
    if (this.costMicros !== null && this.currency !== null) {
      out.cost_micros = this.costMicros;
      out.currency = this.currency;
    }
    if (Object.keys(this.counters).length > 0) out.counters = { ...this.counters };
    return out;
  }
}
export type ErrorFrame = { type: "error"; kind: string; message: string; retryable: boolean; retry_after_ms?: number };
export type SuspendFrame = { type: "suspend"; signal: string; timeout_ms: number };
export type Frame = ProgressFrame | ChunkFrame | CheckpointFrame | ResultFrame | ErrorFrame | SuspendFrame;

/**
 * A handler's return value with an explicit content type: `result(bytes, {contentType:
 * "image/png"})` answers bytes as `image/png` instead of `application/octet-stream`;
 * `result("<p>hi</p>", {contentType: "text/html"})` text as HTML instead of `text/plain`.
 */
export class Result {
  constructor(readonly output: unknown, readonly contentType: string | null = null) {
    if (contentType !== null && contentType === "") throw new RangeError("contentType must not be empty");
  }
}

/** Wraps a handler's return value with its content type (see {@link Result}). */
export function result(output: unknown, options: { contentType?: string } = {}): Result {
  return new Result(output, options.contentType ?? null);
}

/** JSON as agentlog reads it: compact, and no NaN/Infinity (JSON.stringify would silently
 * write `null` for them, turning a bug into wrong output). */
export function stringify(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === "number" && !Number.isFinite(v)) throw new TypeError(`${v} is not a JSON number`);
    return v;
  });
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The task's input as the handler sees it: `json` → the value itself, `utf8` → the
 * string, `base64` → the decoded bytes (a Buffer). Throws a TypeError on anything else. */
export function decodeInput(value: unknown, encoding: string): unknown {
  if (encoding === "json") return value;
  if (encoding !== "utf8" && encoding !== "base64") throw new TypeError(`input_encoding ${JSON.stringify(encoding)} is not json, utf8 or base64`);
  if (typeof value !== "string") throw new TypeError(`input must be a string when input_encoding is ${encoding}`);
  if (encoding === "utf8") return value;
  // Buffer.from(…, "base64") accepts anything, skipping junk: check the standard alphabet first.
  if (!BASE64.test(value)) throw new TypeError("input is not standard base64 with padding");
  return Buffer.from(value, "base64");
}

/** One NDJSON line; with `limit`, throws when the line (newline excluded, as agentlog counts
 * it, in UTF-8 bytes) is longer: {@link CheckpointTooLarge} for a `checkpoint` frame,
 * {@link ChunkTooLarge} for any other. A value JSON cannot hold (NaN, Infinity, a BigInt, a
 * cycle) throws a TypeError. */
export function encodeLine(frame: Frame, limit?: number): Buffer {
  const line = Buffer.from(stringify(frame), "utf8");
  if (limit !== undefined && line.length > limit) {
    throw frame.type === "checkpoint" ? new CheckpointTooLarge(line.length, limit) : new ChunkTooLarge(line.length, limit);
  }
  return Buffer.concat([line, Buffer.from("\n")]);
}

export function progressFrame(percent?: number | null, message?: string | null): ProgressFrame {
  if (percent !== undefined && percent !== null) {
    if (typeof percent !== "number" || !(percent >= 0 && percent <= 100)) {
      throw new RangeError(`percent must be a number from 0 to 100, not ${String(percent)}`);
    }
  }
  if (message !== undefined && message !== null && typeof message !== "string") throw new TypeError("message must be a string");
  const frame: ProgressFrame = { type: "progress" };
  if (percent !== undefined && percent !== null) frame.percent = percent;
  if (message !== undefined && message !== null) frame.message = message;
  return frame;
}

/** A string is a text chunk; anything else a JSON chunk. */
export function chunkFrame(value: unknown): ChunkFrame {
  if (typeof value === "string") return { type: "chunk", text: value };
  if (value instanceof Uint8Array || value instanceof ArrayBuffer) throw new TypeError("a chunk is text or JSON; decode bytes first");
  if (value === null || value === undefined) throw new TypeError("a JSON chunk cannot be null: the protocol reads it as no chunk at all");
  return { type: "chunk", json: value };
}

/** A checkpoint of `state`: any JSON value. `undefined`, a function or a symbol would vanish
 * from the line (JSON.stringify drops them), leaving a frame without `state`: a TypeError. */
export function checkpointFrame(state: unknown): CheckpointFrame {
  if (state === undefined || typeof state === "function" || typeof state === "symbol") {
    throw new TypeError(`a checkpoint's state must be a JSON value, not ${state === undefined ? "undefined" : typeof state}`);
  }
  return { type: "checkpoint", state };
}

/**
 * The `result` frame of a handler's return value: bytes → base64 (octet-stream unless a
 * {@link Result} says otherwise), string → utf8 (`text/plain; charset=utf-8` unless a
 * `Result` says otherwise), anything else → JSON (`undefined`, a handler that returns
 * nothing, is JSON `null`).
 */
export function resultFrame(value: unknown): ResultFrame {
  let contentType: string | null = null;
  if (value instanceof Result) {
    contentType = value.contentType;
    value = value.output;
  }
  if (value instanceof Uint8Array || value instanceof ArrayBuffer) {
    const bytes = value instanceof ArrayBuffer ? Buffer.from(value) : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    const frame: ResultFrame = { type: "result", output: bytes.toString("base64"), output_encoding: "base64" };
    if (contentType) frame.content_type = contentType;
    return frame;
  }
  if (typeof value === "string") {
    return { type: "result", output: value, output_encoding: "utf8", content_type: contentType ?? TEXT_PLAIN };
  }
  const frame: ResultFrame = { type: "result", output: value === undefined ? null : value };
  if (contentType) frame.content_type = contentType;
  return frame;
}

export function errorFrame(kind: string, message: string, retryable = false, retryAfterMs: number | null = null): ErrorFrame {
  if (message.length > MAX_ERROR_MESSAGE_CHARS) message = message.slice(0, MAX_ERROR_MESSAGE_CHARS - 1) + "…";
  const frame: ErrorFrame = { type: "error", kind, message, retryable };
  if (retryAfterMs !== null) frame.retry_after_ms = Math.trunc(retryAfterMs);
  return frame;
}

/**
 * A `suspend` frame: the attempt ends and the task waits up to `timeoutMs` for the signal
 * `signal`. Checked as agentlog checks it (a frame breaking the rules would fail the attempt
 * with kind `protocol`): a TypeError when `signal` is not a string or `timeoutMs` not a
 * number, a RangeError when the name does not match `[a-z0-9_.-]{1,64}` or the wait is not
 * a whole number of milliseconds from 1 to {@link MAX_SIGNAL_TIMEOUT_MS} (6 days).
 */
export function suspendFrame(signal: string, timeoutMs: number): SuspendFrame {
  if (typeof signal !== "string") throw new TypeError(`a signal's name must be a string, not ${typeof signal}`);
  if (!SIGNAL_NAME.test(signal)) throw new RangeError(`signal name ${JSON.stringify(signal)} must match [a-z0-9_.-]{1,64}`);
  if (typeof timeoutMs !== "number") throw new TypeError(`timeoutMs must be a number of milliseconds, not ${typeof timeoutMs}`);
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > MAX_SIGNAL_TIMEOUT_MS) {
    throw new RangeError(`timeoutMs must be a whole number of milliseconds from 1 to ${MAX_SIGNAL_TIMEOUT_MS} (6 days), not ${String(timeoutMs)}`);
  }
  return { type: "suspend", signal, timeout_ms: timeoutMs };
}

/**
 * The frame of what a handler threw: an {@link AgentError} as its own frame; an uncaught
 * {@link ChunkTooLarge} as kind `chunk_too_large` and an uncaught {@link CheckpointTooLarge}
 * as kind `checkpoint_too_large`, not retryable (what agentlog itself would say); an uncaught
 * {@link DelegationFailed} as kind `delegation_failed`, not retryable (a retry would find the
 * same child with the same outcome: `n` names the same child in every attempt); an uncaught
 * {@link DelegationUnavailable} as kind `delegation_unavailable`, not retryable (the agent
 * type's config, not the moment, is at fault); anything
 * else as kind `exception`, retryable, message `Name: text` (a bug or a passing failure: the
 * agent type's retry policy decides whether kind `exception` is retried).
 */
export function errorFrameOf(error: unknown): ErrorFrame {
  if (error instanceof AgentError) return errorFrame(error.kind, error.message, error.retryable, error.retryAfterMs);
  if (error instanceof ChunkTooLarge) return errorFrame("chunk_too_large", error.message, false);
  if (error instanceof CheckpointTooLarge) return errorFrame("checkpoint_too_large", error.message, false);
  if (error instanceof DelegationFailed) return errorFrame("delegation_failed", error.message, false);
  if (error instanceof DelegationUnavailable) return errorFrame("delegation_unavailable", error.message, false);
  if (error instanceof Error) return errorFrame("exception", error.message ? `${error.name}: ${error.message}` : error.name, true);
  return errorFrame("exception", `thrown: ${String(error)}`, true);
}
