/**
 * agentlog's TypeScript SDK (agent protocol v1): a client of the HTTP API, with a task's
 * live stream resumed across drops and signals to waiting tasks, and an agent server on
 * `node:http` whose handlers may wait for signals and delegate sub-tasks.
 *
 * @packageDocumentation
 */

export {
  AgentlogClient,
  VERSION,
  taskSpec,
  type ClientOptions,
  type ListQuery,
  type ModelUsageJson,
  type SignalOptions,
  type StatsJson,
  type Signalled,
  type Submitted,
  type TaskOptions,
  type TaskPage,
  type TaskSpec,
} from "./client.js";
export {
  parsePosition,
  type ChunkEvent,
  type OutcomeEvent,
  type OutcomeJson,
  type ProgressEvent,
  type StreamEvent,
  type StreamOptions,
  type TaskJson,
  type UsageJson,
} from "./stream.js";
export {
  AgentApp,
  CHILD_WAIT_MS,
  Context,
  MAX_REQUEST_BYTES,
  createAgentServer,
  type ChildOptions,
  type ChildOutcome,
  type Handler,
  type ResumeSignal,
} from "./agent.js";
export {
  MAX_CHECKPOINT_LINE_BYTES,
  MAX_LINE_BYTES,
  MAX_SIGNAL_TIMEOUT_MS,
  PROTOCOL_VERSION,
  Result,
  SIGNAL_NAME,
  result,
  Usage,
  type Frame,
  type InputEncoding,
  type UsageFrame,
  type UsageReport,
} from "./frames.js";
export {
  AgentError,
  AgentlogError,
  BadRequest,
  CheckpointTooLarge,
  ChunkTooLarge,
  Conflict,
  DelegationFailed,
  DelegationUnavailable,
  Forbidden,
  NotFound,
  NotWaiting,
  PayloadTooLarge,
  ServerError,
  StreamError,
  Suspension,
  TooManyRequests,
  Unauthorized,
  Unavailable,
  UnexpectedSignal,
  WaitTimeout,
  type AgentErrorInit,
  type AgentlogErrorOptions,
  type ErrorContext,
  type FailedChild,
} from "./errors.js";
