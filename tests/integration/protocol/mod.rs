//! The agent protocol end to end (`docs/agent-protocol.md`), on every backend: an `http` agent
//! answering NDJSON frames through a real worker, the projection and the HTTP API on a real
//! port; the task's SSE stream read live, dropped and resumed on another API replica (its own
//! projection) with nothing missed or repeated; typed errors, retry-after and broken frames;
//! checkpoints; suspending for a signal, resumed by it after a worker restart or by a timeout;
//! delegation through an attempt's callback; usage reported with framed and plain answers.

use crate::harness::{Harness, kafka_bootstrap};

mod scenarios;

every_backend_suite!(
    a_framed_answer_streams_live_and_resumes_on_another_replica,
    typed_errors_retry_after_and_broken_frames_end_attempts_not_workers,
    a_checkpoint_reaches_the_retry_and_the_rerun_after_a_worker_crash,
    a_suspended_task_waits_for_its_signal_across_a_worker_restart,
    a_wait_that_times_out_fails_or_resumes_as_the_type_declares,
    an_http_agent_delegates_through_its_attempts_callback,
    usage_travels_with_framed_and_plain_answers,
    ; durable:
);
