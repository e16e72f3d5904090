//! `GET /v1/stream/outcomes`: Server-Sent Events, one `outcome` event per task that reaches
//! its outcome in the projection, for the caller's tenant, optionally of one agent type.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::ApiState;
use super::auth::Tenant;
use super::error::ApiError;
use super::tasks::{query_error, task_json};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    #[serde(default)]
    pub agent_type: Option<String>,
}

#[utoipa::path(get, path = "/v1/stream/outcomes", tag = "tasks", params(StreamQuery),
    responses((status = 200, description = "text/event-stream of `outcome` events (the task's JSON)", content_type = "text/event-stream"), (status = 400), (status = 401)))]
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
    let receiver = state.projection.subscribe();
    let closing = state.closing.clone();
    let stream = futures::stream::unfold((receiver, tenant, query.agent_type), move |(mut receiver, tenant, agent_type)| {
        let closing = closing.clone();
        async move {
        loop {
            // Streams end when the server shuts down, or graceful shutdown would wait forever.
            let next = tokio::select! {
                _ = closing.cancelled() => return None,
                next = receiver.recv() => next,
            };
            match next {
                Ok(notice) => {
                    if notice.tenant != tenant || agent_type.as_ref().is_some_and(|t| notice.agent_type.as_ref() != Some(t)) {
                        continue;
                    }
                    let event = Event::default().event("outcome").id(notice.view.task_id.clone()).data(task_json(&notice.view).to_string());
                    return Some((Ok(event), (receiver, tenant, agent_type)));
                }
                Err(RecvError::Lagged(missed)) => {
                    // A slow reader is told what it missed rather than silently skipping.
                    let event = Event::default().event("lagged").data(format!("{{\"missed\": {missed}}}"));
                    return Some((Ok(event), (receiver, tenant, agent_type)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
