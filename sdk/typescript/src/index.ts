/**
 * agentlog's TypeScript SDK (agent protocol v1): a client of the HTTP API, with a task's
 * live stream resumed across drops, and an agent server on `node:http`.
 *
 * @packageDocumentation
 */

export { AgentlogClient, VERSION, taskSpec, type ClientOptions, type ListQuery, type Submitted, type TaskOptions, type TaskPage, type TaskSpec } from "./client.js";
export {
  parsePosition,
  type ChunkEvent,
  type OutcomeEvent,
  type OutcomeJson,
  type ProgressEvent,
  type StreamEvent,
  type StreamOptions,
  type TaskJson,
} from "./stream.js";
export { AgentApp, Context, MAX_REQUEST_BYTES, createAgentServer, type Handler } from "./agent.js";
export { MAX_CHECKPOINT_LINE_BYTES, MAX_LINE_BYTES, PROTOCOL_VERSION, Result, result, type Frame, type InputEncoding } from "./frames.js";
export {
  AgentError,
  AgentlogError,
  BadRequest,
  CheckpointTooLarge,
  ChunkTooLarge,
  Conflict,
  Forbidden,
  NotFound,
  PayloadTooLarge,
  ServerError,
  StreamError,
  TooManyRequests,
  Unauthorized,
  Unavailable,
  WaitTimeout,
  type AgentErrorInit,
  type AgentlogErrorOptions,
} from "./errors.js";
