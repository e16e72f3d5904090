//! Agents as consumer-group workers. This holds the parts of the worker that stand on their
//! own: the agent-type catalog from config, retry policy and backoff, the offset tracker that
//! decides what may be committed when tasks finish out of order, and the scheduler that picks
//! the next task by lane priority, ordering key and concurrency. The worker loop,
//! runtimes and supervisor come next (issue 4).

pub mod catalog;
pub mod offsets;
pub mod retry;
pub mod runtime;
pub mod scheduler;
pub mod worker;

pub use catalog::{AgentTypeConfig, LANES, RuntimeConfig, lane_topic_specs};
pub use offsets::{OffsetTracker, PartitionProgress};
pub use retry::RetryPolicy;
pub use scheduler::Scheduler;
pub use worker::{WorkerError, WorkerReport, WorkerSettings, run_worker};
