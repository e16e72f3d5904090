//! `agentlog submit`, `agentlog cancel` and `agentlog dlq list|resubmit`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::agent::client::{MAX_DEADLINE_MS, MAX_DELAY, after_ms, new_id};
use crate::agent::{TaskClient, TaskTopics, dlq};
use crate::config::Config;
use crate::events::wire::WireCodec;
use crate::events::{Lane, TaskSubmitted, TimestampMicros, decode_any};
use crate::log::{ConsumerEvent, ConsumerOptions, EventLog, SeekTo, TopicPartition};

pub struct SubmitArgs {
    pub agent_type: String,
    pub input: String,
    pub lane: Lane,
    pub tenant: String,
    pub ordering_key: Option<String>,
    pub task_id: Option<String>,
    pub delay_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_attempts: Option<i32>,
    pub wait: Option<Duration>,
}

fn client(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<TaskClient> {
    let codec = Arc::new(WireCodec::from_config(&config.registry)?);
    Ok(TaskClient::new(log, codec, TaskTopics::new(config.log.topic_prefix.clone()), "cli")?)
}

pub async fn submit(log: &Arc<dyn EventLog>, config: &Config, args: SubmitArgs) -> anyhow::Result<()> {
    let declared = super::worker::declared(config, &args.agent_type)?;
    let lane = args.lane;
    anyhow::ensure!(declared.reads(lane), "agent type `{}` does not read lane `{lane}`; its lanes: {}", args.agent_type, declared.lane_list());
    let input: serde_json::Value = serde_json::from_str(&args.input).with_context(|| format!("--input is not JSON: {}", args.input))?;
    let client = client(log, config)?;
    let task_id = args.task_id.unwrap_or_else(|| new_id("task"));
    let mut task = TaskSubmitted::new(client.meta(&args.tenant), &task_id, &args.agent_type, lane, serde_json::to_vec(&input)?);
    task.ordering_key = args.ordering_key;
    let now = TimestampMicros::now().0;
    if let Some(ms) = args.delay_ms {
        anyhow::ensure!(ms <= MAX_DELAY.as_millis() as u64, "--delay-ms {ms} is more than {} ms (the retention of the timers topic)", MAX_DELAY.as_millis());
        task.not_before = after_ms(TimestampMicros(now), ms);
    }
    if let Some(ms) = args.deadline_ms {
        anyhow::ensure!(ms <= MAX_DEADLINE_MS, "--deadline-ms {ms} is more than {MAX_DEADLINE_MS} ms (100 years)");
        task.deadline = after_ms(TimestampMicros(now), ms);
    }
    if let Some(n) = args.max_attempts {
        task.max_attempts = n;
    }
    let results = client.topics().results();
    let submitted = client.submit(&task).await?;
    println!(
        "{}",
        json!({"task_id": submitted.task_id, "topic": submitted.topic, "partition": submitted.position.partition, "offset": submitted.position.offset, "delayed": submitted.delayed})
    );
    if let Some(wait) = args.wait {
        let outcome = wait_for_outcome(log, client.codec(), &results, (&args.tenant, &task_id), now / 1000 - 1_000, wait).await?;
        println!("{outcome}");
    }
    Ok(())
}

/// Reads `task.results` from `since_ms` until the outcome of the task (tenant, task id) shows
/// up, as JSON (another tenant's task of the same id is another task).
async fn wait_for_outcome(
    log: &Arc<dyn EventLog>,
    codec: &WireCodec,
    results: &str,
    (tenant, task_id): (&str, &str),
    since_ms: i64,
    wait: Duration,
) -> anyhow::Result<String> {
    let partitions = log.admin().describe_topic(results).await?.partitions;
    let mut consumer = log.consumer(ConsumerOptions::default())?;
    consumer.assign(&(0..partitions).map(|p| (TopicPartition::new(results, p), SeekTo::Timestamp(since_ms))).collect::<Vec<_>>()).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let event =
            tokio::time::timeout_at(deadline, consumer.next_event()).await.map_err(|_| anyhow::anyhow!("no outcome for {task_id} within {wait:?}"))??;
        let ConsumerEvent::Record(record) = event else { continue };
        if record.key.as_deref() != Some(task_id.as_bytes()) {
            continue;
        }
        let event = decode_any(codec, &record.payload).await?;
        if !event.is_terminal() || event.task_ref() != Some((tenant, task_id)) {
            continue;
        }
        let summary = crate::agent::outcomes::outcome_json(&event);
        consumer.close().await?;
        return Ok(summary.to_string());
    }
}

pub async fn cancel(log: &Arc<dyn EventLog>, config: &Config, task_id: &str, tenant: &str, reason: Option<String>) -> anyhow::Result<()> {
    client(log, config)?.cancel(task_id, tenant, reason).await?;
    println!("{}", json!({"task_id": task_id, "cancel_requested": true}));
    Ok(())
}

pub async fn dlq_list(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    let client = client(log, config)?;
    for letter in dlq::list(log, &client).await? {
        println!(
            "{}",
            json!({
                "partition": letter.partition, "offset": letter.offset,
                "task_id": letter.task.as_ref().map(|t| t.task_id.clone()),
                "agent_type": letter.task.as_ref().map(|t| t.agent_type.clone()),
                "attempts": letter.attempts, "error_kind": letter.error_kind, "reason": letter.reason, "source": letter.source,
                "truncated": letter.truncated,
            })
        );
    }
    Ok(())
}

pub async fn dlq_resubmit(log: &Arc<dyn EventLog>, config: &Config, task_id: Option<String>, tenant: &str, all: bool) -> anyhow::Result<()> {
    let client = client(log, config)?;
    let letters = dlq::list(log, &client).await?;
    let chosen: Vec<&dlq::DeadLetter> = match (task_id, all) {
        (Some(id), false) => vec![dlq::find(&letters, tenant, &id)?],
        (None, true) => letters.iter().filter(|l| l.task.is_some() && l.truncated.is_none()).collect(),
        _ => anyhow::bail!("give either --task ID or --all"),
    };
    for letter in chosen {
        let submitted = dlq::resubmit(&client, letter).await?;
        println!("{}", json!({"task_id": submitted.task_id, "resubmitted_to": submitted.topic, "offset": submitted.position.offset}));
    }
    Ok(())
}
