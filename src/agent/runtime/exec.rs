//! The `exec` runtime: runs the configured program with its configured arguments, task input
//! on stdin, output from stdout.
//!
//! Task data never reaches argv or a shell: the program is started directly (no `sh -c`) with
//! exactly the configured arguments. The environment is the worker's plus metadata only:
//! `AGENTLOG_TASK_ID`, `AGENTLOG_ATTEMPT`, `AGENTLOG_AGENT_TYPE` and `AGENTLOG_IDEMPOTENCY_KEY`.
//!
//! - exit 0 → completed; output = stdout (at most [`MAX_OUTPUT_BYTES`], else the program is
//!   killed and the attempt fails with kind `output_too_large`, not retryable), content type
//!   `application/octet-stream`;
//! - non-zero exit or death by signal → kind `exit`, retryable, message = the exit status and
//!   the last [`STDERR_TAIL_BYTES`] of stderr;
//! - the program cannot be started → kind `spawn`, not retryable;
//! - cancel → the program is killed (SIGKILL) and reaped, kind `cancelled`.
//!
//! The child is spawned with `kill_on_drop`, so an attempt dropped by the worker's timeout
//! kills it too. Only the program itself is killed: processes it started in the background
//! and detached from its pipes live on.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{Agent, AgentFailure, MAX_OUTPUT_BYTES, RuntimeError, TaskContext, TaskOutput, kind, tail_text};

/// How much of stderr's end a failure message keeps.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// How long a killed program gets to be reaped before the attempt returns anyway.
const REAP_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct ExecAgent {
    program: String,
    args: Vec<String>,
}

impl ExecAgent {
    pub fn new(program: &str, args: Vec<String>) -> Result<Self, RuntimeError> {
        if program.is_empty() {
            return Err(RuntimeError::InvalidProgram("the program must not be empty".into()));
        }
        if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(RuntimeError::InvalidProgram("the program and its arguments must not contain NUL".into()));
        }
        Ok(Self { program: program.to_string(), args })
    }
}

/// Reads `reader` to its end, at most `limit` bytes; `Err(())` once more arrives.
async fn read_bounded(mut reader: impl AsyncRead + Unpin, limit: usize) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(out),
            Ok(n) if out.len() + n > limit => return Err(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads `reader` to its end, keeping only its last `keep` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 2 * keep {
                    out.drain(..out.len() - keep);
                }
            }
        }
    }
    let start = out.len().saturating_sub(keep);
    out.split_off(start)
}

/// Kills the child and waits (briefly) for it to be reaped.
async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
}

enum Finished {
    Exited(std::io::Result<std::process::ExitStatus>, Vec<u8>),
    TooLarge,
}

#[async_trait::async_trait]
impl Agent for ExecAgent {
    async fn run(&self, ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
        if ctx.cancel.is_cancelled() {
            return Err(AgentFailure::cancelled());
        }
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("AGENTLOG_TASK_ID", &ctx.task_id)
            .env("AGENTLOG_ATTEMPT", ctx.attempt.to_string())
            .env("AGENTLOG_AGENT_TYPE", &ctx.agent_type)
            .env("AGENTLOG_IDEMPOTENCY_KEY", &ctx.idempotency_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentFailure::new(kind::SPAWN, format!("starting `{}`: {e}", self.program), false))?;

        // Stdin and stderr are served by their own tasks so that a program writing much
        // before it reads, or never reading, cannot block the attempt. They end when the
        // program's pipes close, at the latest when it dies.
        let stdin_task = child.stdin.take().map(|mut stdin| {
            let input = ctx.input.clone();
            tokio::spawn(async move {
                // A program that does not read its input closes the pipe: not an error.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            })
        });
        let mut stderr_task = child.stderr.take().map(|stderr| tokio::spawn(read_tail(stderr, STDERR_TAIL_BYTES)));
        let stdout = child.stdout.take().expect("stdout is piped");

        let finished = tokio::select! {
            _ = ctx.cancel.cancelled() => None,
            f = async {
                match read_bounded(stdout, MAX_OUTPUT_BYTES).await {
                    Ok(out) => Finished::Exited(child.wait().await, out),
                    Err(()) => Finished::TooLarge,
                }
            } => Some(f),
        };
        let result = match finished {
            None => {
                kill(&mut child).await;
                Err(AgentFailure::cancelled())
            }
            Some(Finished::TooLarge) => {
                kill(&mut child).await;
                Err(AgentFailure::new(
                    kind::OUTPUT_TOO_LARGE,
                    format!("`{}` wrote more than {MAX_OUTPUT_BYTES} bytes to stdout; it was killed", self.program),
                    false,
                ))
            }
            Some(Finished::Exited(Err(e), _)) => {
                kill(&mut child).await;
                Err(AgentFailure::transient(format!("waiting for `{}`: {e}", self.program)))
            }
            Some(Finished::Exited(Ok(status), out)) if status.success() => {
                Ok(TaskOutput { output: Bytes::from(out), content_type: "application/octet-stream".into() })
            }
            Some(Finished::Exited(Ok(status), _)) => {
                // The program is gone; stderr ends unless a descendant still holds it.
                let tail = match stderr_task.take() {
                    Some(task) => {
                        let abort = task.abort_handle();
                        match tokio::time::timeout(REAP_GRACE, task).await {
                            Ok(Ok(tail)) => tail,
                            _ => {
                                abort.abort();
                                Vec::new()
                            }
                        }
                    }
                    None => Vec::new(),
                };
                let tail = tail_text(&tail, STDERR_TAIL_BYTES);
                let tail = tail.trim_end();
                let message = if tail.is_empty() {
                    format!("`{}` {status}; stderr was empty", self.program)
                } else {
                    format!("`{}` {status}; stderr tail:\n{tail}", self.program)
                };
                Err(AgentFailure::new(kind::EXIT, message, true))
            }
        };
        if let Some(task) = stdin_task {
            task.abort();
        }
        if let Some(task) = stderr_task {
            task.abort();
        }
        result
    }
}
