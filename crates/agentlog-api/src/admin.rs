//! Operations on the projection while the API serves: replay (rebuild from the log into a
//! new generation, then swap it in) and snapshots (RocksDB checkpoints with their offsets).
//! With API keys, only tenants listed in `api.admin_tenants` may call these.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use tokio_util::task::TaskTracker;

use super::answers::SnapshotTaken;
use super::auth::Tenant;
use super::{ApiState, store_failed};
use crate::events::wire::WireCodec;
use crate::http::error::ApiError;
use crate::projection::{Generations, replay_and_swap};

/// What admin operations need besides the API state.
pub struct AdminContext {
    pub generations: Arc<Generations>,
    pub codec: Arc<WireCodec>,
    /// The last replay: running, or how it ended.
    replay: Mutex<ReplayState>,
    /// The running replay, so that shutting the API down waits for it to let go of the
    /// half-built generation.
    tasks: TaskTracker,
}

/// The last replay, as `GET /v1/admin/replay` shows it (`{"state": "done", "events": ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReplayState {
    Never,
    Running {
        started_at_ms: i64,
    },
    Done {
        events: usize,
        records: usize,
        elapsed_ms: u64,
        events_per_s: u64,
    },
    Failed {
        error: String,
    },
    /// The API shut down first; the half-built generation is removed at the next start.
    Abandoned,
}

impl AdminContext {
    pub fn new(generations: Arc<Generations>, codec: Arc<WireCodec>) -> AdminContext {
        AdminContext { generations, codec, replay: Mutex::new(ReplayState::Never), tasks: TaskTracker::new() }
    }

    pub fn replay_state(&self) -> ReplayState {
        self.replay.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_replay(&self, state: ReplayState) {
        *self.replay.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Waits for a running replay to end (it ends soon after the API's closing token fires).
    pub async fn finish(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn admitted<'s>(state: &'s ApiState, tenant: &str) -> Result<&'s AdminContext, ApiError> {
    if !state.is_admin(tenant) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("tenant `{tenant}` is not in api.admin_tenants")));
    }
    state.admin.as_ref().ok_or_else(|| ApiError::unavailable("this server has no projection directory to manage"))
}

#[utoipa::path(post, path = "/v1/admin/replay", tag = "operations",
    responses((status = 202, description = "replay started: the projection is rebuilt from the log and swapped in when caught up", body = ReplayState), (status = 409, description = "a replay is running"), (status = 401), (status = 403)))]
pub async fn replay(State(state): State<Arc<ApiState>>, Tenant(tenant): Tenant) -> Result<(StatusCode, Json<ReplayState>), ApiError> {
    let admin = admitted(&state, &tenant)?;
    let running = ReplayState::Running { started_at_ms: crate::events::TimestampMicros::now().0 / 1000 };
    {
        let mut status = admin.replay.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*status, ReplayState::Running { .. }) {
            return Err(ApiError::new(StatusCode::CONFLICT, "replay_running", "a replay is already running"));
        }
        *status = running.clone();
    }
    let task_state = state.clone();
    // Ends with the server's closing token: a shutdown abandons the half-built generation
    // (removed at the next start), never the live one, and waits for that (`finish`).
    admin.tasks.spawn(async move {
        let Some(admin) = task_state.admin.as_ref() else { return };
        let outcome = tokio::select! {
            _ = task_state.closing.cancelled() => ReplayState::Abandoned,
            result = replay_and_swap(&task_state.log, &admin.codec, &task_state.projection, &admin.generations) => match result {
                Ok(report) => ReplayState::Done {
                    events: report.events,
                    records: report.records,
                    elapsed_ms: report.elapsed.as_millis() as u64,
                    events_per_s: (report.events as f64 / report.elapsed.as_secs_f64().max(1e-9)) as u64,
                },
                Err(error) => {
                    tracing::error!(%error, "replay failed");
                    ReplayState::Failed { error: crate::redact::paths_in(&error.to_string()) }
                }
            },
        };
        admin.set_replay(outcome);
    });
    Ok((StatusCode::ACCEPTED, Json(running)))
}

#[utoipa::path(get, path = "/v1/admin/replay", tag = "operations", responses((status = 200, description = "the last replay's state", body = ReplayState), (status = 401), (status = 403)))]
pub async fn replay_status(State(state): State<Arc<ApiState>>, Tenant(tenant): Tenant) -> Result<Json<ReplayState>, ApiError> {
    let admin = admitted(&state, &tenant)?;
    Ok(Json(admin.replay_state()))
}

#[utoipa::path(post, path = "/v1/admin/snapshots", tag = "operations",
    responses((status = 201, description = "a checkpoint of the projection with its offsets; `snapshot` names it in the `snapshots` directory under `projection.dir` (`agentlog snapshot restore` takes that path)", body = super::answers::SnapshotTaken), (status = 401), (status = 403)))]
pub async fn snapshot(State(state): State<Arc<ApiState>>, Tenant(tenant): Tenant) -> Result<(StatusCode, Json<SnapshotTaken>), ApiError> {
    let admin = admitted(&state, &tenant)?;
    let name = format!("snap-{}", crate::events::TimestampMicros::now().0);
    let dir = admin.generations.snapshots_dir();
    std::fs::create_dir_all(&dir).map_err(|error| {
        tracing::error!(dir = %dir.display(), %error, "creating the snapshots directory failed");
        ApiError::internal(format!("creating the snapshots directory: {error}"))
    })?;
    state.projection.store().checkpoint(&dir.join(&name)).map_err(store_failed)?;
    // The name only: the server's absolute path is not the caller's business (operators know
    // `projection.dir`).
    Ok((StatusCode::CREATED, Json(SnapshotTaken { snapshot: name })))
}
