//! One conformance suite for every backend: each scenario in `conformance/scenarios.rs` runs
//! against the in-memory log, the embedded log, and the Kafka broker `AGENTLOG_TEST_KAFKA`
//! names (the in-memory log skips only what needs a log that outlives a process).
//! The Kafka variants are `#[ignore]`d, so a plain `cargo test` shows them as ignored;
//! `make test` starts a broker and runs them with `--include-ignored`.

mod scenarios;

use crate::harness::{self, Harness, kafka_bootstrap};

every_backend_suite!(
    per_key_order_is_kept,
    keys_land_on_kafka_murmur2_partitions,
    headers_round_trip,
    group_members_split_partitions_and_failover,
    uncommitted_records_are_delivered_again,
    transactions_are_all_or_nothing,
    seek_by_timestamp_and_offset,
    pause_holds_a_partition_back_until_resume,
    watermarks_and_lag,
    unknown_topic_is_a_typed_error,
    oversized_record_is_refused_and_nothing_written,
    admin_creates_describes_and_deletes,
    topics_apply_creates_and_reports_drift,
    a_waiting_consumer_gets_every_record,
    undecodable_events_are_dead_lettered,
    worker_runs_tasks_and_commits_after_outcomes,
    an_upgraded_worker_continues_from_the_former_group_name,
    the_registry_replays_past_offsets_that_are_never_delivered,
    a_task_longer_than_max_poll_interval_does_not_evict_the_worker,
    each_topic_spreads_evenly_over_the_members,
    a_position_passes_a_closing_transaction_marker;
    durable: committed_offsets_survive_a_process_restart,
);
