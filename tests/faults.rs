//! The fault suite: agentlog as a user runs it (registry, supervisor, api and three sleep
//! workers with exactly-once on, each its own process) on a real three-broker Kafka (RF 3,
//! min.insync.replicas 2), under 50 tasks/s over HTTP (`AGENTLOG_FAULTS_RATE`), with one fault per scenario. Each
//! scenario is judged as DESIGN.md's "Fault tests" asks (see `faults/verdict.rs`) and fails
//! on any lost, duplicated or unexpected task, any process exit it did not cause, a task
//! still open 30 s after the last heal, or an API that disagrees with `task.results`.
//!
//! Every scenario is `#[ignore]`d, so a plain `cargo test` lists them as ignored and starts no
//! cluster. The top-level ones are the CI subset, which `make test` runs (`--include-ignored
//! --skip make_faults::`); `make faults` runs them all. They start their own cluster through
//! scripts/kafka-local.sh on ports 29092-29097.
//! Kill -9 tests crashed processes, not power loss. FAULTS.md has the scenarios and results.

mod faults {
    pub mod api_view;
    pub mod client;
    pub mod cluster;
    pub mod group;
    pub mod lanes;
    pub mod processes;
    pub mod results;
    pub mod scenario;
    pub mod scenarios;
    pub mod verdict;
}

use std::time::Duration;

use faults::scenario::Scenario;
use faults::scenarios;

/// One test per scenario: set up, start the load, run the scenario's faults, then judge.
/// `traced: true` runs every process with tracing on at 100% sampling, exporting to a
/// collector that is down (see [`Scenario::begin`]).
macro_rules! fault_test {
    ($(#[$attr:meta])* $scenario:ident { supervisors: $supervisors:expr, load_s: $load_s:expr $(, traced: $traced:expr)? }) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $scenario() {
            let mut sc = Scenario::begin(stringify!($scenario), $supervisors, false $(|| $traced)?).await;
            let load = sc.load(Duration::from_secs($load_s));
            let steps = scenarios::$scenario(&mut sc).await;
            sc.finish(load, steps).await;
        }
    };
}

// The CI subset (`make test`): a red CI run must mean a regression, so a scenario joins it
// only after passing several runs in a row.
fault_test! { #[ignore = "fault suite: starts a three-broker cluster (make test, make faults)"] worker_kill { supervisors: 1, load_s: 20 } }
// Exactly-once under a broker kill: in CI since a stuck transaction is abandoned at its deadline
// and logging cannot stall a worker (2026-12-03: three passes in a row after one failure).
fault_test! { #[ignore = "fault suite: starts a three-broker cluster (make test, make faults)"] broker_kill { supervisors: 1, load_s: 30 } }
// The projection converging after a restart during a broker outage: in CI since the worker
// reads no partition before its committed offset is known (2026-12-04: ten passes in a row).
fault_test! { #[ignore = "fault suite: starts a three-broker cluster (make test, make faults)"] api_kill_during_broker_outage { supervisors: 1, load_s: 30 } }

/// `make faults` only: `make test` skips this module by name.
mod make_faults {
    use super::*;

    fault_test! { #[ignore = "make faults"] baseline { supervisors: 1, load_s: 20 } }
    fault_test! { #[ignore = "make faults"] worker_pause { supervisors: 1, load_s: 25 } }
    fault_test! { #[ignore = "make faults"] supervisor_leader_kill { supervisors: 2, load_s: 20 } }
    fault_test! { #[ignore = "make faults"] api_kill { supervisors: 1, load_s: 20 } }
    fault_test! { #[ignore = "make faults"] broker_leader_kill { supervisors: 1, load_s: 30 } }
    fault_test! { #[ignore = "make faults"] broker_pause { supervisors: 1, load_s: 25 } }
    fault_test! { #[ignore = "make faults"] registry_restart { supervisors: 1, load_s: 20 } }
    fault_test! { #[ignore = "make faults"] combination { supervisors: 1, load_s: 35 } }
    fault_test! { #[ignore = "make faults"] broker_kill_traced { supervisors: 1, load_s: 30, traced: true } }
}
