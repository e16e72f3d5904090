//! `agentlog bench`: end-to-end load against a backend.
//!
//! - [`log`]: records through the event log alone (throughput, produce→consume latency);
//! - [`tasks`]: tasks through a real worker with a no-op agent (submit→outcome);
//! - [`failover`]: kill -9 of a worker process on Kafka, and a worker joining a live group;
//! - [`timers`]: the supervisor's memory and rebuild time with a million delayed tasks.

pub mod api;
pub mod failover;
pub mod held;
pub mod log;
pub mod projection;
pub mod stream;
pub mod tasks;
pub mod timers;

pub use self::log::{BenchError, LogBenchOptions, LogBenchReport, run_log_bench};
