//! `agentlog bench`: end-to-end load against a backend.
//!
//! - [`log`]: records through the event log alone (throughput, produce→consume latency);
//! - [`tasks`]: tasks through a real worker with a no-op agent (submit→outcome).

pub mod log;
pub mod tasks;

pub use self::log::{BenchError, LogBenchOptions, LogBenchReport, run_log_bench};
