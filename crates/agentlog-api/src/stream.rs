//! `GET /v1/stream/outcomes`: Server-Sent Events, one `outcome` event per task that reaches
//! its outcome in the projection, for the caller's tenant, optionally of one agent type.
//! A tenant may hold `api.max_streams_per_tenant` streams open at once: each holds a
//! connection and a broadcast receiver for as long as the client likes. A receiver holds at
//! most the channel's capacity of notices (each a task's name, not its view), so a client that
//! never reads costs a bounded amount of memory; when it falls that far behind it gets a
//! `lagged` event saying how many outcomes it missed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::ApiState;
use super::answers::Task;
use super::auth::Tenant;
use super::tasks::query_error;
use crate::http::error::ApiError;
use crate::projection::store::ProjectionStore;

/// How often an open stream gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Open streams per tenant.
#[derive(Debug, Default, Clone)]
pub struct OpenStreams {
    by_tenant: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream of a tenant, counted until dropped (the stream ended or its client left).
pub struct StreamSlot {
    streams: OpenStreams,
    tenant: String,
}

impl OpenStreams {
    /// A slot for one more stream of `tenant`, or 429 naming the limit.
    pub fn open(&self, tenant: &str, max: usize) -> Result<StreamSlot, ApiError> {
        // The map holds plain counts: one left by a panicking holder is still right.
        let mut by_tenant = self.by_tenant.lock().unwrap_or_else(PoisonError::into_inner);
        let open = by_tenant.entry(tenant.to_string()).or_insert(0);
        if *open >= max {
            return Err(ApiError::too_many(
                "too_many_streams",
                format!("tenant `{tenant}` has {open} event streams open, the most api.max_streams_per_tenant ({max}) allows; close one first"),
                KEEP_ALIVE.as_secs(),
            ));
        }
        *open += 1;
        Ok(StreamSlot { streams: self.clone(), tenant: tenant.to_string() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut by_tenant = self.streams.by_tenant.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = by_tenant.get_mut(&self.tenant) {
            *open = open.saturating_sub(1);
            // Tenants without streams leave no entry: the map stays as small as what is open.
            if *open == 0 {
                by_tenant.remove(&self.tenant);
            }
        }
    }
}

/// The `outcome` event of a task the projection just finished, read from the store (the notice
/// names the task only; see [`crate::projection::OutcomeNotice`]). `None` when it cannot be
/// read, which is logged: the stream goes on with the next outcome.
fn outcome_event(store: &ProjectionStore, tenant: &str, task_id: &str) -> Option<Event> {
    match store.task(tenant, task_id) {
        // A task's JSON always serializes (string keys only); `json_data` cannot fail on it.
        Ok(Some(view)) => Event::default().event("outcome").id(view.task_id.clone()).json_data(Task::from(&view)).ok(),
        Ok(None) => {
            tracing::warn!(task_id, "an outcome notice names a task the projection does not hold");
            None
        }
        Err(error) => {
            tracing::warn!(task_id, %error, "reading a finished task for its outcome event failed");
            None
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    #[serde(default)]
    pub agent_type: Option<String>,
}

#[utoipa::path(get, path = "/v1/stream/outcomes", tag = "tasks", params(StreamQuery),
    responses((status = 200, description = "text/event-stream of `outcome` events (the task's JSON)", content_type = "text/event-stream"), (status = 400), (status = 401), (status = 429, description = "the tenant has api.max_streams_per_tenant streams open")))]
pub async fn outcomes(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    if let Some(agent_type) = &query.agent_type
        && !state.agents.contains_key(agent_type)
    {
        let known: Vec<&str> = state.agents.keys().map(String::as_str).collect();
        return Err(ApiError::bad_field("agent_type", format!("unknown agent type `{agent_type}`; known: {}", known.join(", "))));
    }
    let slot = state.streams.open(&tenant, state.config.max_streams_per_tenant)?;
    let receiver = state.projection.subscribe();
    let store = state.projection.store();
    let closing = state.closing.clone();
    // The slot lives in the stream's state: it is freed when hyper drops the stream.
    let stream = futures::stream::unfold((receiver, tenant, query.agent_type, slot), move |(mut receiver, tenant, agent_type, slot)| {
        let closing = closing.clone();
        let store = store.clone();
        async move {
            loop {
                // Streams end when the server shuts down, or graceful shutdown would wait forever.
                let next = tokio::select! {
                    _ = closing.cancelled() => return None,
                    next = receiver.recv() => next,
                };
                let event = match next {
                    Ok(notice) => {
                        if notice.tenant != tenant || agent_type.as_ref().is_some_and(|t| notice.agent_type.as_ref() != Some(t)) {
                            continue;
                        }
                        match outcome_event(&store, &tenant, &notice.task_id) {
                            Some(event) => event,
                            None => continue,
                        }
                    }
                    // A slow reader is told how much it missed rather than silently skipping;
                    // `GET /v1/tasks` lists what finished meanwhile.
                    Err(RecvError::Lagged(missed)) => Event::default().event("lagged").data(format!("{{\"missed\": {missed}}}")),
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(event), (receiver, tenant, agent_type, slot)));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
