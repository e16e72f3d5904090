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
 * - {@link AgentError}, {@link ChunkTooLarge}, {@link CheckpointTooLarge},
 *   {@link DelegationFailed}, {@link DelegationUnavailable} and {@link Suspension} are thrown
 *   *by or to agent code* inside an agent handler: `AgentError` becomes an `error` frame of
 *   the agent protocol, `ChunkTooLarge` tells the handler that a chunk it tried to emit would
 *   break the 64 KiB line limit, `CheckpointTooLarge` that a checkpoint would break the
 *   256 KiB one, `DelegationFailed` that a sub-task it delegated to did not complete,
 *   `DelegationUnavailable` that its agent type may not delegate at all, and `Suspension`
 *   (from `ctx.waitForSignal`) ends the attempt with a `suspend` frame.
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
/** 409: e.g. cancelling a task that already ended (`task_finished`), or a signal the task
 * does not wait for ({@link NotWaiting}, {@link UnexpectedSignal}). */
export class Conflict extends AgentlogError {}

/**
 * 409 `not_waiting`: a signal was sent to a task that is not waiting for one (it is still
 * queued or running, or it ended). `taskStatus` is the task's status (`running`,
 * `completed`, …) from the answer's `error.detail.status` (else as its message names it;
 * `null` when neither does); `message` keeps the API's own words.
 */
export class NotWaiting extends Conflict {
  readonly taskStatus: string | null;

  constructor(status: number, code: string, message: string, options: AgentlogErrorOptions & { taskStatus?: string | null } = {}) {
    super(status, code, message, options);
    this.taskStatus = options.taskStatus ?? null;
  }
}

/**
 * 409 `unexpected_signal`: the task waits, but for another signal. `waitingFor` is the name
 * of the one it waits for, from the answer's `error.detail.waiting_for` (else as its message
 * names it; `null` when neither does); `message` keeps the API's own words.
 */
export class UnexpectedSignal extends Conflict {
  readonly waitingFor: string | null;

  constructor(status: number, code: string, message: string, options: AgentlogErrorOptions & { waitingFor?: string | null } = {}) {
    super(status, code, message, options);
    this.waitingFor = options.waitingFor ?? null;
  }
}
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

/** What the request was about, to read an error's message: the names the caller sent are
 * not the ones the error is about. */
export interface ErrorContext {
  /** The task the request named. */
  taskId?: string;
  /** The signal the request sent. */
  signal?: string;
}

/** Task statuses a `not_waiting` error may name (`waiting` excluded: "not waiting" is no status). */
const TASK_STATUSES = ["pending", "queued", "scheduled", "running", "retrying", "completed", "failed", "dead_lettered", "cancelled", "expired"];
const SIGNAL_NAME = /^[a-z0-9_.-]{1,64}$/;

/** The names an error message quotes (`x` as agentlog quotes them, or "x"), in order. */
function quoted(message: string): string[] {
  return [...message.matchAll(/`([^`]+)`|"([^"]+)"/g)].map((m) => m[1] ?? m[2] ?? "");
}

/** A field of what the API says besides the message, the first of `names` present: in
 * `error.detail` (where agentlog puts it), else in `error`. */
function detailOf(error: Record<string, unknown>, names: string[]): unknown {
  const detail = error.detail !== null && typeof error.detail === "object" ? (error.detail as Record<string, unknown>) : {};
  for (const name of names) {
    if (detail[name] !== undefined && detail[name] !== null) return detail[name];
    if (error[name] !== undefined && error[name] !== null) return error[name];
  }
  return undefined;
}

/** The task status a `not_waiting` error names: `error.detail.status` as agentlog gives it
 * (or a `task_status`), otherwise the first status word of the message (quoted ones first),
 * the task's own id aside. */
function taskStatusOf(error: Record<string, unknown>, message: string, context: ErrorContext): string | null {
  const field = detailOf(error, ["status", "task_status"]);
  if (typeof field === "string" && field) return field;
  const named = quoted(message).filter((q) => q !== context.taskId);
  const inQuotes = named.find((q) => TASK_STATUSES.includes(q));
  if (inQuotes) return inQuotes;
  const bare = message.replace(/`[^`]*`|"[^"]*"/g, " ").match(new RegExp(`\\b(${TASK_STATUSES.join("|")})\\b`));
  return bare?.[1] ?? null;
}

/** The signal an `unexpected_signal` error says the task waits for: `error.detail.waiting_for`
 * as agentlog gives it (a name, or `{signal}` as in a task's JSON), otherwise the first name
 * the message quotes that is neither the task's id nor the signal sent, or the name after
 * "waits for" / "waiting for". */
function awaitedSignalOf(error: Record<string, unknown>, message: string, context: ErrorContext): string | null {
  let field = detailOf(error, ["waiting_for", "awaited_signal"]);
  if (field !== null && typeof field === "object") field = (field as { signal?: unknown }).signal;
  if (typeof field === "string" && field) return field;
  const named = quoted(message).find((q) => q !== context.taskId && q !== context.signal && SIGNAL_NAME.test(q));
  if (named) return named;
  const after = /\bwait(?:s|ing)? for (?:the )?(?:signal )?[`"']?([a-z0-9_.-]{1,64})/.exec(message)?.[1];
  return after && after !== context.signal && after !== "signal" ? after : null;
}

/** The typed error of an API answer with status >= 400 (reads its body). `context` names
 * what the request was about, to read 409 `not_waiting` / `unexpected_signal` messages. */
export async function errorFromResponse(response: Response, context: ErrorContext = {}): Promise<AgentlogError> {
  const status = response.status;
  let code = `http_${status}`;
  let message = response.statusText || "";
  let field: string | null = null;
  let body: unknown = undefined;
  let errorObject: Record<string, unknown> = {};
  const text = await response.text().catch(() => "");
  try {
    body = JSON.parse(text);
    const error = body !== null && typeof body === "object" ? (body as { error?: unknown }).error : undefined;
    if (error !== null && typeof error === "object") {
      errorObject = error as Record<string, unknown>;
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
  if (status === 409 && code === "not_waiting") {
    return new NotWaiting(status, code, message, { field, body, taskStatus: taskStatusOf(errorObject, message, context) });
  }
  if (status === 409 && code === "unexpected_signal") {
    return new UnexpectedSignal(status, code, message, { field, body, waitingFor: awaitedSignalOf(errorObject, message, context) });
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

/** A child's outcome, as {@link DelegationFailed} carries it (the agent module's
 * `ChildOutcome`). */
export interface FailedChild {
  /** The child's number in its parent's attempt (the `n` it was submitted with). */
  n: number;
  taskId: string;
  status: string;
  errorKind: string | null;
  message: string | null;
}

/**
 * A sub-task submitted with `ctx.delegate` ended other than `completed`: `failed`,
 * `dead_lettered`, `cancelled` or `expired`. `taskId` is the child's id (`<parent id>.<n>`),
 * `status` its status, `errorKind` and `childMessage` its error's kind and message as the
 * child's outcome gives them (`null` when it gives none); `message` says all of it in one
 * line.
 *
 * Left uncaught, the attempt fails with kind `delegation_failed`, not retryable: a retry
 * submits the same `n`, which names the same child, whose outcome is already written.
 */
export class DelegationFailed extends Error {
  readonly n: number;
  readonly taskId: string;
  readonly status: string;
  readonly errorKind: string | null;
  readonly childMessage: string | null;

  constructor(child: FailedChild) {
    const kind = child.errorKind ? ` (${child.errorKind})` : "";
    const why = child.message ? `: ${child.message}` : "";
    super(`child task \`${child.taskId}\` (n ${child.n}) ended ${child.status}${kind}${why}`);
    this.name = "DelegationFailed";
    this.n = child.n;
    this.taskId = child.taskId;
    this.status = child.status;
    this.errorKind = child.errorKind;
    this.childMessage = child.message;
  }
}

/**
 * `ctx.delegate` (or `submitChild`, `childOutcome`) in an attempt without a `callback_url`:
 * its agent type is not declared with `delegates = true` in agentlog's config.
 *
 * Left uncaught, the attempt fails with kind `delegation_unavailable`, not retryable:
 * another attempt would have no callback either.
 */
export class DelegationUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DelegationUnavailable";
  }
}

/**
 * What `ctx.waitForSignal` throws to end the attempt when it was not resumed by the signal
 * awaited: the agent server answers it with the final frame `{"type": "suspend", "signal",
 * "timeout_ms"}`, and the task waits for the signal (or its timeout) without holding a
 * worker. Let it through: a `catch` that must not swallow it rethrows it (`if (e instanceof
 * Suspension) throw e`). Once thrown the attempt is suspending whatever the handler does
 * next: later frames are refused (with this same error) and the answer ends with `suspend`.
 */
export class Suspension extends Error {
  /** The signal awaited. */
  readonly signal: string;
  readonly timeoutMs: number;

  /** @internal Thrown by `ctx.waitForSignal`. */
  constructor(signal: string, timeoutMs: number) {
    super(`the attempt suspends until the signal \`${signal}\` (at most ${timeoutMs} ms)`);
    this.name = "Suspension";
    this.signal = signal;
    this.timeoutMs = timeoutMs;
  }
}
