/**
 * Errors of the SDK.
 *
 * Two families, kept apart because they travel in opposite directions:
 *
 * - {@link AgentlogError} and its subclasses are what the *client* throws when the agentlog
 *   API answers an error. The API's errors are JSON, `{"error": {"code", "message", "field"}}`;
 *   the subclass is chosen by HTTP status so callers can test `instanceof NotFound` without
 *   looking at numbers, and `code` stays available for finer decisions (`no_task` vs
 *   `no_outcome`).
 * - {@link AgentError}, {@link ChunkTooLarge} and {@link CheckpointTooLarge} are thrown *by
 *   or to agent code* inside an agent handler: `AgentError` becomes an `error` frame of the
 *   agent protocol, `ChunkTooLarge` tells the handler that a chunk it tried to emit would
 *   break the 64 KiB line limit, `CheckpointTooLarge` that a checkpoint would break the
 *   256 KiB one.
 */

/** Options of {@link AgentlogError} beyond status, code and message. */
export interface AgentlogErrorOptions {
  /** The request field at fault, when the API names one. */
  field?: string | null;
  /** The parsed error body, when it was JSON. */
  body?: unknown;
}

/**
 * An error answer of the agentlog API (or a broken exchange with it).
 *
 * `status` is the HTTP status (0 when no answer arrived), `code` the API's machine code
 * (`invalid_field`, `no_task`, ...), `message` its words and `field` the request field at
 * fault, when the API names one.
 */
export class AgentlogError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | null;
  readonly body: unknown;

  constructor(status: number, code: string, message: string, options: AgentlogErrorOptions = {}) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.field = options.field ?? null;
    this.body = options.body;
  }

  override toString(): string {
    return `${this.name}: ${this.status ? `${this.status} ` : ""}${this.code}: ${this.message}`;
  }
}

/** 400: a field of the request is wrong (`field` names it). */
export class BadRequest extends AgentlogError {}
/** 401: no API key, or an unknown one. */
export class Unauthorized extends AgentlogError {}
/** 403: the key's tenant may not do this. */
export class Forbidden extends AgentlogError {}
/** 404: no such task for this tenant, or no outcome yet (`code` says which). */
export class NotFound extends AgentlogError {}
/** 409: e.g. cancelling a task that already ended (`task_finished`). */
export class Conflict extends AgentlogError {}
/** 413: the input is too large for the log. */
export class PayloadTooLarge extends AgentlogError {}

/** 429: rate, quota or open-stream limit; wait `retryAfter` seconds (when given). */
export class TooManyRequests extends AgentlogError {
  readonly retryAfter: number | null;

  constructor(status: number, code: string, message: string, options: AgentlogErrorOptions & { retryAfter?: number | null } = {}) {
    super(status, code, message, options);
    this.retryAfter = options.retryAfter ?? null;
  }
}

/** 5xx other than 503. */
export class ServerError extends AgentlogError {}
/** 503: the log is unavailable, the projection is behind, or too many keys are claimed:
 * passing conditions, to retry. */
export class Unavailable extends ServerError {}
/** {@link AgentlogClient.wait} ran out of time before the task reached its outcome. */
export class WaitTimeout extends AgentlogError {}
/** A task stream could not be resumed (the server kept dropping it, or spoke no SSE). */
export class StreamError extends AgentlogError {}

const BY_STATUS: Record<number, typeof AgentlogError> = {
  400: BadRequest,
  401: Unauthorized,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  413: PayloadTooLarge,
  503: Unavailable,
};

/** `Retry-After` in seconds; agentlog sends whole seconds (HTTP dates are not parsed). */
function retryAfterOf(value: string | null): number | null {
  if (value === null || value.trim() === "") return null;
  const seconds = Number(value.trim());
  return Number.isFinite(seconds) ? Math.max(0, seconds) : null;
}

/** The typed error of an API answer with status >= 400 (reads its body). */
export async function errorFromResponse(response: Response): Promise<AgentlogError> {
  const status = response.status;
  let code = `http_${status}`;
  let message = response.statusText || "";
  let field: string | null = null;
  let body: unknown = undefined;
  const text = await response.text().catch(() => "");
  try {
    body = JSON.parse(text);
    const error = body !== null && typeof body === "object" ? (body as { error?: unknown }).error : undefined;
    if (error !== null && typeof error === "object") {
      const e = error as { code?: unknown; message?: unknown; field?: unknown };
      if (e.code) code = String(e.code);
      if (e.message) message = String(e.message);
      if (typeof e.field === "string") field = e.field;
    }
  } catch {
    body = undefined;
    if (text.trim()) message = text.trim().slice(0, 1000);
  }
  if (status === 429) {
    return new TooManyRequests(status, code, message, { field, body, retryAfter: retryAfterOf(response.headers.get("retry-after")) });
  }
  const Class = BY_STATUS[status] ?? (status >= 500 ? ServerError : AgentlogError);
  return new Class(status, code, message, { field, body });
}

const KIND = /^[a-z0-9_.-]{1,64}$/;

/** The fields of an {@link AgentError}. */
export interface AgentErrorInit {
  /** What the agent type's retry policy matches (`retry.retry_on`; by default `timeout` and
   * `transient` are retried). `[a-z0-9_.-]{1,64}`. */
  kind: string;
  message: string;
  /** The agent's own judgement, reported with the failure. Default false. */
  retryable?: boolean;
  /** The least time agentlog waits before the next attempt (e.g. a model's rate limit). */
  retryAfterMs?: number | null;
}

/**
 * Throw in an agent handler to fail the attempt with a typed error: it becomes the answer's
 * `error` frame, and agentlog's retry policy decides what happens next.
 */
export class AgentError extends Error {
  readonly kind: string;
  readonly retryable: boolean;
  readonly retryAfterMs: number | null;

  constructor(init: AgentErrorInit) {
    if (!KIND.test(init.kind)) throw new RangeError(`error kind ${JSON.stringify(init.kind)} must match [a-z0-9_.-]{1,64}`);
    const after = init.retryAfterMs ?? null;
    if (after !== null && !(Number.isInteger(after) && after >= 0)) {
      throw new RangeError("retryAfterMs must be a non-negative integer");
    }
    super(init.message);
    this.name = "AgentError";
    this.kind = init.kind;
    this.retryable = init.retryable ?? false;
    this.retryAfterMs = after;
  }
}

/**
 * A progress or chunk frame would be longer than the protocol's 64 KiB line limit.
 *
 * Thrown by `ctx.emit` / `ctx.progress` *before* anything is sent, so the handler may split
 * the chunk and go on; agentlog would otherwise fail the attempt with kind `chunk_too_large`.
 */
export class ChunkTooLarge extends Error {
  readonly size: number;
  readonly limit: number;

  constructor(size: number, limit: number) {
    super(`the frame is ${size} bytes; the limit of one line is ${limit}`);
    this.name = "ChunkTooLarge";
    this.size = size;
    this.limit = limit;
  }
}

/**
 * A checkpoint frame would be longer than the protocol's 256 KiB limit of a `checkpoint`
 * line.
 *
 * Thrown by `ctx.checkpoint` *before* anything is sent, so the handler may keep less state
 * (e.g. a reference to data stored elsewhere) and go on; agentlog would otherwise fail the
 * attempt with kind `checkpoint_too_large`. Left uncaught, the attempt fails with that kind,
 * not retryable.
 */
export class CheckpointTooLarge extends Error {
  readonly size: number;
  readonly limit: number;

  constructor(size: number, limit: number) {
    super(`the checkpoint frame is ${size} bytes; the limit of a checkpoint line is ${limit}`);
    this.name = "CheckpointTooLarge";
    this.size = size;
    this.limit = limit;
  }
}
