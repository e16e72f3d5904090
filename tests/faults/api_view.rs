//! The HTTP API's view of every task (`GET /v1/tasks/{id}`) next to what `task.results`
//! holds. The projection trails the topic, so disagreeing tasks are asked again until they
//! agree or the time is up; what still disagrees then is reported.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

/// GETs in flight at once.
const CONCURRENCY: usize = 32;
/// Examples of disagreement quoted in the report.
const EXAMPLES: usize = 5;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApiCheck {
    /// Milliseconds until `/readyz` answered 200, or None if it never did.
    pub ready_after_ms: Option<u64>,
    pub checked: usize,
    pub disagree: usize,
    pub examples: Vec<String>,
}

/// The status the projection must show for a topic outcome (TaskCompleted → completed).
pub fn status_of(event: &str) -> Option<&'static str> {
    Some(match event {
        "TaskCompleted" => "completed",
        "TaskFailed" => "failed",
        "TaskDeadLettered" => "dead_lettered",
        "TaskCancelled" => "cancelled",
        "TaskExpired" => "expired",
        _ => return None,
    })
}

const TERMINAL: [&str; 5] = ["completed", "failed", "dead_lettered", "cancelled", "expired"];

/// `expected`: task id → the terminal status its first outcome on the topic names, or None
/// when the topic has no outcome (then the API must not show a terminal status).
pub async fn compare(api_url: &str, expected: &HashMap<String, Option<&'static str>>, within: Duration) -> ApiCheck {
    let started = Instant::now();
    let deadline = started + within;
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(http) => http,
        Err(error) => {
            return ApiCheck { checked: expected.len(), disagree: expected.len(), examples: vec![format!("no HTTP client: {error}")], ..ApiCheck::default() };
        }
    };
    let mut check = ApiCheck { checked: expected.len(), ..ApiCheck::default() };
    while Instant::now() < deadline {
        let ready = http.get(format!("{api_url}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
        if ready {
            check.ready_after_ms = Some(started.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut pending: Vec<&String> = expected.keys().collect();
    let mut last: HashMap<&String, String> = HashMap::new();
    // At least one round even when not ready: the answers are the evidence.
    for round in 0..1000 {
        if pending.is_empty() || (round > 0 && Instant::now() >= deadline) {
            break;
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let answers: Vec<(&String, Result<(), String>)> = futures::stream::iter(pending.iter().copied())
            .map(|id| {
                let http = &http;
                async move { (id, agrees(http, api_url, id, expected[id]).await) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        pending.clear();
        for (id, answer) in answers {
            if let Err(why) = answer {
                last.insert(id, why);
                pending.push(id);
            }
        }
    }
    check.disagree = pending.len();
    pending.sort();
    check.examples = pending.iter().take(EXAMPLES).map(|id| format!("{id}: {}", last.get(id).map(String::as_str).unwrap_or("?"))).collect();
    check
}

async fn agrees(http: &reqwest::Client, api_url: &str, id: &str, expected: Option<&'static str>) -> Result<(), String> {
    let response = http.get(format!("{api_url}/v1/tasks/{id}")).send().await.map_err(|e| format!("GET failed: {e}"))?;
    let code = response.status();
    let status = if code == reqwest::StatusCode::NOT_FOUND {
        None
    } else if code.is_success() {
        let body: serde_json::Value = response.json().await.map_err(|e| format!("body: {e}"))?;
        Some(body["status"].as_str().unwrap_or("<no status>").to_string())
    } else {
        return Err(format!("HTTP {code}"));
    };
    match (expected, status.as_deref()) {
        (Some(want), Some(got)) if want == got => Ok(()),
        (None, None) => Ok(()),
        (None, Some(got)) if !TERMINAL.contains(&got) => Ok(()),
        (want, got) => Err(format!("topic says {}, API says {}", want.unwrap_or("no outcome"), got.unwrap_or("404"))),
    }
}
