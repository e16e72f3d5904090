//! The task lifecycle on every backend (in-memory, embedded, Kafka): retries through durable timers, dead letters,
//! timeouts and expiry, cancellation, priority lanes, ordering keys, the http and exec
//! runtimes, drains, heartbeats and lost agents, delays, jobs and exactly-once outcomes, and
//! hostile inputs (outputs, dead letters and submits past the record limit, garbage on a lane,
//! credentials in an agent's URL).
//! The Kafka variants are `#[ignore]`d: `make test` starts a broker, names it in
//! `AGENTLOG_TEST_KAFKA` and runs them with `--include-ignored`.

mod hostile;
mod scenarios;

use crate::fixture;
use crate::harness::{Harness, kafka_bootstrap};

every_backend_suite!(
    retry_then_success_and_non_retryable_failure,
    poison_task_is_dead_lettered_and_can_be_resubmitted,
    timeouts_retry_and_expired_tasks_never_run,
    cancel_before_and_during_a_run,
    a_high_task_overtakes_a_low_backlog,
    ordering_keys_hold_under_concurrency,
    http_and_exec_runtimes_map_failures,
    a_drain_loses_nothing_and_runs_nothing_twice,
    a_silent_agent_is_declared_lost,
    delayed_tasks_and_jobs,
    a_registry_outage_never_dead_letters_a_timer,
    a_registry_outage_holds_the_projection_back,
    a_registry_outage_never_loses_a_cancel,
    exactly_once_outcomes,
    exactly_once_abandons_a_stuck_transaction,
    exactly_once_survives_partitions_moving,
    exactly_once_never_reruns_committed_work,
    exactly_once_dead_letters_are_listed_and_resubmitted,
    a_worker_that_fails_to_start_stops_its_readers,
    a_coordinator_delegates_and_aggregates,
    an_echo_too_large_for_its_outcome_fails_the_task,
    an_http_agent_answering_megabytes_fails_the_task,
    a_near_limit_dead_letter_is_truncated,
    a_timer_too_large_for_its_lane_is_dead_lettered,
    undecodable_lane_records_are_dead_lettered,
    submit_past_the_headroom_answers_413,
    url_credentials_never_reach_an_answer;
    durable:
);
