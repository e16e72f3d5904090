//! Unit tests of the embedded backend (the cross-backend conformance suite lives in `tests/`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;

use super::EmbeddedLog;
use crate::config::{EmbeddedConfig, FsyncPolicy};
use crate::{
    CleanupPolicy, ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, Position, Record, SeekTo, TopicPartition, TopicSpec,
    Watermarks,
};

const WAIT: Duration = Duration::from_secs(10);

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig { data_dir: dir.join("log"), fsync: FsyncPolicy::Never, max_batch_records: 1024, retention_check_interval_ms: 0 }
}

fn open(dir: &Path) -> Arc<EmbeddedLog> {
    EmbeddedLog::open(&config(dir), 1 << 20).expect("open embedded log")
}

async fn create(log: &EmbeddedLog, spec: TopicSpec) {
    log.admin().create_topic(&spec).await.expect("create topic");
}

async fn send(log: &EmbeddedLog, record: Record) -> Position {
    let producer = log.producer().expect("producer");
    let delivery = producer.send(record).await.expect("accepted");
    timeout(WAIT, delivery).await.expect("delivery in time").expect("durable")
}

async fn next(consumer: &mut Box<dyn Consumer>) -> ConsumerEvent {
    timeout(WAIT, consumer.next_event()).await.expect("event in time").expect("event")
}

async fn next_record(consumer: &mut Box<dyn Consumer>) -> ConsumedRecord {
    match next(consumer).await {
        ConsumerEvent::Record(record) => record,
        other => panic!("expected a record, got {other:?}"),
    }
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

async fn marks(log: &EmbeddedLog, topic: &str, partition: i32) -> Watermarks {
    log.admin().watermarks(&tp(topic, partition)).await.expect("watermarks")
}

#[tokio::test]
async fn group_commit_and_reopen_preserve_offsets_and_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    create(&log, TopicSpec::new("t", 2)).await;
    let producer = log.producer().expect("producer");
    let mut deliveries = Vec::new();
    for i in 0..200 {
        let record = Record::new("t", format!("v{i}")).with_key(format!("k{}", i % 7)).with_header("h", Bytes::from(vec![i as u8]));
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    let batch = log.send_batch((0..50).map(|i| Record::new("t", format!("b{i}")).with_partition(1)).collect()).await.expect("batch");
    let mut per_partition = [Vec::new(), Vec::new()];
    for d in deliveries {
        let p = timeout(WAIT, d).await.expect("in time").expect("durable");
        per_partition[p.partition as usize].push(p.offset);
    }
    let batch_positions = timeout(WAIT, batch).await.expect("in time").expect("durable");
    for offsets in &per_partition {
        assert!(offsets.iter().enumerate().all(|(i, o)| *o == i as i64), "offsets are contiguous in send order");
    }
    assert_eq!(batch_positions[0].offset, per_partition[1].len() as i64);
    let before = [marks(&log, "t", 0).await, marks(&log, "t", 1).await];
    log.shutdown(WAIT).await.expect("shutdown");
    drop(log);

    let log = open(dir.path());
    let after = [marks(&log, "t", 0).await, marks(&log, "t", 1).await];
    assert_eq!(before, after);
    assert_eq!(after[0].high + after[1].high, 250);
    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&[(tp("t", 0), SeekTo::Earliest)]).await.expect("assign");
    let first = next_record(&mut consumer).await;
    assert_eq!((first.offset, first.partition), (0, 0));
    assert!(first.key.is_some() && first.header("h").is_some());
    // New appends continue after the recovered high watermark.
    let p = send(&log, Record::new("t", "more").with_partition(1)).await;
    assert_eq!(p.offset, after[1].high);
}

#[tokio::test]
async fn time_index_finds_the_earliest_offset_at_or_after_a_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    create(&log, TopicSpec::new("t", 1)).await;
    for ts in [100, 50, 200, 150, 300] {
        send(&log, Record::new("t", "x").with_timestamp(ts)).await;
    }
    let admin = log.admin();
    let cases = [(40, Some(0)), (100, Some(0)), (101, Some(2)), (160, Some(2)), (201, Some(4)), (300, Some(4)), (301, None)];
    for (ts, expected) in cases {
        assert_eq!(admin.offset_for_timestamp(&tp("t", 0), ts).await.expect("lookup"), expected, "timestamp {ts}");
    }
    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&[(tp("t", 0), SeekTo::Timestamp(160))]).await.expect("assign");
    assert_eq!(next_record(&mut consumer).await.offset, 2);
    consumer.seek(&tp("t", 0), SeekTo::Timestamp(1_000)).await.expect("seek past the end");
    send(&log, Record::new("t", "later").with_timestamp(10)).await;
    assert_eq!(next_record(&mut consumer).await.offset, 5, "past the end means the next append");
}

#[tokio::test]
async fn group_members_split_partitions_and_take_over_when_one_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    create(&log, TopicSpec::new("t", 4)).await;
    let group = || ConsumerOptions { group: Some("g".into()), client_id: None, ..Default::default() };
    let topics = vec!["t".to_string()];
    let mut c1 = log.consumer(group()).expect("consumer");
    c1.subscribe(&topics).expect("subscribe");
    assert_eq!(next(&mut c1).await, ConsumerEvent::Assigned((0..4).map(|p| tp("t", p)).collect()));
    let mut c2 = log.consumer(group()).expect("consumer");
    c2.subscribe(&topics).expect("subscribe");
    assert_eq!(next(&mut c2).await, ConsumerEvent::Assigned(vec![tp("t", 1), tp("t", 3)]));
    assert_eq!(next(&mut c1).await, ConsumerEvent::Revoked(vec![tp("t", 1), tp("t", 3)]));
    assert_eq!(c1.assignment(), vec![tp("t", 0), tp("t", 2)]);

    let rejected = c1.commit(&[(tp("t", 1), 1)]).await;
    assert!(matches!(rejected, Err(LogError::NotAssigned { partition: 1, .. })), "{rejected:?}");
    for i in 0..3 {
        send(&log, Record::new("t", format!("v{i}")).with_partition(1)).await;
    }
    let record = next_record(&mut c2).await;
    assert_eq!((record.partition, record.offset), (1, 0));
    c2.commit(&[(tp("t", 1), 1)]).await.expect("owner commits");
    c2.close().await.expect("close");

    assert_eq!(next(&mut c1).await, ConsumerEvent::Assigned(vec![tp("t", 1), tp("t", 3)]));
    let record = next_record(&mut c1).await;
    assert_eq!((record.partition, record.offset), (1, 1), "resumes at the committed offset");
    assert_eq!(c1.committed(&[tp("t", 1), tp("t", 3)]).await.expect("committed"), vec![Some(1), None]);
}

#[tokio::test]
async fn committed_offsets_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(&EmbeddedConfig { fsync: FsyncPolicy::Always, ..config(dir.path()) }, 1 << 20).expect("open");
    create(&log, TopicSpec::new("t", 2)).await;
    let mut consumer = log.consumer(ConsumerOptions { group: Some("g".into()), client_id: None, ..Default::default() }).expect("consumer");
    consumer.assign(&[(tp("t", 0), SeekTo::Earliest), (tp("t", 1), SeekTo::Earliest)]).await.expect("assign");
    consumer.commit(&[(tp("t", 0), 7), (tp("t", 1), 3)]).await.expect("commit");
    drop(consumer);
    log.shutdown(WAIT).await.expect("shutdown");
    drop(log);
    let log = open(dir.path());
    let committed = log.admin().committed_offsets("g", &[tp("t", 0), tp("t", 1), tp("t", 2)]).await.expect("committed");
    assert_eq!(committed, vec![Some(7), Some(3), None]);
}

#[tokio::test]
async fn transactions_are_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    create(&log, TopicSpec::new("in", 1)).await;
    create(&log, TopicSpec::new("out", 2)).await;
    let mut member = log.consumer(ConsumerOptions { group: Some("g".into()), client_id: None, ..Default::default() }).expect("consumer");
    member.subscribe(&["in".to_string()]).expect("subscribe");
    assert!(matches!(next(&mut member).await, ConsumerEvent::Assigned(_)));
    let producer = log.transactional_producer("tx").expect("transactional producer");

    let mut tx = producer.begin().await.expect("begin");
    tx.send(Record::new("out", "aborted").with_partition(0)).await.expect("send");
    tx.abort().await.expect("abort");
    assert_eq!(marks(&log, "out", 0).await.high, 0, "an aborted transaction leaves nothing");

    let mut tx = producer.begin().await.expect("begin");
    tx.send(Record::new("out", "a").with_partition(0)).await.expect("send");
    tx.send(Record::new("out", "b").with_partition(1)).await.expect("send");
    let metadata = member.group_metadata().expect("member metadata");
    let positions = tx.commit_with_offsets(&[(tp("in", 0), 5)], Some(&metadata)).await.expect("commit");
    assert_eq!(positions, vec![Position { partition: 0, offset: 0 }, Position { partition: 1, offset: 0 }]);
    assert_eq!(member.committed(&[tp("in", 0)]).await.expect("committed"), vec![Some(5)]);

    // A member that left no longer owns its partitions: nothing of the transaction is written.
    member.close().await.expect("close");
    let mut tx = producer.begin().await.expect("begin");
    tx.send(Record::new("out", "stale").with_partition(0)).await.expect("send");
    let rejected = tx.commit_with_offsets(&[(tp("in", 0), 6)], Some(&metadata)).await;
    assert!(matches!(rejected, Err(LogError::NotAssigned { .. })), "{rejected:?}");
    assert_eq!(marks(&log, "out", 0).await.high, 1);
    assert_eq!(log.admin().committed_offsets("g", &[tp("in", 0)]).await.expect("committed"), vec![Some(5)]);
}

#[tokio::test]
async fn retention_by_bytes_and_by_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let mut by_bytes = TopicSpec::new("bytes", 1);
    by_bytes.retention_bytes = Some(1_000);
    create(&log, by_bytes).await;
    let mut by_time = TopicSpec::new("time", 1);
    by_time.retention_ms = Some(1_000);
    create(&log, by_time).await;
    let mut reader = log.consumer(ConsumerOptions::default()).expect("consumer");
    reader.assign(&[(tp("bytes", 0), SeekTo::Earliest)]).await.expect("assign");
    for i in 0..20 {
        send(&log, Record::new("bytes", vec![0u8; 100]).with_timestamp(i)).await;
        send(&log, Record::new("time", "x").with_timestamp(i * 100)).await;
    }
    log.run_retention_now(1_500).expect("retention");

    let bytes = marks(&log, "bytes", 0).await;
    assert_eq!(bytes.high, 20);
    // Each stored record is ~130 bytes (key, timestamp, lengths, payload): 7 fit in 1000.
    assert!(bytes.low >= 12 && bytes.low < 20, "{bytes:?}");
    assert_eq!(next_record(&mut reader).await.offset, bytes.low, "a reader below the log start continues from it");
    // Records with timestamps below 1500 - 1000 are gone: offsets 0..=4.
    assert_eq!(marks(&log, "time", 0).await, Watermarks { low: 5, high: 20 });
    assert_eq!(log.admin().offset_for_timestamp(&tp("time", 0), 0).await.expect("lookup"), Some(5));

    // Everything expired: the partition is empty but offsets are never reused, even after reopen.
    log.run_retention_now(100_000).expect("retention");
    assert_eq!(marks(&log, "time", 0).await, Watermarks { low: 20, high: 20 });
    log.shutdown(WAIT).await.expect("shutdown");
    drop((log, reader));
    let log = open(dir.path());
    assert_eq!(marks(&log, "time", 0).await, Watermarks { low: 20, high: 20 });
    assert_eq!(send(&log, Record::new("time", "y")).await.offset, 20);
}

#[tokio::test]
async fn compaction_keeps_the_latest_record_per_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let mut spec = TopicSpec::new("c", 1);
    spec.cleanup_policy = CleanupPolicy::Compact;
    create(&log, spec).await;
    for (key, value) in [(Some("a"), "a1"), (Some("b"), "b1"), (Some("a"), "a2"), (None, "n"), (Some("b"), "b2"), (Some("c"), "c1")] {
        let mut record = Record::new("c", value).with_partition(0);
        record.key = key.map(|k| Bytes::from(k.to_owned()));
        send(&log, record).await;
    }
    log.run_retention_now(0).expect("compaction");
    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&[(tp("c", 0), SeekTo::Earliest)]).await.expect("assign");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = next_record(&mut consumer).await;
        seen.push((r.offset, String::from_utf8_lossy(&r.payload).into_owned()));
    }
    let expected: Vec<(i64, String)> = [(2, "a2"), (3, "n"), (4, "b2"), (5, "c1")].iter().map(|(o, v)| (*o, v.to_string())).collect();
    assert_eq!(seen, expected);
    assert_eq!(marks(&log, "c", 0).await, Watermarks { low: 0, high: 6 }, "compaction leaves gaps, never renumbers");
}

#[tokio::test]
async fn a_waiting_consumer_wakes_on_append_and_calls_after_shutdown_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    create(&log, TopicSpec::new("t", 1)).await;
    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&[(tp("t", 0), SeekTo::Latest)]).await.expect("assign");
    let waiting = tokio::spawn(async move {
        let event = timeout(WAIT, consumer.next_event()).await.expect("woken in time").expect("event");
        (consumer, event)
    });
    tokio::time::sleep(Duration::from_millis(20)).await; // let it start waiting
    send(&log, Record::new("t", "wake")).await;
    let (mut consumer, event) = waiting.await.expect("join");
    assert!(matches!(event, ConsumerEvent::Record(r) if r.payload == "wake"));

    let producer = log.producer().expect("producer");
    let admin = log.admin();
    let pending = tokio::spawn(async move { timeout(WAIT, consumer.next_event()).await.expect("returns on shutdown") });
    log.shutdown(WAIT).await.expect("shutdown");
    assert!(matches!(pending.await.expect("join"), Err(LogError::Shutdown)));
    assert!(matches!(producer.send(Record::new("t", "late")).await, Err(LogError::Shutdown)));
    assert!(matches!(admin.list_topics().await, Err(LogError::Shutdown)));
    assert!(matches!(log.producer(), Err(LogError::Shutdown)));
    assert!(matches!(log.consumer(ConsumerOptions::default()), Err(LogError::Shutdown)));
    assert!(matches!(log.run_retention_now(0), Err(LogError::Shutdown)));
    log.shutdown(WAIT).await.expect("a second shutdown is a no-op");
}

#[tokio::test]
async fn sends_are_validated_before_they_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(&config(dir.path()), 10).expect("open");
    create(&log, TopicSpec::new("t", 2)).await;
    let producer = log.producer().expect("producer");
    assert!(matches!(producer.send(Record::new("nope", "x")).await, Err(LogError::UnknownTopic { .. })));
    assert!(matches!(producer.send(Record::new("t", "x").with_partition(2)).await, Err(LogError::UnknownPartition { partition: 2, .. })));
    assert!(matches!(producer.send(Record::new("t", vec![0u8; 11])).await, Err(LogError::RecordTooLarge { size: 11, max: 10, .. })));
    assert!(matches!(log.admin().create_topic(&TopicSpec::new("t", 1)).await, Err(LogError::TopicExists { .. })));
    assert!(matches!(log.admin().create_topic(&TopicSpec::new("z", 0)).await, Err(LogError::Invalid { .. })));
    let keyed = send(&log, Record::new("t", "x").with_key("task-1")).await;
    assert_eq!(keyed.partition, crate::murmur2::partition_for_key(b"task-1", 2));
    log.admin().delete_topic("t").await.expect("delete");
    assert!(matches!(producer.send(Record::new("t", "x")).await, Err(LogError::UnknownTopic { .. })));
    assert!(log.admin().list_topics().await.expect("list").is_empty());
}

#[tokio::test]
async fn dropping_the_log_without_shutdown_stops_it_and_releases_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    create(&log, TopicSpec::new("t", 1)).await;
    let producer = log.producer().expect("producer");
    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&[(tp("t", 0), SeekTo::Earliest)]).await.expect("assign");
    let delivery = producer.send(Record::new("t", "x")).await.expect("accepted");
    timeout(WAIT, delivery).await.expect("in time").expect("durable");
    drop(log);
    assert!(matches!(producer.send(Record::new("t", "y")).await, Err(LogError::Shutdown)));
    assert!(matches!(consumer.next_event().await, Err(LogError::Shutdown)));
    // Handles that outlive the log hold no strong reference: the database can be reopened.
    let log = open(dir.path());
    assert_eq!(marks(&log, "t", 0).await, Watermarks { low: 0, high: 1 });
}

#[tokio::test]
async fn a_time_ordered_consumer_delivers_the_earliest_record_across_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    create(&log, TopicSpec::new("dense", 1)).await;
    create(&log, TopicSpec::new("sparse", 1)).await;
    // "dense" holds two records per tick, "sparse" one: round-robin would read "sparse"
    // twice as fast, and records of one tick would end up far apart.
    let producer = log.producer().expect("producer");
    for tick in 0..100i64 {
        for (topic, copies) in [("dense", 2), ("sparse", 1)] {
            for _ in 0..copies {
                producer.send(Record::new(topic, format!("{tick}")).with_timestamp(1_000 + tick)).await.expect("send").await.expect("durable");
            }
        }
    }
    let mut consumer = log.consumer(ConsumerOptions { time_ordered: true, ..Default::default() }).expect("consumer");
    consumer.assign(&[(tp("dense", 0), SeekTo::Earliest), (tp("sparse", 0), SeekTo::Earliest)]).await.expect("assign");
    let mut seen = Vec::new();
    for _ in 0..300 {
        let record = next_record(&mut consumer).await;
        seen.push((record.timestamp_ms, record.topic));
    }
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "timestamps never go back: {:?}", &seen[..12]);
    assert_eq!(seen.iter().filter(|(_, t)| t == "dense").count(), 200, "every record once");

    // A paused partition is skipped; resumed, it continues where it stopped.
    producer.send(Record::new("dense", "late").with_timestamp(5_000)).await.expect("send").await.expect("durable");
    producer.send(Record::new("sparse", "early").with_timestamp(4_000)).await.expect("send").await.expect("durable");
    consumer.pause(&[tp("sparse", 0)]).expect("pause");
    assert_eq!(next_record(&mut consumer).await.payload, Bytes::from("late"));
    consumer.resume(&[tp("sparse", 0)]).expect("resume");
    assert_eq!(next_record(&mut consumer).await.payload, Bytes::from("early"));
}
