//! The recording client: submits tasks over HTTP at a steady rate and records every
//! submission as a history entry, invoke then ok / fail / unknown, with the task id it chose.
//! Sorting an answer is the point: `fail` only when the request surely wrote nothing
//! (refused connection, a 4xx), `unknown` whenever it may have (timeout, reset, 5xx).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long one submission may take before it is recorded as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Submissions in flight at once; past it a tick is skipped (and counted), never queued,
/// so an unreachable API cannot pile up work that floods it when it returns.
const MAX_IN_FLIGHT: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "info", rename_all = "lowercase")]
pub enum Answer {
    /// 202: written to the task topic.
    Ok,
    /// Surely not written.
    Fail(String),
    /// May or may not have been written.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Submission {
    pub task_id: String,
    pub invoked: Instant,
    pub answer: Answer,
}

#[derive(Debug, Clone)]
pub struct Load {
    pub api_url: String,
    pub agent_type: String,
    /// Task ids are `<id_prefix>-<n>`.
    pub id_prefix: String,
    pub rate_per_s: u32,
    pub duration: Duration,
    /// What the sleep agent is asked to do.
    pub input: serde_json::Value,
}

pub struct History {
    pub submissions: Vec<Submission>,
    /// Ticks skipped because MAX_IN_FLIGHT submissions were outstanding.
    pub skipped: u64,
}

/// Runs the load to its end and returns every submission's record.
pub async fn run(load: Load) -> Result<History, reqwest::Error> {
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    let period = Duration::from_secs_f64(1.0 / f64::from(load.rate_per_s.max(1)));
    let ticks = (load.duration.as_secs_f64() / period.as_secs_f64()).ceil() as u64;
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = JoinSet::new();
    let mut skipped = 0;
    let url = format!("{}/v1/tasks", load.api_url);
    for n in 0..ticks {
        interval.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let task_id = format!("{}-{n}", load.id_prefix);
        let body = json!({"agent_type": load.agent_type, "task_id": task_id, "input": load.input});
        let request = http.post(&url).json(&body);
        running.spawn(async move {
            let invoked = Instant::now();
            let answer = classify(request.send().await).await;
            drop(permit);
            Submission { task_id, invoked, answer }
        });
    }
    let mut submissions = Vec::with_capacity(ticks as usize);
    // Every request is bounded by REQUEST_TIMEOUT, so this ends.
    while let Some(joined) = running.join_next().await {
        if let Ok(submission) = joined {
            submissions.push(submission);
        }
    }
    submissions.sort_by_key(|s| s.invoked);
    Ok(History { submissions, skipped })
}

async fn classify(sent: Result<reqwest::Response, reqwest::Error>) -> Answer {
    match sent {
        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED || response.status() == reqwest::StatusCode::OK => Answer::Ok,
        Ok(response) => {
            let status = response.status();
            let text: String = response.text().await.unwrap_or_default().chars().take(200).collect();
            if status.is_client_error() { Answer::Fail(format!("{status}: {text}")) } else { Answer::Unknown(format!("{status}: {text}")) }
        }
        // Refused: the request never reached a server, so nothing was written.
        Err(error) if error.is_connect() => Answer::Fail(format!("connect: {}", root_cause(&error))),
        Err(error) if error.is_timeout() => Answer::Unknown("timeout".to_string()),
        Err(error) => Answer::Unknown(root_cause(&error)),
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
