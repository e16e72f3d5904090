//! `agentlog produce` and `agentlog consume`: raw records, one JSON line each, for scripts
//! and tests that drive the log directly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::json;

use crate::log::{ConsumerEvent, ConsumerOptions, EventLog, Record, SeekTo, TopicPartition};

use super::shutdown_signal;

/// What `agentlog produce` writes: `count` records, `{i}` in key and value replaced by the
/// sequence number, headers as `name=value`.
pub struct Produce {
    pub topic: String,
    pub key: Option<String>,
    pub value: String,
    pub count: u64,
    pub headers: Vec<String>,
}

pub async fn produce(log: &Arc<dyn EventLog>, args: Produce) -> anyhow::Result<()> {
    let producer = log.producer()?;
    for i in 0..args.count {
        let mut record = Record::new(&args.topic, Bytes::from(args.value.replace("{i}", &i.to_string())));
        if let Some(key) = &args.key {
            record = record.with_key(Bytes::from(key.replace("{i}", &i.to_string())));
        }
        for header in &args.headers {
            let (name, value) = header.split_once('=').with_context(|| format!("header `{header}` is not name=value"))?;
            record = record.with_header(name, Bytes::from(value.to_string()));
        }
        let position = producer.send(record).await?.await?;
        // One line per durable record: a caller may kill us at any point and knows
        // exactly which appends were acknowledged.
        println!("{}", json!({"seq": i, "partition": position.partition, "offset": position.offset}));
    }
    Ok(())
}

/// What `agentlog consume` reads: from a group's committed offsets, or every partition from
/// the start; until `max` records, `idle` without one, or Ctrl-C.
pub struct Consume {
    pub topic: String,
    pub group: Option<String>,
    pub max: Option<u64>,
    pub commit: bool,
    pub idle: Duration,
}

pub async fn consume(log: &Arc<dyn EventLog>, args: Consume) -> anyhow::Result<()> {
    let Consume { topic, group, max, commit, idle } = args;
    if commit && group.is_none() {
        bail!("--commit needs --group");
    }
    let mut consumer = log.consumer(ConsumerOptions { group: group.clone(), client_id: Some("agentlog-cli".into()), ..Default::default() })?;
    if group.is_some() {
        consumer.subscribe(std::slice::from_ref(&topic))?;
    } else {
        let partitions = log.admin().describe_topic(&topic).await?.partitions;
        let parts: Vec<(TopicPartition, SeekTo)> = (0..partitions).map(|p| (TopicPartition::new(&topic, p), SeekTo::Earliest)).collect();
        consumer.assign(&parts).await?;
    }
    let mut next: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut seen = 0u64;
    while max.is_none_or(|m| seen < m) {
        let event = tokio::select! {
            event = tokio::time::timeout(idle, consumer.next_event()) => match event {
                Ok(event) => event?,
                Err(_) => break,
            },
            _ = shutdown_signal() => break,
        };
        if let ConsumerEvent::Record(r) = event {
            next.insert(r.topic_partition(), r.offset + 1);
            seen += 1;
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|h| (h.name.clone(), json!(String::from_utf8_lossy(&h.value)))).collect();
            println!(
                "{}",
                json!({
                    "partition": r.partition,
                    "offset": r.offset,
                    "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "value": String::from_utf8_lossy(&r.payload),
                    "timestamp_ms": r.timestamp_ms,
                    "headers": headers,
                })
            );
        }
    }
    if commit && !next.is_empty() {
        let offsets: Vec<(TopicPartition, i64)> = next.into_iter().collect();
        consumer.commit(&offsets).await?;
    }
    consumer.close().await?;
    Ok(())
}
