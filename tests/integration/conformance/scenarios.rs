//! The conformance scenarios: each takes a [`Harness`] and asserts one thing users rely on.
//! `tests/integration/conformance.rs` runs every scenario once per backend.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use agentlog::log::murmur2::partition_for_key;
use agentlog::log::{ConsumerEvent, ConsumerOptions, LogError, Record, SeekTo, TopicPartition, TopicSpec, lag};
use agentlog::topics::{self, TopicsError};

use super::harness::{Harness, TestRegistry, WITHIN, agentlog_bin, create_task_topics, read_records, read_until_marker, unique};

fn assign_all(topic: &str, partitions: i32, to: SeekTo) -> Vec<(TopicPartition, SeekTo)> {
    (0..partitions).map(|p| (TopicPartition::new(topic, p), to)).collect()
}

pub async fn per_key_order_is_kept(h: &mut Harness) {
    let topic = h.topic(4).await;
    let producer = h.log().producer().expect("producer");
    let mut deliveries = Vec::new();
    for seq in 0..400u32 {
        let key = format!("key-{}", seq % 10);
        let record = Record::new(&topic, Bytes::from(seq.to_string())).with_key(Bytes::from(key));
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    for d in deliveries {
        d.await.expect("durable");
    }
    let mut consumer = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&assign_all(&topic, 4, SeekTo::Earliest)).await.expect("assign");
    let records = read_records(consumer.as_mut(), 400, WITHIN).await;
    let mut per_key: BTreeMap<Bytes, Vec<u32>> = BTreeMap::new();
    let mut partition_of: HashMap<Bytes, i32> = HashMap::new();
    for r in &records {
        let key = r.key.clone().expect("keyed record");
        let seq: u32 = std::str::from_utf8(&r.payload).expect("utf8").parse().expect("seq");
        per_key.entry(key.clone()).or_default().push(seq);
        assert_eq!(*partition_of.entry(key).or_insert(r.partition), r.partition, "a key moved partitions");
    }
    assert_eq!(per_key.len(), 10);
    for (key, seqs) in per_key {
        assert_eq!(seqs.len(), 40, "key {key:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "key {key:?} out of order: {seqs:?}");
    }
}

pub async fn keys_land_on_kafka_murmur2_partitions(h: &mut Harness) {
    let topic = h.topic(6).await;
    for i in 0..60 {
        let key = format!("task-{i}");
        let position = h.produce(Record::new(&topic, "x").with_key(Bytes::from(key.clone()))).await;
        assert_eq!(position.partition, partition_for_key(key.as_bytes(), 6), "key {key}");
    }
}

pub async fn headers_round_trip(h: &mut Harness) {
    let topic = h.topic(1).await;
    let record = Record::new(&topic, "payload")
        .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .with_header("dup", "first")
        .with_header("dup", "second")
        .with_header("empty", Bytes::new())
        .with_header("binary", Bytes::from_static(&[0, 255, 1, 254]));
    let sent = record.headers.clone();
    h.produce(record).await;
    let mut consumer = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&assign_all(&topic, 1, SeekTo::Earliest)).await.expect("assign");
    let got = read_records(consumer.as_mut(), 1, WITHIN).await.remove(0);
    assert_eq!(got.headers, sent);
    assert_eq!(&got.payload[..], b"payload");
    assert_eq!(got.header("dup"), Some(&Bytes::from("first")));
}

/// Two members split the partitions; when one leaves, the other owns everything again
/// within a bounded time, and records produced afterwards reach it.
pub async fn group_members_split_partitions_and_failover(h: &mut Harness) {
    let topic = h.topic(4).await;
    let group = unique("g");
    let spawn_member = |name: &'static str| {
        let mut consumer =
            h.log().consumer(ConsumerOptions { group: Some(group.clone()), client_id: Some(name.into()), ..Default::default() }).expect("consumer");
        consumer.subscribe(std::slice::from_ref(&topic)).expect("subscribe");
        let (assignment_tx, assignment_rx) = watch::channel(Vec::<TopicPartition>::new());
        let (records_tx, records_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    event = consumer.next_event() => match event.expect("member event") {
                        ConsumerEvent::Record(r) => { let _ = records_tx.send(r); }
                        other => {
                            eprintln!("member {name}: {other:?} -> {:?}", consumer.assignment());
                            let _ = assignment_tx.send(consumer.assignment());
                        }
                    }
                }
            }
            consumer.close().await.expect("close");
        });
        (assignment_rx, records_rx, stop_tx, task)
    };
    let wait_for = |rx: watch::Receiver<Vec<TopicPartition>>, n: usize| async move {
        let mut rx = rx;
        tokio::time::timeout(WITHIN, rx.wait_for(|a| a.len() == n)).await.expect("assignment in time").expect("member alive").clone()
    };

    let (a_assign, mut a_records, a_stop, a_task) = spawn_member("a");
    wait_for(a_assign.clone(), 4).await;
    let (b_assign, _b_records, b_stop, b_task) = spawn_member("b");
    let (a_parts, b_parts) = tokio::join!(wait_for(a_assign.clone(), 2), wait_for(b_assign.clone(), 2));
    let mut all: Vec<TopicPartition> = a_parts.iter().chain(&b_parts).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "the members must split the 4 partitions: a={a_parts:?} b={b_parts:?}");

    let left = Instant::now();
    b_stop.send(()).expect("stop b");
    b_task.await.expect("b closed");
    wait_for(a_assign.clone(), 4).await;
    let moved_after = left.elapsed();
    eprintln!("{:?}: partitions moved {moved_after:?} after a member left", h.backend);
    assert!(moved_after < Duration::from_secs(10), "failover took {moved_after:?}");

    for p in 0..4 {
        h.produce(Record::new(&topic, format!("after-{p}")).with_partition(p)).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while seen.len() < 4 {
        let r = tokio::time::timeout_at(deadline, a_records.recv()).await.expect("records after failover").expect("a alive");
        if r.payload.starts_with(b"after-") {
            seen.insert(r.partition);
        }
    }
    a_stop.send(()).expect("stop a");
    a_task.await.expect("a closed");
}

/// Records read but not committed come back to the next member of the group.
pub async fn uncommitted_records_are_delivered_again(h: &mut Harness) {
    let topic = h.topic(1).await;
    for i in 0..10 {
        h.produce(Record::new(&topic, format!("r{i}"))).await;
    }
    let group = unique("g");
    let tp = TopicPartition::new(&topic, 0);
    let mut first = h.log().consumer(ConsumerOptions { group: Some(group.clone()), client_id: None, ..Default::default() }).expect("consumer");
    first.subscribe(std::slice::from_ref(&topic)).expect("subscribe");
    let got = read_records(first.as_mut(), 5, WITHIN).await;
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    first.commit(&[(tp.clone(), 3)]).await.expect("commit");
    assert_eq!(first.committed(std::slice::from_ref(&tp)).await.expect("committed"), vec![Some(3)]);
    first.close().await.expect("close");

    let mut second = h.log().consumer(ConsumerOptions { group: Some(group), client_id: None, ..Default::default() }).expect("consumer");
    second.subscribe(std::slice::from_ref(&topic)).expect("subscribe");
    let again = read_records(second.as_mut(), 7, WITHIN).await;
    assert_eq!(again.iter().map(|r| r.offset).collect::<Vec<_>>(), (3..10).collect::<Vec<_>>());
    second.close().await.expect("close");
}

/// Committed offsets are durable: a second `agentlog consume` process of the same group
/// continues where the first one committed (a real process restart on both backends).
pub async fn committed_offsets_survive_a_process_restart(h: &mut Harness) {
    let topic = h.topic(1).await;
    for i in 0..10 {
        h.produce(Record::new(&topic, format!("r{i}"))).await;
    }
    let group = unique("g");
    h.release().await;
    let run = |max: u32| {
        let output = std::process::Command::new(agentlog_bin())
            .args(["consume", "--topic", &topic, "--group", &group, "--max", &max.to_string(), "--commit"])
            .envs(h.child_env())
            .output()
            .expect("run agentlog consume");
        assert!(output.status.success(), "agentlog consume failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line")["offset"].as_i64().expect("offset"))
            .collect::<Vec<i64>>()
    };
    assert_eq!(run(4), vec![0, 1, 2, 3]);
    assert_eq!(run(4), vec![4, 5, 6, 7]);
    h.reopen();
    let committed = h.log().admin().committed_offsets(&group, &[TopicPartition::new(&topic, 0)]).await.expect("committed");
    assert_eq!(committed, vec![Some(8)]);
    let lags = lag::group_lag(h.log().admin().as_ref(), &group, &topic).await.expect("lag");
    assert_eq!(lags[0].lag, 2);
}

/// An aborted transaction leaves nothing visible; a committed one makes its records and the
/// consumed offsets visible together.
pub async fn transactions_are_all_or_nothing(h: &mut Harness) {
    let input = h.topic(1).await;
    let output = h.topic(1).await;
    h.produce(Record::new(&input, "command")).await;
    let group = unique("g");
    let in_tp = TopicPartition::new(&input, 0);

    let mut member = h.log().consumer(ConsumerOptions { group: Some(group.clone()), client_id: None, ..Default::default() }).expect("consumer");
    member.subscribe(std::slice::from_ref(&input)).expect("subscribe");
    let command = read_records(member.as_mut(), 1, WITHIN).await.remove(0);

    let txp = h.log().transactional_producer(&unique("tx")).expect("transactional producer");
    let mut aborted = txp.begin().await.expect("begin");
    for i in 0..3 {
        aborted.send(Record::new(&output, format!("aborted-{i}"))).await.expect("send");
    }
    aborted.abort().await.expect("abort");

    let mut committed = txp.begin().await.expect("begin");
    for i in 0..3 {
        committed.send(Record::new(&output, format!("committed-{i}"))).await.expect("send");
    }
    let metadata = member.group_metadata().expect("group member metadata");
    let positions = committed.commit_with_offsets(&[(in_tp.clone(), command.offset + 1)], Some(&metadata)).await.expect("commit");
    assert_eq!(positions.len(), 3);
    h.produce(Record::new(&output, "marker")).await;

    let mut reader = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    reader.assign(&assign_all(&output, 1, SeekTo::Earliest)).await.expect("assign");
    let seen: Vec<String> =
        read_until_marker(reader.as_mut(), b"marker", WITHIN).await.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    assert_eq!(seen, vec!["committed-0", "committed-1", "committed-2"]);
    let offsets = h.log().admin().committed_offsets(&group, std::slice::from_ref(&in_tp)).await.expect("offsets");
    assert_eq!(offsets, vec![Some(command.offset + 1)]);

    // A record refused inside a transaction fails that send and nothing of it commits.
    let mut failing = txp.begin().await.expect("begin");
    failing.send(Record::new(&output, "would-be-partial")).await.expect("send");
    let err = failing.send(Record::new(&output, vec![0u8; 200_000])).await.expect_err("oversized");
    assert!(matches!(err, LogError::RecordTooLarge { .. }), "{err}");
    failing.abort().await.expect("abort");
    h.produce(Record::new(&output, "marker-2")).await;
    let after: Vec<String> =
        read_until_marker(reader.as_mut(), b"marker-2", WITHIN).await.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    assert_eq!(after, Vec::<String>::new(), "nothing of the aborted transaction may be visible");
    member.close().await.expect("close");
}

pub async fn seek_by_timestamp_and_offset(h: &mut Harness) {
    let topic = h.topic(1).await;
    let tp = TopicPartition::new(&topic, 0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let base = now - 100_000;
    for i in 0..10 {
        h.produce(Record::new(&topic, format!("r{i}")).with_timestamp(base + i * 1000)).await;
    }
    let admin = h.log().admin();
    assert_eq!(admin.offset_for_timestamp(&tp, base + 3500).await.expect("lookup"), Some(4));
    assert_eq!(admin.offset_for_timestamp(&tp, base).await.expect("lookup"), Some(0));
    assert_eq!(admin.offset_for_timestamp(&tp, now + 60_000).await.expect("lookup"), None);
    // And back: the timestamp of the record at an offset (a backlog's age), none at the end.
    assert_eq!(admin.timestamp_at(&tp, 4).await.expect("peek"), Some(base + 4000));
    assert_eq!(admin.timestamp_at(&tp, 0).await.expect("peek"), Some(base));
    assert_eq!(admin.timestamp_at(&tp, 9).await.expect("peek"), Some(base + 9000));
    assert_eq!(admin.timestamp_at(&tp, 10).await.expect("peek"), None, "the high watermark has no record");
    assert!(admin.timestamp_at(&TopicPartition::new(&topic, 1), 0).await.is_err(), "a partition the topic lacks");

    let mut consumer = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&[(tp.clone(), SeekTo::Timestamp(base + 3500))]).await.expect("assign");
    let got = read_records(consumer.as_mut(), 2, WITHIN).await;
    assert_eq!((got[0].offset, got[0].timestamp_ms), (4, base + 4000));
    assert_eq!(got[1].offset, 5);

    consumer.seek(&tp, SeekTo::Offset(1)).await.expect("seek offset");
    assert_eq!(read_records(consumer.as_mut(), 1, WITHIN).await[0].offset, 1);
    consumer.seek(&tp, SeekTo::Timestamp(base + 8000)).await.expect("seek time");
    assert_eq!(read_records(consumer.as_mut(), 1, WITHIN).await[0].offset, 8);
    consumer.seek(&tp, SeekTo::Earliest).await.expect("seek earliest");
    assert_eq!(read_records(consumer.as_mut(), 1, WITHIN).await[0].offset, 0);
}

pub async fn pause_holds_a_partition_back_until_resume(h: &mut Harness) {
    let topic = h.topic(2).await;
    let p0 = TopicPartition::new(&topic, 0);
    let mut consumer = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&assign_all(&topic, 2, SeekTo::Earliest)).await.expect("assign");
    consumer.pause(std::slice::from_ref(&p0)).expect("pause");
    for i in 0..5 {
        h.produce(Record::new(&topic, format!("p0-{i}")).with_partition(0)).await;
        h.produce(Record::new(&topic, format!("p1-{i}")).with_partition(1)).await;
    }
    h.produce(Record::new(&topic, "marker").with_partition(1)).await;
    let before = read_until_marker(consumer.as_mut(), b"marker", WITHIN).await;
    assert!(before.iter().all(|r| r.partition == 1), "a paused partition delivered records");
    assert_eq!(before.len(), 5);
    consumer.resume(std::slice::from_ref(&p0)).expect("resume");
    let after = read_records(consumer.as_mut(), 5, WITHIN).await;
    assert!(after.iter().all(|r| r.partition == 0));
    assert_eq!(after.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
}

pub async fn watermarks_and_lag(h: &mut Harness) {
    let topic = h.topic(2).await;
    for i in 0..10 {
        h.produce(Record::new(&topic, format!("r{i}")).with_partition(0)).await;
    }
    let admin = h.log().admin();
    let marks = admin.watermarks(&TopicPartition::new(&topic, 0)).await.expect("watermarks");
    assert_eq!((marks.low, marks.high), (0, 10));
    let empty = admin.watermarks(&TopicPartition::new(&topic, 1)).await.expect("watermarks");
    assert_eq!((empty.low, empty.high), (0, 0));

    let group = unique("g");
    let mut member = h.log().consumer(ConsumerOptions { group: Some(group.clone()), client_id: None, ..Default::default() }).expect("consumer");
    member.subscribe(std::slice::from_ref(&topic)).expect("subscribe");
    read_records(member.as_mut(), 4, WITHIN).await;
    member.commit(&[(TopicPartition::new(&topic, 0), 4)]).await.expect("commit");
    let lags = lag::group_lag(admin.as_ref(), &group, &topic).await.expect("lag");
    assert_eq!(lags[0].committed, Some(4));
    assert_eq!(lags[0].lag, 6);
    assert_eq!(lags[1].lag, 0);
    member.close().await.expect("close");
}

pub async fn unknown_topic_is_a_typed_error(h: &mut Harness) {
    let missing = unique("missing");
    let producer = h.log().producer().expect("producer");
    let err = match producer.send(Record::new(&missing, "x")).await {
        Ok(delivery) => delivery.await.expect_err("unknown topic must fail"),
        Err(e) => e,
    };
    assert!(matches!(&err, LogError::UnknownTopic { topic } if topic == &missing), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");
    let err = h.log().admin().describe_topic(&missing).await.expect_err("describe unknown");
    assert!(matches!(err, LogError::UnknownTopic { .. }), "{err:?}");
    let mut consumer = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    let err = consumer.assign(&[(TopicPartition::new(&missing, 0), SeekTo::Earliest)]).await.expect_err("assign unknown");
    assert!(matches!(err, LogError::UnknownTopic { .. }), "{err:?}");
}

pub async fn oversized_record_is_refused_and_nothing_written(h: &mut Harness) {
    let topic = h.topic(1).await;
    let tp = TopicPartition::new(&topic, 0);
    let producer = h.log().producer().expect("producer");
    let max = h.config.log.max_record_bytes;
    let err = match producer.send(Record::new(&topic, vec![7u8; max + 1])).await {
        Ok(_) => panic!("an oversized record was accepted"),
        Err(e) => e,
    };
    match &err {
        LogError::RecordTooLarge { topic: t, size, max: m } => {
            assert_eq!((t, *size, *m), (&topic, max + 1, max));
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    // Exactly at the limit is fine, and the refused record left no trace.
    let position = h.produce(Record::new(&topic, vec![7u8; max])).await;
    assert_eq!(position.offset, 0);
    assert_eq!(h.log().admin().watermarks(&tp).await.expect("watermarks").high, 1);
}

pub async fn admin_creates_describes_and_deletes(h: &mut Harness) {
    let admin = h.log().admin();
    let name = unique("admin");
    let mut spec = TopicSpec::new(&name, 3);
    spec.retention_ms = Some(3_600_000);
    admin.create_topic(&spec).await.expect("create");
    let err = admin.create_topic(&spec).await.expect_err("exists");
    assert!(matches!(err, LogError::TopicExists { .. }), "{err:?}");
    let described = admin.describe_topic(&name).await.expect("describe");
    assert_eq!(described.partitions, 3);
    assert_eq!(described.retention_ms, Some(3_600_000));
    assert!(admin.list_topics().await.expect("list").contains(&name));
    admin.delete_topic(&name).await.expect("delete");
    let deadline = Instant::now() + WITHIN;
    loop {
        match admin.describe_topic(&name).await {
            Err(LogError::UnknownTopic { .. }) => break,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("topic still there after delete: {other:?}"),
        }
    }
}

/// `topics apply` creates what is missing and reports drift naming the topic and difference.
pub async fn topics_apply_creates_and_reports_drift(h: &mut Harness) {
    let admin = h.log().admin();
    let fresh = TopicSpec::new(unique("catalog"), 2);
    let applied = topics::apply(admin.as_ref(), [&fresh]).await.expect("apply creates");
    assert_eq!(applied, vec![topics::Applied::Created(fresh.name.clone())]);
    assert_eq!(topics::apply(admin.as_ref(), [&fresh]).await.expect("idempotent"), vec![topics::Applied::Unchanged(fresh.name.clone())]);

    let wants_more = TopicSpec { partitions: 4, ..fresh.clone() };
    match topics::apply(admin.as_ref(), [&wants_more]).await {
        Err(TopicsError::Drift(drift)) => {
            assert_eq!(drift.len(), 1, "{drift:?}");
            assert_eq!(drift[0].topic, fresh.name);
            assert!(drift[0].difference.contains("has 2 partitions, the catalog wants 4"), "{}", drift[0]);
        }
        other => panic!("expected drift, got {other:?}"),
    }
    let wants_compact = TopicSpec { cleanup_policy: agentlog::log::CleanupPolicy::Compact, ..fresh.clone() };
    let err = topics::apply(admin.as_ref(), [&wants_compact]).await.expect_err("drift");
    assert!(err.to_string().contains("cleanup policy is delete, the catalog wants compact"), "{err}");
}

/// A consumer that is already waiting receives every record appended while it waits, even
/// when one append batch spans several partitions (a lost wake-up would strand the batch).
/// Each round appends one record to each of three partitions while the consumer waits, and
/// must see all three before the next round.
pub async fn a_waiting_consumer_gets_every_record(h: &mut Harness) {
    let topic = h.topic(6).await;
    let mut consumer = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&assign_all(&topic, 6, SeekTo::Earliest)).await.expect("assign");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                event = consumer.next_event() => {
                    if let ConsumerEvent::Record(r) = event.expect("consume") {
                        let _ = tx.send((r.partition, r.offset));
                    }
                }
            }
        }
        consumer.close().await.expect("close");
    });
    let producer = h.log().producer().expect("producer");
    let rounds = 2_000;
    for round in 0..rounds {
        let mut deliveries = Vec::with_capacity(3);
        for p in 0..3 {
            let partition = (round + p) % 6;
            deliveries.push(producer.send(Record::new(&topic, "v").with_partition(partition)).await.expect("accepted"));
        }
        for d in deliveries {
            d.await.expect("durable");
        }
        for _ in 0..3 {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("reader stopped"),
                Err(_) => panic!("round {round}: a record appended while the consumer waited never reached it"),
            }
        }
    }
    stop_tx.send(()).expect("stop reader");
    reader.await.expect("reader");
}

/// Records that cannot be decoded never stop a consumer: each goes to the DLQ with the reason,
/// and the good records around them are read. Uses the built-in registry on a real port.
pub async fn undecodable_events_are_dead_lettered(h: &mut Harness) {
    use agentlog::events::reader::{DLQ_ERROR, DLQ_REASON, DLQ_SOURCE, EventReader, ReadOutcome};
    use agentlog::events::{Lane, Meta, TaskSubmitted};

    let registry = TestRegistry::start(h.log()).await;

    let topic = h.topic(1).await;
    let dlq = h.topic(1).await;
    let codec = registry.codec();
    let task = |id: &str| TaskSubmitted::new(Meta::new(format!("e-{id}"), "t", "test"), id, "echo", Lane::Normal, b"{}".to_vec());
    let good = codec.encode(&topic, &task("first")).await.expect("encode");
    let mut unknown_id = vec![0, 0x00, 0x0f, 0x42, 0x3f];
    unknown_id.extend_from_slice(&good[5..]);
    let mut trailing_garbage = good.clone();
    trailing_garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let payloads: Vec<Vec<u8>> = vec![
        good.clone(),
        vec![7, 0, 0, 0, 1, 2, 3],
        vec![0, 0, 0],
        unknown_id,
        good[..good.len() / 2].to_vec(),
        trailing_garbage,
        codec.encode(&topic, &task("last")).await.expect("encode"),
    ];
    for (i, payload) in payloads.iter().enumerate() {
        h.produce(Record::new(&topic, payload.clone()).with_key(Bytes::from(format!("k{i}")))).await;
    }

    let mut consumer = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&assign_all(&topic, 1, SeekTo::Earliest)).await.expect("assign");
    let mut reader = EventReader::<TaskSubmitted>::new(consumer, codec, h.log().producer().expect("producer"), &dlq);
    let mut outcomes = Vec::new();
    while outcomes.len() < payloads.len() {
        match tokio::time::timeout(WITHIN, reader.next()).await.expect("outcome in time").expect("read") {
            ReadOutcome::Event { event, .. } => outcomes.push(format!("event:{}", event.task_id)),
            ReadOutcome::DeadLettered { error, .. } => outcomes.push(format!("dlq:{}", agentlog::events::reader::error_kind(&error))),
            ReadOutcome::Rebalance(_) => {}
        }
    }
    assert_eq!(outcomes, vec!["event:first", "dlq:wrong_magic_byte", "dlq:truncated", "dlq:unknown_schema_id", "dlq:truncated", "dlq:corrupt", "event:last"]);

    let mut letters = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    letters.assign(&assign_all(&dlq, 1, SeekTo::Earliest)).await.expect("assign");
    let dead = read_records(letters.as_mut(), 5, WITHIN).await;
    assert_eq!(dead[0].payload, Bytes::from(payloads[1].clone()), "the original bytes are kept");
    assert_eq!(dead[0].key, Some(Bytes::from("k1")));
    assert_eq!(dead[0].header(DLQ_ERROR), Some(&Bytes::from("wrong_magic_byte")));
    assert!(String::from_utf8_lossy(dead[0].header(DLQ_REASON).expect("reason")).contains("magic byte"));
    assert_eq!(dead[0].header(DLQ_SOURCE), Some(&Bytes::from(format!("{topic}/0/1"))));
    assert_eq!(dead[2].header(DLQ_ERROR), Some(&Bytes::from("unknown_schema_id")));

    registry.stop().await;
}

/// A worker takes tasks from its lane topics, runs them, writes each outcome to
/// `task.results`, and commits exactly what is done.
pub async fn worker_runs_tasks_and_commits_after_outcomes(h: &mut Harness) {
    use agentlog::agent::runtime::build;
    use agentlog::agent::{AgentTypeConfig, WorkerSettings, run_worker};
    use agentlog::events::{Lane, Meta, TaskCompleted, TaskSubmitted};

    let registry = TestRegistry::start(h.log()).await;
    let codec = registry.codec();

    let prefix = format!("{}.", unique("p"));
    let agent_type = unique("echo");
    let agent: AgentTypeConfig = toml::from_str("runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 4\npartitions = 2\n").expect("agent type");
    let admin = h.log().admin();
    let lane_topics = agent.lane_topics(&agent_type, &prefix);
    for topic in &lane_topics {
        admin.create_topic(&TopicSpec::new(topic, 2)).await.expect("lane topic");
    }
    create_task_topics(h.log(), &prefix, 2).await;

    let producer = h.log().producer().expect("producer");
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..40 {
        let lane = if i % 4 == 0 { Lane::High } else { Lane::Normal };
        let task_id = format!("task-{i}");
        let input = format!("{{\"n\":{i}}}").into_bytes();
        let mut task = TaskSubmitted::new(Meta::new(format!("e{i}"), "t", "test"), &task_id, &agent_type, lane, input.clone());
        task.ordering_key = Some(format!("k{}", i % 5));
        let topic = format!("{prefix}tasks.{agent_type}.{}", lane.as_str());
        let payload = codec.encode(&topic, &task).await.expect("encode");
        producer.send(Record::new(&topic, payload).with_key(Bytes::from(task_id.clone()))).await.expect("accepted").await.expect("durable");
        expected.insert(task_id, input);
    }

    let settings = WorkerSettings {
        agent_type: agent_type.clone(),
        agent: agent.clone(),
        topic_prefix: prefix.clone(),
        worker_id: "worker-1".into(),
        prefetch_per_lane: 8,
        drain_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(1),
        transaction_deadline: agentlog::agent::worker::TRANSACTION_DEADLINE,
        callback: Default::default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let runtime = build(&agent.runtime, Duration::from_secs(5)).expect("echo agent");
    let worker = tokio::spawn(run_worker(h.log().clone(), codec.clone(), runtime, settings, stop.clone()));

    let results = format!("{prefix}task.results");
    let mut reader = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    reader.assign(&assign_all(&results, 2, SeekTo::Earliest)).await.expect("assign");
    let mut outputs = std::collections::BTreeMap::new();
    while outputs.len() < expected.len() {
        let record = read_records(reader.as_mut(), 1, WITHIN).await.remove(0);
        let (_, done) = codec.decode::<TaskCompleted>(&record.payload).await.expect("a TaskCompleted");
        assert_eq!(record.key.as_deref(), Some(done.task_id.as_bytes()), "outcomes are keyed by task id");
        outputs.insert(done.task_id.clone(), done.output);
    }
    assert_eq!(outputs, expected, "every task completed once with its input echoed");

    stop.cancel();
    let report = worker.await.expect("worker task").expect("worker");
    assert_eq!((report.completed, report.failed, report.dead_lettered, report.undecodable, report.abandoned), (40, 0, 0, 0, 0));
    let group = agentlog::agent::topics::TaskTopics::new(prefix.clone()).worker_group(&agent_type);
    let mut committed = 0;
    for topic in &lane_topics {
        let parts: Vec<TopicPartition> = (0..2).map(|p| TopicPartition::new(topic, p)).collect();
        committed += admin.committed_offsets(&group, &parts).await.expect("committed").into_iter().flatten().sum::<i64>();
    }
    assert_eq!(committed, 40, "the group committed every finished task and nothing more");

    registry.stop().await;
}

/// Worker groups took the topic prefix (`agents.<type>` became `<prefix>agents.<type>`). An
/// upgraded worker must start where the group's former name committed, not at the start of
/// its lanes: tasks done before the upgrade never run again, and those after it all run.
pub async fn an_upgraded_worker_continues_from_the_former_group_name(h: &mut Harness) {
    use agentlog::agent::runtime::build;
    use agentlog::agent::topics::TaskTopics;
    use agentlog::agent::{AgentTypeConfig, WorkerSettings, run_worker};
    use agentlog::events::{Lane, Meta, TaskCompleted, TaskSubmitted};

    let registry = TestRegistry::start(h.log()).await;
    let codec = registry.codec();
    let prefix = format!("{}.", unique("p"));
    let agent_type = unique("echo");
    let agent: AgentTypeConfig =
        toml::from_str("runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 4\npartitions = 1\nlanes = [\"normal\"]\n").expect("agent type");
    let topics = TaskTopics::new(prefix.clone());
    let lane = topics.lane(&agent_type, Lane::Normal);
    h.log().admin().create_topic(&TopicSpec::new(&lane, 1)).await.expect("lane topic");
    create_task_topics(h.log(), &prefix, 1).await;
    let producer = h.log().producer().expect("producer");
    let submit = |task_id: String| {
        let (codec, producer, lane, agent_type) = (codec.clone(), producer.clone(), lane.clone(), agent_type.clone());
        async move {
            let task = TaskSubmitted::new(Meta::new(format!("e-{task_id}"), "t", "test"), &task_id, &agent_type, Lane::Normal, b"{}".to_vec());
            let payload = codec.encode(&lane, &task).await.expect("encode");
            producer.send(Record::new(&lane, payload).with_key(Bytes::from(task_id))).await.expect("accepted").await.expect("durable");
        }
    };

    // Before the upgrade: ten tasks, done and committed by the group's former name.
    for i in 0..10 {
        submit(format!("before-{i}")).await;
    }
    let former = topics.legacy_worker_group(&agent_type).expect("a prefix gives the group another name");
    assert_eq!(former, format!("agents.{agent_type}"));
    let mut old_worker = h.log().consumer(ConsumerOptions { group: Some(former), client_id: None, ..Default::default() }).expect("consumer");
    old_worker.subscribe(std::slice::from_ref(&lane)).expect("subscribe");
    assert_eq!(read_records(old_worker.as_mut(), 10, WITHIN).await.len(), 10);
    old_worker.commit(&[(TopicPartition::new(&lane, 0), 10)]).await.expect("commit");
    old_worker.close().await.expect("close");
    // After it: five more.
    for i in 0..5 {
        submit(format!("after-{i}")).await;
    }

    let settings = WorkerSettings {
        agent_type: agent_type.clone(),
        agent,
        topic_prefix: prefix.clone(),
        worker_id: "upgraded".into(),
        prefetch_per_lane: 8,
        drain_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(1),
        transaction_deadline: agentlog::agent::worker::TRANSACTION_DEADLINE,
        callback: Default::default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let runtime = build(&settings.agent.runtime, Duration::from_secs(5)).expect("echo agent");
    let worker = tokio::spawn(run_worker(h.log().clone(), codec.clone(), runtime, settings, stop.clone()));
    let mut reader = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    reader.assign(&assign_all(&topics.results(), 1, SeekTo::Earliest)).await.expect("assign");
    let mut done = Vec::new();
    for record in read_records(reader.as_mut(), 5, WITHIN).await {
        done.push(codec.decode::<TaskCompleted>(&record.payload).await.expect("a TaskCompleted").1.task_id);
    }
    done.sort();
    assert_eq!(done, (0..5).map(|i| format!("after-{i}")).collect::<Vec<_>>(), "only the tasks after the upgrade ran");
    stop.cancel();
    let report = worker.await.expect("worker task").expect("worker");
    assert_eq!(report.completed, 5, "no task the former group committed ran again");
    let committed = h.log().admin().committed_offsets(&topics.worker_group(&agent_type), &[TopicPartition::new(&lane, 0)]).await.expect("committed");
    assert_eq!(committed, vec![Some(15)], "the group's own commits continue from the former name's");
    registry.stop().await;
}

/// The schema registry replays its topic to the end even when the last offset is never
/// delivered: another client's transaction on the topic (on Kafka its commit marker takes an
/// offset, after the record, which the registry skips as not its own). The replay used to wait for a record at the high watermark
/// − 1 and fail after 30 s; it now counts the consumer's position, as `log::follow` does.
pub async fn the_registry_replays_past_offsets_that_are_never_delivered(h: &mut Harness) {
    use agentlog::registry::Registry;
    const SCHEMA: &str = r#"{"type":"record","name":"Replayed","namespace":"io.agentlog.test","fields":[{"name":"n","type":"long"}]}"#;
    let topic = format!("{}schemas", unique("p"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let first = Registry::open(h.log().clone(), &topic, shutdown.clone()).await.expect("registry");
    let id = first.register("replayed-value", SCHEMA).await.expect("register");
    first.close().await;

    // Committed, so it surely reaches the topic; keyed, as the compacted topic requires.
    let txp = h.log().transactional_producer(&unique("tx")).expect("transactional producer");
    let mut other = txp.begin().await.expect("begin");
    other.send(Record::new(&topic, "not a registry event").with_key(Bytes::from("other"))).await.expect("send");
    other.commit_with_offsets(&[], None).await.expect("commit");

    let again = tokio::time::timeout(Duration::from_secs(15), Registry::open(h.log().clone(), &topic, shutdown.clone()))
        .await
        .expect("the replay ends within 15 s")
        .expect("registry");
    assert_eq!(again.registered_id("replayed-value", SCHEMA).expect("lookup"), Some(id), "the replay applied the history");
    again.close().await;
}

/// An agent call longer than the consumer's max poll interval must not get the worker evicted
/// from its group: the worker keeps polling while the task runs, so after the call the
/// member still owns its partition and its commit lands. (librdkafka leaves the group when
/// the application stops polling for `max.poll.interval.ms`; here that is 3 s and the task
/// takes 7 s. The embedded log has no such limit; the scenario holds there trivially.)
pub async fn a_task_longer_than_max_poll_interval_does_not_evict_the_worker(h: &mut Harness) {
    use agentlog::agent::runtime::build;
    use agentlog::agent::{AgentTypeConfig, WorkerSettings, run_worker};
    use agentlog::events::{Lane, Meta, TaskCompleted, TaskSubmitted};

    // A log whose consumers must poll at least every 3 s (Kafka; ignored by the embedded log).
    let mut config = h.config.log.clone();
    config.kafka.consumer_properties.insert("max.poll.interval.ms".into(), "3000".into());
    // librdkafka refuses a max poll interval below the session timeout on every consumer.
    config.kafka.consumer_properties.insert("session.timeout.ms".into(), "3000".into());
    let log = if h.backend == agentlog::config::Backend::Kafka {
        agentlog::open::open_log(&config).expect("kafka with a short max poll interval")
    } else {
        h.log().clone()
    };

    let registry = TestRegistry::start(&log).await;
    let codec = registry.codec();

    let prefix = format!("{}.", unique("p"));
    let agent_type = unique("sleep");
    let agent: AgentTypeConfig =
        toml::from_str("runtime = { kind = \"builtin\", name = \"sleep\" }\nconcurrency = 1\npartitions = 1\nlanes = [\"normal\"]\ntimeout_ms = 60000\n")
            .expect("agent type");
    let admin = log.admin();
    let lane_topic = format!("{prefix}tasks.{agent_type}.normal");
    admin.create_topic(&TopicSpec::new(&lane_topic, 1)).await.expect("lane topic");
    create_task_topics(&log, &prefix, 1).await;
    let task = TaskSubmitted::new(Meta::new("e-long", "t", "test"), "long", &agent_type, Lane::Normal, br#"{"ms": 7000}"#.to_vec());
    let payload = codec.encode(&lane_topic, &task).await.expect("encode");
    log.producer().expect("producer").send(Record::new(&lane_topic, payload)).await.expect("accepted").await.expect("durable");

    let settings = WorkerSettings {
        agent_type: agent_type.clone(),
        agent: agent.clone(),
        topic_prefix: prefix.clone(),
        worker_id: "worker-long".into(),
        prefetch_per_lane: 1,
        drain_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(1),
        transaction_deadline: agentlog::agent::worker::TRANSACTION_DEADLINE,
        callback: Default::default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let runtime = build(&agent.runtime, Duration::from_secs(60)).expect("sleep agent");
    let worker = tokio::spawn(run_worker(log.clone(), codec.clone(), runtime, settings, stop.clone()));

    let results = format!("{prefix}task.results");
    let mut reader = log.consumer(ConsumerOptions::default()).expect("consumer");
    reader.assign(&assign_all(&results, 1, SeekTo::Earliest)).await.expect("assign");
    let record = read_records(reader.as_mut(), 1, WITHIN).await.remove(0);
    let (_, done) = codec.decode::<TaskCompleted>(&record.payload).await.expect("a TaskCompleted");
    assert_eq!(done.task_id, "long");
    assert!(done.duration_ms >= 7000, "the call really outlasted the poll interval: {} ms", done.duration_ms);

    // The commit follows the outcome; once it is there, the member was never evicted (an
    // evicted member's commit is refused and the task would be delivered again).
    let tp = TopicPartition::new(&lane_topic, 0);
    let group = agentlog::agent::topics::TaskTopics::new(prefix.clone()).worker_group(&agent_type);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let committed = admin.committed_offsets(&group, std::slice::from_ref(&tp)).await.expect("committed");
        if committed == vec![Some(1)] {
            break;
        }
        assert!(Instant::now() < deadline, "the worker's commit never landed: {committed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let report = worker.await.expect("worker task").expect("worker");
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");

    registry.stop().await;
}

/// Every topic a group reads is spread evenly over its members: a worker type's lanes are
/// separate topics, and a member holding all of the busy lane while another holds only idle
/// lanes leaves capacity unused (3 members × 4 lane topics × 6 partitions: 2 of each each).
pub async fn each_topic_spreads_evenly_over_the_members(h: &mut Harness) {
    let mut lanes = Vec::new();
    for _ in 0..4 {
        lanes.push(h.topic(6).await);
    }
    let group = unique("g");
    let mut members = Vec::new();
    for i in 0..3 {
        let mut consumer =
            h.log().consumer(ConsumerOptions { group: Some(group.clone()), client_id: Some(format!("m{i}")), ..Default::default() }).expect("consumer");
        consumer.subscribe(&lanes).expect("subscribe");
        members.push(consumer);
    }
    let balanced = |members: &Vec<Box<dyn agentlog::log::Consumer>>| {
        members.iter().all(|m| {
            let parts = m.assignment();
            parts.len() == 8 && lanes.iter().all(|lane| parts.iter().filter(|tp| &tp.topic == lane).count() == 2)
        })
    };
    // Assignments arrive while the members are polled; KIP-848 converges over a few heartbeats.
    let deadline = Instant::now() + WITHIN;
    while !balanced(&members) && Instant::now() < deadline {
        for m in members.iter_mut() {
            let _ = tokio::time::timeout(Duration::from_millis(100), m.next_event()).await;
        }
    }
    let seen: Vec<Vec<TopicPartition>> = members.iter().map(|m| m.assignment()).collect();
    assert!(balanced(&members), "each member must hold 2 partitions of each of the 4 topics: {seen:?}");
    for m in members {
        m.close().await.expect("close");
    }
}

/// A reader's position passes the end of a partition whose last offsets are a transaction's
/// commit marker, which is never delivered: that is how a catch-up knows it has read the
/// history (ending on silence never happens while other partitions keep receiving records).
pub async fn a_position_passes_a_closing_transaction_marker(h: &mut Harness) {
    let topic = h.topic(1).await;
    let tp = TopicPartition::new(&topic, 0);
    let txp = h.log().transactional_producer(&unique("tx")).expect("transactional producer");
    let mut transaction = txp.begin().await.expect("begin");
    for i in 0..3 {
        transaction.send(Record::new(&topic, format!("committed-{i}"))).await.expect("send");
    }
    transaction.commit_with_offsets(&[], None).await.expect("commit");
    let high = h.log().admin().watermarks(&tp).await.expect("watermarks").high;

    let mut reader = h.log().consumer(ConsumerOptions::default()).expect("consumer");
    reader.assign(&assign_all(&topic, 1, SeekTo::Earliest)).await.expect("assign");
    let records = read_records(reader.as_mut(), 3, WITHIN).await;
    assert_eq!(records.len(), 3);
    let position = |reader: &dyn agentlog::log::Consumer| reader.positions().into_iter().find(|(p, _)| p == &tp).map(|(_, o)| o);
    let deadline = Instant::now() + WITHIN;
    while position(reader.as_ref()).is_none_or(|o| o < high) && Instant::now() < deadline {
        // Polling lets the client handle the marker it fetched after the last record.
        let _ = tokio::time::timeout(Duration::from_millis(100), reader.next_event()).await;
    }
    assert!(
        position(reader.as_ref()).is_some_and(|o| o >= high),
        "{:?}: position {:?} never reached the high watermark {high} (last record at {})",
        h.backend,
        position(reader.as_ref()),
        records[2].offset
    );
    reader.close().await.expect("close");
}
