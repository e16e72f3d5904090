//! Agents as consumer-group workers. This holds the parts of the worker that stand on their
//! own: the agent-type catalog from config, retry policy and backoff, the offset tracker that
//! decides what may be committed when tasks finish out of order, and the scheduler that picks
//! the next task by lane priority, ordering key and concurrency; the attempt (cancel, expiry,
//! retry classification), the worker loop, presence (registration and heartbeats) and the
//! client that submits and cancels tasks. The supervisor lives in [`crate::supervisor`].

pub mod attempt;
pub mod callback;
pub mod cancels;
pub mod catalog;
pub mod checkpoints;
pub mod client;
pub mod delegate;
pub mod dlq;
pub mod floors;
pub mod follower_task;
pub mod limits;
pub mod offsets;
pub mod outcomes;
pub mod presence;
pub mod retry;
pub mod runtime;
pub mod scheduler;
pub mod stream;
pub mod topics;
pub mod worker;

pub use catalog::{AgentTypeConfig, RuntimeConfig, lane_topic_specs};
pub use client::{ClientError, Submitted, TaskClient};
pub use offsets::{OffsetTracker, PartitionProgress};
pub use retry::RetryPolicy;
pub use scheduler::Scheduler;
pub use topics::TaskTopics;
pub use worker::{WorkerError, WorkerReport, WorkerSettings, run_worker};
