//! `agentlog registry`, `agentlog schemas …` and `agentlog events …`: the Avro contract from
//! the command line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use schema_registry_converter::async_impl::schema_registry::post_schema;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentTypeConfig;
use crate::config::Config;
use crate::events::reader::{EventReader, ReadOutcome};
use crate::events::wire::{WireCodec, registry_settings};
use crate::events::{Event, Lane, Meta, TaskSubmitted, all_schemas, check_evolution, topic_of};
use crate::log::{ConsumerOptions, EventLog, Record, SeekTo, TopicPartition, TopicSpec};
use crate::registry::{Registry, RegistryConfig, bind, serve};

/// Serves the built-in schema registry until Ctrl-C or SIGTERM.
pub async fn run_registry(log: &Arc<dyn EventLog>, config: &Config, listen: &str) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let topic = format!("{}schemas", config.log.topic_prefix);
    let registry = Registry::open_with(log.clone(), &topic, &config.registry, shutdown.clone()).await.context("opening the schema registry")?;
    let listener = bind(listen, &config.api.access()).await.with_context(|| format!("binding {listen}"))?;
    println!("schema registry on http://{} (schemas on topic {topic})", listener.local_addr()?);
    println!("ready; Ctrl-C to stop");
    let server = tokio::spawn(serve(registry.clone(), listener, config.api.access(), shutdown.clone()));
    super::shutdown_signal().await;
    shutdown.cancel();
    let served = server.await.context("registry server task")?;
    registry.close().await;
    served.context("schema registry")?;
    Ok(())
}

/// Fails naming schema, field and rule when the working schemas break the released ones.
pub fn check_schemas(working: &Path, released: &Path) -> anyhow::Result<()> {
    check_evolution(working, released)?;
    println!("schemas in {} are compatible with the released set in {}", working.display(), released.display());
    Ok(())
}

/// Registers every event schema under `<topic>-<full name>` (TopicRecordNameStrategy) for
/// each topic it is written to, `TaskSubmitted` under every lane topic of every declared agent
/// type. Registering those up front matters: a producer that may not register schemas itself
/// (`auto.register.schemas=false`, the usual locked-down setting) only looks its subject up,
/// and would find none until agentlog had written to that lane. Sends `registry.api_key`.
pub async fn register_schemas(registry: &RegistryConfig, topic_prefix: &str, agents: &BTreeMap<String, AgentTypeConfig>) -> anyhow::Result<()> {
    let settings = registry_settings(registry)?;
    for (name, avsc) in all_schemas() {
        let subjects = subjects_of(name, topic_prefix, agents);
        if subjects.is_empty() {
            println!("skipped   {name} (no agent type declared, so no lane topic to register it for)");
        }
        for subject in subjects {
            let schema = SuppliedSchema::new(Some(name.to_string()), SchemaType::Avro, avsc.to_string());
            let registered = post_schema(&settings, subject.clone(), schema).await.map_err(|e| anyhow::anyhow!("registering {subject}: {e}"))?;
            println!("registered {subject} id={}", registered.id);
        }
    }
    Ok(())
}

/// The TopicRecordNameStrategy subjects of event type `name`: one per topic it is written to.
fn subjects_of(name: &str, topic_prefix: &str, agents: &BTreeMap<String, AgentTypeConfig>) -> Vec<String> {
    if name == TaskSubmitted::NAME {
        // Lane topics come from the same declaration `topics apply` creates them from.
        return agents.iter().flat_map(|(agent_type, agent)| agent.lane_topics(agent_type, topic_prefix)).map(|topic| format!("{topic}-{name}")).collect();
    }
    topic_of(name).map(|topic| format!("{topic_prefix}{topic}-{name}")).into_iter().collect()
}

pub async fn create_topic(log: &Arc<dyn EventLog>, name: &str, partitions: i32, replication_factor: i16) -> anyhow::Result<()> {
    let mut spec = TopicSpec::new(name, partitions);
    spec.replication_factor = replication_factor;
    log.admin().create_topic(&spec).await?;
    println!("created {name} ({partitions} partitions)");
    Ok(())
}

/// Writes `count` sample TaskSubmitted events (task ids `sample-0`, …) in Confluent's wire
/// format: what a downstream client should be able to read with its own deserializer.
pub async fn emit_sample(log: &Arc<dyn EventLog>, topic: &str, registry: &RegistryConfig, count: u32) -> anyhow::Result<()> {
    let codec = WireCodec::from_config(registry)?;
    let producer = log.producer()?;
    for i in 0..count {
        let task_id = format!("sample-{i}");
        let meta = Meta::new(format!("evt-{i}-{}", std::process::id()), "interop", "agentlog-cli");
        let mut event = TaskSubmitted::new(meta, task_id.clone(), "echo", Lane::High, serde_json::to_vec(&json!({"n": i}))?);
        event.max_attempts = 3;
        let payload = codec.encode(topic, &event).await?;
        let position = producer.send(Record::new(topic, payload).with_key(Bytes::from(task_id))).await?.await?;
        println!("{}", json!({"task_id": event.task_id, "partition": position.partition, "offset": position.offset}));
    }
    Ok(())
}

/// Reads TaskSubmitted events from the start of `topic`, printing each as JSON; records that
/// cannot be decoded go to the DLQ topic (printed too) and reading moves on.
pub async fn read_events(log: &Arc<dyn EventLog>, topic: &str, registry: &RegistryConfig, dlq_topic: &str, max: u64, idle: Duration) -> anyhow::Result<()> {
    let codec = Arc::new(WireCodec::from_config(registry)?);
    let partitions = log.admin().describe_topic(topic).await?.partitions;
    let mut consumer = log.consumer(ConsumerOptions::default())?;
    let parts: Vec<(TopicPartition, SeekTo)> = (0..partitions).map(|p| (TopicPartition::new(topic, p), SeekTo::Earliest)).collect();
    consumer.assign(&parts).await?;
    let mut reader = EventReader::<TaskSubmitted>::new(consumer, codec, log.producer()?, dlq_topic);
    let mut seen = 0;
    while seen < max {
        let outcome = match tokio::time::timeout(idle, reader.next()).await {
            Ok(outcome) => outcome?,
            Err(_) => bail!("read {seen} of {max} records before {idle:?} without a record"),
        };
        match outcome {
            ReadOutcome::Event { record, schema_id, event } => {
                seen += 1;
                println!("{}", json!({"partition": record.partition, "offset": record.offset, "schema_id": schema_id, "event": event}));
            }
            ReadOutcome::DeadLettered { record, error, dead_letter } => {
                seen += 1;
                println!(
                    "{}",
                    json!({"partition": record.partition, "offset": record.offset, "dead_lettered": error.to_string(),
                           "dlq_partition": dead_letter.partition, "dlq_offset": dead_letter.offset})
                );
            }
            ReadOutcome::Rebalance(_) => {}
        }
    }
    reader.into_consumer().close().await?;
    Ok(())
}
