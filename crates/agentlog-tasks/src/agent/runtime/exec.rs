//! The `exec` runtime: runs the configured program with its configured arguments, task input
//! on stdin, output from stdout.
//!
//! Task data never reaches argv or a shell: the program is started directly (no `sh -c`) with
//! exactly the configured arguments. The environment is built, not inherited: the worker's
//! environment holds the log's and the registry's credentials (SASL passwords,
//! `AGENTLOG__…` settings), and a program is a tenant's code path. The program gets
//! [`PASSED_THROUGH`] from the worker (where set), then the agent type's declared `env`
//! (which may override them), then the task's metadata: `AGENTLOG_TASK_ID`,
//! `AGENTLOG_ATTEMPT`, `AGENTLOG_AGENT_TYPE` and `AGENTLOG_IDEMPOTENCY_KEY`. Nothing else.
//!
//! With `frames = true` the program speaks the agent protocol (`docs/agent-protocol.md`):
//! stdout is NDJSON frames, read as they are written (progress and chunks to `task.stream`),
//! and `AGENTLOG_PROTOCOL=1` is set. The `result` or `error` frame decides the attempt,
//! whatever the exit status; without one, a non-zero exit is kind `exit` (below) and exit 0
//! is kind `protocol`. A frame that breaks the protocol kills the program (kind `protocol`).
//! The task's latest checkpoint, when it has one, is in the file `AGENTLOG_CHECKPOINT_FILE`
//! names (JSON; removed when the attempt ends), its attempt in `AGENTLOG_CHECKPOINT_ATTEMPT`;
//! the signal that resumed a suspended task in the file `AGENTLOG_SIGNAL_FILE` names. A
//! delegating agent type's program finds its attempt's callback in `AGENTLOG_CALLBACK_URL`.
//! Otherwise:
//!
//! - exit 0 → completed; output = stdout (at most [`MAX_OUTPUT_BYTES`], else the program is
//!   killed and the attempt fails with kind `output_too_large`, not retryable), content type
//!   `application/octet-stream`;
//! - non-zero exit or death by signal → kind `exit`, retryable, message = the exit status and
//!   the last [`STDERR_TAIL_BYTES`] of stderr;
//! - the program cannot be started → kind `spawn`, not retryable;
//! - cancel → the program is killed (SIGKILL) and reaped, kind `cancelled`.
//!
//! The program runs as the leader of its own process group, and the attempt owns that group:
//! when the attempt ends — completed, failed, cancelled, cut off, or dropped by the worker's
//! timeout — every process still in it is killed (SIGKILL), so a script's background jobs and
//! the tools it started do not outlive the task. Only a descendant that leaves the group on
//! purpose (`setsid`, as daemons do) escapes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};

use super::frames::{self, FrameReader};
use super::{Agent, AgentFailure, MAX_OUTPUT_BYTES, RuntimeError, TaskContext, TaskOutput, kind, tail_text};
use crate::agent::stream::AttemptStream;

/// How much of stderr's end a failure message keeps.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// How long a killed program gets to be reaped before the attempt returns anyway.
const REAP_GRACE: Duration = Duration::from_millis(500);

/// The worker's variables a program gets (when the worker has them): what finding programs,
/// a home directory and the locale need, and no credentials.
pub const PASSED_THROUGH: [&str; 3] = ["PATH", "HOME", "LANG"];

#[derive(Clone)]
pub struct ExecAgent {
    program: String,
    args: Vec<String>,
    /// Stdout is the agent protocol's frames.
    frames: bool,
    /// The whole environment but the task's metadata: [`PASSED_THROUGH`] and the declared.
    env: BTreeMap<String, String>,
}

impl std::fmt::Debug for ExecAgent {
    // The environment's values may be secrets (API keys): only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecAgent")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("frames", &self.frames)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ExecAgent {
    /// A program run with `args` and, besides [`PASSED_THROUGH`] and the task's metadata,
    /// exactly the variables of `env`.
    pub fn new(program: &str, args: Vec<String>, env: BTreeMap<String, String>) -> Result<Self, RuntimeError> {
        if program.is_empty() {
            return Err(RuntimeError::InvalidProgram("the program must not be empty".into()));
        }
        if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(RuntimeError::InvalidProgram("the program and its arguments must not contain NUL".into()));
        }
        if let Some(name) = env.iter().find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0')).map(|(k, _)| k) {
            return Err(RuntimeError::InvalidProgram(format!("env `{name}`: a name is non-empty without '=' or NUL, a value without NUL")));
        }
        let mut full: BTreeMap<String, String> = PASSED_THROUGH.iter().filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v))).collect();
        full.extend(env);
        Ok(Self { program: program.to_string(), args, frames: false, env: full })
    }

    /// The program's stdout is the agent protocol's frames.
    pub fn with_frames(mut self, frames: bool) -> Self {
        self.frames = frames;
        self
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

/// The program's process group, killed when the attempt ends or is dropped.
struct ProcessGroup(Option<libc::pid_t>);

impl ProcessGroup {
    fn of(child: &Child) -> Self {
        Self(child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()))
    }

    /// SIGKILLs every process in the group (once). A group already empty is no error.
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg only sends a signal. `pgid` is the group the program leads (it
            // was spawned with `process_group(0)`); the kernel does not reuse the number while
            // the group has members or its leader is unreaped, and the group is killed at the
            // latest right after the leader is reaped, so the window is a few instructions.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills the program's group and waits (briefly) for the program to be reaped.
async fn kill(child: &mut Child, group: &mut ProcessGroup) {
    group.kill();
    let _ = child.start_kill();
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
}

/// Reads stdout (with `read`) while waiting for the program to exit. Once it has exited, its
/// group is killed: a background job it left holding stdout (or stderr) would otherwise keep
/// the attempt waiting for an end of file until that job ends. A read that fails (too much
/// output, a broken frame) ends the wait at once.
async fn run_to_exit<R>(child: &mut Child, group: &mut ProcessGroup, read: impl Future<Output = Result<R, AgentFailure>>) -> Finished<R> {
    let mut read = std::pin::pin!(read);
    let exited = tokio::select! {
        out = &mut read => match out {
            Ok(out) => {
                let status = child.wait().await;
                group.kill();
                return Finished::Exited(status, out);
            }
            Err(failure) => return Finished::Broken(failure),
        },
        status = child.wait() => status,
    };
    group.kill();
    match read.await {
        Ok(out) => Finished::Exited(exited, out),
        Err(failure) => Finished::Broken(failure),
    }
}

enum Finished<R> {
    Exited(std::io::Result<std::process::ExitStatus>, R),
    Broken(AgentFailure),
}

/// Reads stdout as the agent protocol's frames; the attempt's end frame if there was one.
async fn read_frames(mut stdout: ChildStdout, stream: Option<&AttemptStream>) -> Result<(Option<Result<TaskOutput, AgentFailure>>, usize), AgentFailure> {
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => reader.feed(&buf[..n], stream).await?,
        }
    }
    let lines = reader.lines();
    Ok((reader.end(stream).await?, lines))
}

impl ExecAgent {
    /// Starts the program in a process group of its own, with only the environment its type
    /// declares and the task's metadata, and every stdio piped.
    fn spawn(&self, ctx: &TaskContext, files: &AttemptFiles) -> Result<Child, AgentFailure> {
        let checkpoint_env = files.checkpoint.as_ref().map(|(file, attempt)| {
            [("AGENTLOG_CHECKPOINT_FILE".to_string(), file.path.display().to_string()), ("AGENTLOG_CHECKPOINT_ATTEMPT".to_string(), attempt.to_string())]
        });
        let signal_env = files.signal.as_ref().map(|file| ("AGENTLOG_SIGNAL_FILE".to_string(), file.path.display().to_string()));
        let callback_env = ctx.callback_url.as_ref().map(|url| ("AGENTLOG_CALLBACK_URL".to_string(), url.clone()));
        // The attempt's trace, under the names OpenTelemetry's environment carrier uses.
        let trace = crate::trace::current();
        let trace_env = trace
            .iter()
            .flat_map(|c| std::iter::once(("TRACEPARENT".to_string(), c.parent.clone())).chain(c.state.clone().map(|s| ("TRACESTATE".to_string(), s))));
        Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .env("AGENTLOG_TASK_ID", &ctx.task_id)
            .env("AGENTLOG_ATTEMPT", ctx.attempt.to_string())
            .env("AGENTLOG_AGENT_TYPE", &ctx.agent_type)
            .env("AGENTLOG_IDEMPOTENCY_KEY", &ctx.idempotency_key)
            .envs(self.frames.then_some(("AGENTLOG_PROTOCOL", "1")))
            .envs(checkpoint_env.into_iter().flatten())
            .envs(signal_env)
            .envs(callback_env)
            .envs(trace_env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentFailure::new(kind::SPAWN, format!("starting `{}`: {e}", self.program), false))
    }

    /// A non-zero exit: retryable, with the end of what the program wrote to stderr.
    fn exit_failure(&self, status: std::process::ExitStatus, stderr: &[u8]) -> AgentFailure {
        let tail = tail_text(stderr, STDERR_TAIL_BYTES);
        let tail = tail.trim_end();
        let message = if tail.is_empty() {
            format!("`{}` {status}; stderr was empty", self.program)
        } else {
            format!("`{}` {status}; stderr tail:\n{tail}", self.program)
        };
        AgentFailure::new(kind::EXIT, message, true)
    }
}

impl ExecAgent {
    /// Runs the program to its exit while `read` reads its stdout, unless the task is
    /// cancelled or the read fails: then the program's group is killed and the attempt fails.
    async fn finish<R>(
        &self,
        ctx: &TaskContext,
        child: &mut Child,
        group: &mut ProcessGroup,
        read: impl Future<Output = Result<R, AgentFailure>>,
    ) -> Result<(std::io::Result<std::process::ExitStatus>, R), AgentFailure> {
        let finished = tokio::select! {
            _ = ctx.cancel.cancelled() => None,
            f = run_to_exit(child, group, read) => Some(f),
        };
        match finished {
            None => {
                kill(child, group).await;
                Err(AgentFailure::cancelled())
            }
            Some(Finished::Broken(failure)) => {
                kill(child, group).await;
                Err(failure)
            }
            Some(Finished::Exited(status, out)) => {
                if status.is_err() {
                    kill(child, group).await;
                }
                Ok((status, out))
            }
        }
    }

    fn wait_failure(&self, e: &std::io::Error) -> AgentFailure {
        AgentFailure::transient(format!("waiting for `{}`: {e}", self.program))
    }
}

/// What a framed program reads from files: the task's checkpoint, the signal that resumed it.
#[derive(Default)]
struct AttemptFiles {
    checkpoint: Option<(AttemptFile, i32)>,
    signal: Option<AttemptFile>,
}

impl AttemptFiles {
    async fn write(ctx: &TaskContext) -> Result<AttemptFiles, AgentFailure> {
        let mut files = AttemptFiles::default();
        if let Some(saved) = &ctx.checkpoint {
            files.checkpoint = Some((AttemptFile::write(&ctx.task_id, "checkpoint", saved.state.as_bytes()).await?, saved.attempt));
        }
        if let Some(signal) = &ctx.signal {
            let json = serde_json::to_vec(&super::http::SignalBody::of(signal)).map_err(|e| AgentFailure::transient(format!("encoding the signal: {e}")))?;
            files.signal = Some(AttemptFile::write(&ctx.task_id, "signal", &json).await?);
        }
        Ok(files)
    }
}

/// JSON handed to a program in a file of its own (an environment variable would limit it to
/// 128 KiB); removed when the attempt ends.
struct AttemptFile {
    path: std::path::PathBuf,
}

impl AttemptFile {
    async fn write(task_id: &str, what: &str, contents: &[u8]) -> Result<AttemptFile, AgentFailure> {
        // The name is not the task id (any bytes): a random one in the temporary directory.
        let path = std::env::temp_dir().join(format!("agentlog-{what}-{:016x}.json", rand::random::<u64>()));
        tokio::fs::write(&path, contents)
            .await
            .map_err(|e| AgentFailure::transient(format!("writing task {}'s {what} to {}: {e}", super::head_text(task_id.as_bytes(), 200), path.display())))?;
        Ok(AttemptFile { path })
    }
}

impl Drop for AttemptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the stderr reader kept, once the program exited. Its group is gone, so stderr ends,
/// but a descendant that left the group may still hold it: the wait is bounded.
async fn stderr_tail(task: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(task) = task else { return Vec::new() };
    let abort = task.abort_handle();
    match tokio::time::timeout(REAP_GRACE, task).await {
        Ok(Ok(tail)) => tail,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
}

#[async_trait::async_trait]
impl Agent for ExecAgent {
    async fn run(&self, ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
        if ctx.cancel.is_cancelled() {
            return Err(AgentFailure::cancelled());
        }
        let files = if self.frames { AttemptFiles::write(&ctx).await? } else { AttemptFiles::default() };
        let mut child = self.spawn(&ctx, &files)?;
        let mut group = ProcessGroup::of(&child);

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

        let result = if self.frames {
            let read = read_frames(stdout, ctx.stream.as_ref());
            match self.finish(&ctx, &mut child, &mut group, read).await {
                Ok((Ok(status), (None, lines))) if status.success() => Err(frames::no_end(lines)),
                Ok((Ok(status), (None, _))) => Err(self.exit_failure(status, &stderr_tail(stderr_task.take()).await)),
                Ok((_, (Some(end), _))) => end,
                Ok((Err(e), _)) => Err(self.wait_failure(&e)),
                Err(failure) => Err(failure),
            }
        } else {
            let read = async {
                read_bounded(stdout, MAX_OUTPUT_BYTES).await.map_err(|()| {
                    AgentFailure::new(
                        kind::OUTPUT_TOO_LARGE,
                        format!("`{}` wrote more than {MAX_OUTPUT_BYTES} bytes to stdout; it was killed", self.program),
                        false,
                    )
                })
            };
            match self.finish(&ctx, &mut child, &mut group, read).await {
                Ok((Ok(status), out)) if status.success() => Ok(TaskOutput::new(Bytes::from(out), "application/octet-stream")),
                Ok((Ok(status), _)) => Err(self.exit_failure(status, &stderr_tail(stderr_task.take()).await)),
                Ok((Err(e), _)) => Err(self.wait_failure(&e)),
                Err(failure) => Err(failure),
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
