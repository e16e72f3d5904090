//! The agentlog processes of one scenario, as a user runs them: each a child of this test
//! with its log in a file, killed, stopped, continued and restarted by pid. Nothing restarts
//! a process unless the scenario says so; any exit the scenario did not cause is recorded
//! with its status and the end of its log, because "no process exits" is part of the verdict.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines of a process log quoted when it exited unexpectedly.
const TAIL_LINES: usize = 25;
/// How long a SIGTERM'd process may drain at the end of a scenario before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
    #[error("no process named {0} in this scenario")]
    Unknown(String),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("signal {signal} to {name} (pid {pid}): {source}")]
    Signal { name: String, pid: u32, signal: i32, source: std::io::Error },
}

/// An exit nobody asked for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnexpectedExit {
    pub name: String,
    pub pid: u32,
    pub status: String,
    /// When it was noticed (within 250 ms while the scenario waits).
    #[serde(skip)]
    pub at: Instant,
    /// Seconds since the load began (set by the verdict), and since the first fault.
    pub at_s: f64,
    pub after_fault_s: Option<f64>,
    pub log: PathBuf,
    pub tail: Vec<String>,
}

struct Proc {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    /// Bumped on each restart: every incarnation writes its own log file.
    incarnation: u32,
    log: PathBuf,
}

/// How long gdb may take to dump one process's stacks (loading the symbols of a release
/// build with debug info takes most of it).
const STACKS_WITHIN: Duration = Duration::from_secs(120);

/// The processes of one scenario. Dropping it kills whatever still runs.
pub struct Fleet {
    dir: PathBuf,
    config: PathBuf,
    started: Instant,
    procs: Vec<Proc>,
    exits: Vec<UnexpectedExit>,
}

impl Fleet {
    pub fn new(dir: &Path, config: &Path, started: Instant) -> Fleet {
        Fleet { dir: dir.to_path_buf(), config: config.to_path_buf(), started, procs: Vec::new(), exits: Vec::new() }
    }

    /// Starts `agentlog <args>` as `name` (e.g. `worker-2`), stderr and stdout into
    /// `<dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> Result<u32, ProcessError> {
        let mut proc = Proc { name: name.to_string(), args: args.iter().map(|a| a.to_string()).collect(), child: None, incarnation: 0, log: PathBuf::new() };
        launch(&self.dir, &self.config, &mut proc)?;
        let pid = proc.child.as_ref().map(Child::id).unwrap_or(0);
        self.procs.push(proc);
        Ok(pid)
    }

    fn find(&mut self, name: &str) -> Result<&mut Proc, ProcessError> {
        self.procs.iter_mut().find(|p| p.name == name).ok_or_else(|| ProcessError::Unknown(name.to_string()))
    }

    pub fn pid(&mut self, name: &str) -> Result<u32, ProcessError> {
        let proc = self.find(name)?;
        proc.child.as_ref().map(Child::id).ok_or_else(|| ProcessError::NotRunning(name.to_string()))
    }

    pub fn log_of(&mut self, name: &str) -> Result<PathBuf, ProcessError> {
        Ok(self.find(name)?.log.clone())
    }

    /// kill -9, and reap it: this exit is the scenario's, not a failure.
    pub fn kill9(&mut self, name: &str) -> Result<(), ProcessError> {
        self.poll();
        let proc = self.find(name)?;
        let mut child = proc.child.take().ok_or_else(|| ProcessError::NotRunning(name.to_string()))?;
        // Child::kill is SIGKILL on Unix; it reaches a stopped process too.
        child.kill().map_err(|source| ProcessError::Signal { name: name.to_string(), pid: child.id(), signal: libc::SIGKILL, source })?;
        let _ = child.wait();
        Ok(())
    }

    /// SIGSTOP: the process is frozen (its sockets stay open, its heartbeats stop).
    pub fn pause(&mut self, name: &str) -> Result<(), ProcessError> {
        self.signal(name, libc::SIGSTOP)
    }

    pub fn resume(&mut self, name: &str) -> Result<(), ProcessError> {
        self.signal(name, libc::SIGCONT)
    }

    fn signal(&mut self, name: &str, signal: i32) -> Result<(), ProcessError> {
        let pid = self.pid(name)?;
        // SAFETY: our own child, not yet reaped, so the pid is still ours.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(ProcessError::Signal { name: name.to_string(), pid, signal, source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Starts a process the scenario killed, with the same arguments.
    pub fn restart(&mut self, name: &str) -> Result<(), ProcessError> {
        self.poll();
        let (dir, config) = (self.dir.clone(), self.config.clone());
        let proc = self.find(name)?;
        if proc.child.is_some() {
            return Ok(());
        }
        launch(&dir, &config, proc)
    }

    /// Records every process that exited since the last look. Call it often (the scenario's
    /// waits do), so the exit time in the report is close to the real one.
    pub fn poll(&mut self) {
        let at = Instant::now();
        let at_s = at.duration_since(self.started).as_secs_f64();
        for proc in &mut self.procs {
            let Some(child) = proc.child.as_mut() else { continue };
            let status: ExitStatus = match child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) | Err(_) => continue,
            };
            let pid = child.id();
            proc.child = None;
            self.exits.push(UnexpectedExit {
                name: proc.name.clone(),
                pid,
                status: status.to_string(),
                at,
                at_s,
                after_fault_s: None,
                log: proc.log.clone(),
                tail: tail(&proc.log, TAIL_LINES),
            });
        }
    }

    /// Sleeps `d`, looking for exits every 250 ms.
    pub async fn sleep(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < until {
            self.poll();
            tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_millis(250))).await;
        }
        self.poll();
    }

    pub fn exits(&self) -> &[UnexpectedExit] {
        &self.exits
    }

    /// Writes every running process's threads' stacks (gdb, if installed) to
    /// `<dir>/<name>.stacks.txt`: the evidence of where a worker that stopped reading sits.
    /// Only called when acknowledged tasks are missing; gdb stops each process for the few
    /// seconds it takes, and is cut off after [`STACKS_WITHIN`].
    pub async fn dump_stacks(&mut self) -> Vec<String> {
        self.poll();
        let mut notes = Vec::new();
        let running: Vec<(String, u32)> = self.procs.iter().filter_map(|p| Some((p.name.clone(), p.child.as_ref()?.id()))).collect();
        for (name, pid) in running {
            let path = self.dir.join(format!("{name}.stacks.txt"));
            let dumped = tokio::time::timeout(
                STACKS_WITHIN,
                tokio::process::Command::new("gdb")
                    .args(["-batch", "-nx", "-ex", "set pagination off", "-ex", "thread apply all bt", "-p", &pid.to_string()])
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await;
            match dumped {
                Ok(Ok(output)) => match std::fs::write(&path, [output.stdout, output.stderr].concat()) {
                    Ok(()) => notes.push(format!("stacks of {name} in {}", path.display())),
                    Err(e) => notes.push(format!("writing {}: {e}", path.display())),
                },
                Ok(Err(e)) => notes.push(format!("no stacks of {name}: gdb: {e}")),
                Err(_) => notes.push(format!("no stacks of {name}: gdb took over {STACKS_WITHIN:?}")),
            }
        }
        notes
    }

    /// Whether a process whose name starts with `prefix` still runs.
    pub fn any_running(&mut self, prefix: &str) -> bool {
        self.poll();
        self.procs.iter().any(|p| p.name.starts_with(prefix) && p.child.is_some())
    }

    /// The end of the scenario: SIGTERM everything but `last` (SIGCONT first, a stopped
    /// process cannot drain), then `last` (the registry: the others encode their farewell
    /// events with it), SIGKILL what is still there after the grace period. Exits from here
    /// on are expected.
    pub async fn shutdown(&mut self, last: &[&str]) {
        self.poll();
        let (first, then): (Vec<&mut Proc>, Vec<&mut Proc>) = self.procs.iter_mut().partition(|p| !last.contains(&p.name.as_str()));
        stop_all(first).await;
        stop_all(then).await;
    }
}

async fn stop_all(procs: Vec<&mut Proc>) {
    for proc in &procs {
        if let Some(child) = proc.child.as_ref() {
            // SAFETY: signals to our own unreaped children.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
    }
    let mut procs = procs;
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && procs.iter_mut().any(|p| p.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for proc in procs {
        if let Some(mut child) = proc.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn launch(dir: &Path, config: &Path, proc: &mut Proc) -> Result<(), ProcessError> {
    proc.incarnation += 1;
    let file = if proc.incarnation == 1 { format!("{}.log", proc.name) } else { format!("{}.{}.log", proc.name, proc.incarnation) };
    proc.log = dir.join(file);
    let spawn_error = |source| ProcessError::Spawn { name: proc.name.clone(), source };
    let out = File::create(&proc.log).map_err(spawn_error)?;
    let err = out.try_clone().map_err(spawn_error)?;
    let child = Command::new(env!("CARGO_BIN_EXE_agentlog"))
        .arg("--config")
        .arg(config)
        .args(&proc.args)
        // info: the lines that say what a process decided (leading, fenced, retrying); the
        // api's submit positions at debug, to look a lost task up in the log (lanes.txt).
        .env("RUST_LOG", std::env::var("AGENTLOG_FAULTS_RUST_LOG").unwrap_or_else(|_| "info,librdkafka=warn,agentlog::api::tasks=debug".into()))
        // The end of a log is the evidence of an exit: the error chain, not a backtrace of
        // where anyhow caught it, and no colour codes.
        .env("RUST_LIB_BACKTRACE", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(spawn_error)?;
    proc.child = Some(child);
    Ok(())
}

/// The last `n` lines of a log file, without the source locations of backtrace frames.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("at /")).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}
