//! What only the in-memory log can show cheaply: it runs on a paused clock (no sleeps, no
//! polling), and a commit of a member that lost its partitions changes nothing.

use std::time::Duration;

use crate::memory::MemoryLog;
use crate::{ConsumerEvent, ConsumerOptions, EventLog, LogError, Record, SeekTo, TopicPartition, TopicSpec};

#[tokio::test(start_paused = true)]
async fn a_waiting_reader_wakes_on_an_append_with_the_clock_paused() {
    let log = MemoryLog::new(1024);
    log.admin().create_topic(&TopicSpec::new("t", 2)).await.expect("create");
    let mut reader = log.consumer(ConsumerOptions::default()).expect("consumer");
    let partitions = [(TopicPartition::new("t", 0), SeekTo::Earliest), (TopicPartition::new("t", 1), SeekTo::Earliest)];
    reader.assign(&partitions).await.expect("assign");
    let writer = {
        let producer = log.producer().expect("producer");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            producer.send(Record::new("t", "late").with_partition(1)).await.expect("accepted").await.expect("durable")
        })
    };
    // An hour of paused time passes at once; a reader that polled on a timer would spin.
    let event = tokio::time::timeout(Duration::from_secs(7200), reader.next_event()).await.expect("woken").expect("event");
    let ConsumerEvent::Record(record) = event else { panic!("expected a record, got {event:?}") };
    assert_eq!((record.partition, record.offset, &record.payload[..]), (1, 0, &b"late"[..]));
    assert_eq!(writer.await.expect("writer").offset, 0);
}

#[tokio::test]
async fn a_transaction_of_a_member_that_lost_its_partition_writes_nothing() {
    let log = MemoryLog::new(1024);
    log.admin().create_topic(&TopicSpec::new("in", 1)).await.expect("create in");
    log.admin().create_topic(&TopicSpec::new("out", 1)).await.expect("create out");
    let options = ConsumerOptions { group: Some("g".into()), ..Default::default() };
    let mut first = log.consumer(options.clone()).expect("first");
    first.subscribe(&["in".to_string()]).expect("subscribe");
    assert_eq!(first.next_event().await.expect("assigned"), ConsumerEvent::Assigned(vec![TopicPartition::new("in", 0)]));
    let stale = first.group_metadata().expect("member");
    // Leaving hands the partition to the next member: the first one's metadata is stale.
    first.close().await.expect("leave");
    let mut second = log.consumer(options).expect("second");
    second.subscribe(&["in".to_string()]).expect("subscribe");
    assert!(matches!(second.next_event().await.expect("assigned"), ConsumerEvent::Assigned(_)));

    let producer = log.transactional_producer("tx").expect("transactional producer");
    let mut txn = producer.begin().await.expect("begin");
    txn.send(Record::new("out", "outcome")).await.expect("buffered");
    let refused = txn.commit_with_offsets(&[(TopicPartition::new("in", 0), 1)], Some(&stale)).await;
    assert!(matches!(refused, Err(LogError::NotAssigned { .. })), "{refused:?}");
    let marks = log.admin().watermarks(&TopicPartition::new("out", 0)).await.expect("watermarks");
    assert_eq!(marks.high, 0, "the refused transaction's record is not in the log");
    assert_eq!(second.committed(&[TopicPartition::new("in", 0)]).await.expect("committed"), vec![None]);
}
