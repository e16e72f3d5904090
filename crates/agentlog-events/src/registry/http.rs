//! Confluent Schema Registry REST API, the subset Kafka clients and serializers use.
//!
//! Answers are always `application/vnd.schemaregistry.v1+json`, as Confluent's, errors
//! included: handlers take their inputs through the extractors of [`super::extract`] and
//! return [`RegistryError`], and unknown routes and methods are errors too, so no answer
//! leaves in axum's plain-text shape. Query flags are parsed by [`super::params`].
//!
//! Who may do what, with the API's keys (`[api] keys`, `admin_tenants`):
//! - any valid key may read: every GET, a lookup (`POST /subjects/{s}`) and compatibility
//!   checks (`POST /compatibility/...`); `GET /` (the health path, answering `{}`) needs none;
//! - writes (registering, `PUT /config`, `DELETE`) need an admin tenant's key, except that
//!   registering a schema already live in the subject, which writes nothing and answers its
//!   id, is open to any key: Confluent serializers with `auto.register.schemas=true` do that
//!   on their first record, and keep working against an applied catalog;
//! - no key or an invalid one is 401 (`error_code` 40101), a non-admin write 403 (40301),
//!   both held `api.auth_failure_delay_ms` as the API holds its refusals.
//!
//! Without keys (loopback mode) everyone on this machine may read and write, with the API's
//! Host and Origin checks against web pages ([`crate::http::loopback`]); serving a
//! non-loopback address without keys is refused at start-up. Connections are served by the
//! API's accept loop ([`crate::http::server`]): a connection cap, idle and header timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::access::{Access, Auth};
use crate::http::error::ApiError;
use crate::http::loopback::{self, Guard};

use super::Registry;
use super::answer::{CONTENT_TYPE, sr_json};
use super::compatibility::CompatibilityLevel;
use super::error::RegistryError;
use super::extract::{SrJson, SrPath, SrQuery};
use super::params::{QueryParams, Visibility};
use super::state::{SubjectVersion, VersionSelector};

type Shared = State<Arc<Registry>>;
type ApiResult = Result<Response, RegistryError>;

/// What a request may do, decided by [`authorize`] before its handler runs.
#[derive(Debug, Clone, Copy)]
struct Caller {
    /// An admin tenant's key, or loopback mode.
    may_write: bool,
}

/// The access rules of a server: the API's keys and admin tenants, and in loopback mode the
/// Host/Origin guard.
struct Gate {
    auth: Auth,
    admin_tenants: Vec<String>,
    failure_delay: Duration,
    guard: Option<Guard>,
}

/// What a request does, by method and path.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Health,
    Read,
    Register,
    Write,
}

fn action(method: &Method, path: &str) -> Action {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, [""]) => Action::Health,
        (&Method::GET | &Method::HEAD, _) => Action::Read,
        (&Method::POST, ["subjects", _]) | (&Method::POST, ["compatibility", ..]) => Action::Read,
        (&Method::POST, ["subjects", _, "versions"]) => Action::Register,
        _ => Action::Write,
    }
}

impl Gate {
    fn caller(&self, request: &Request) -> Result<Caller, RegistryError> {
        let forbidden = |e: ApiError| RegistryError::Forbidden { reason: e.message };
        if let Some(guard) = &self.guard {
            guard.check(request.method(), request.headers()).map_err(forbidden)?;
            return Ok(Caller { may_write: true });
        }
        let action = action(request.method(), request.uri().path());
        if action == Action::Health {
            return Ok(Caller { may_write: false });
        }
        let tenant = self.auth.tenant_of(request.headers()).map_err(|e| RegistryError::Unauthorized { reason: e.message })?;
        let may_write = self.admin_tenants.contains(&tenant);
        if action == Action::Write && !may_write {
            return Err(RegistryError::Forbidden {
                reason: format!("tenant `{tenant}` may read schemas but not change them: writes need a key of an admin tenant (api.admin_tenants)"),
            });
        }
        Ok(Caller { may_write })
    }
}

/// Middleware: decides who the caller is (or refuses), and holds every 401 and 403, the
/// handlers' included, for `api.auth_failure_delay_ms`.
async fn authorize(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let response = match gate.caller(&request) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    };
    if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) && !gate.failure_delay.is_zero() {
        tokio::time::sleep(gate.failure_delay).await;
    }
    response
}

/// The registry's routes, with the registry as state and the access rules of `access` (the
/// `[api]` section: keys, admin tenants, refusal delay) for a server bound to `bound`.
pub fn router(registry: Arc<Registry>, access: &Access, bound: SocketAddr) -> Router {
    let auth = Auth::new(access);
    let guard = Guard::for_server(bound, auth.keys_configured());
    let gate = Gate { auth, admin_tenants: access.admin_tenants.clone(), failure_delay: access.auth_failure_delay, guard };
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup))
        .route("/subjects/{subject}/versions", get(list_versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(get_version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(get_version_schema))
        .route("/compatibility/subjects/{subject}/versions", post(check_compatibility_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(check_compatibility))
        .route("/config", get(get_global_config).put(put_global_config))
        .route("/config/{subject}", get(get_subject_config).put(put_subject_config))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(Arc::new(gate), authorize))
        .with_state(registry)
}

/// Binds `listen` for [`serve`], refusing a non-loopback address when `access` has no keys
/// (before anything is served, so a misconfiguration stops the process at start-up).
pub async fn bind(listen: &str, access: &Access) -> Result<TcpListener, RegistryError> {
    let listener = crate::http::server::listen(listen).await?;
    let address = listener.local_addr()?;
    if !loopback::may_listen(&address, access.keys_configured()) {
        return Err(RegistryError::NotLoopback { address: address.to_string() });
    }
    Ok(listener)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled, with the API's connection
/// limits (`api.max_connections`, `api.idle_timeout_ms`, `api.header_read_timeout_ms`), then
/// drains in-flight requests. The registry itself (its tail task) is closed by its owner.
/// Without keys in `access` a non-loopback listener is refused.
///
/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn serve(registry: Arc<Registry>, listener: TcpListener, access: Access, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), RegistryError>> {
    Box::pin(serving(registry, listener, access, shutdown))
}

async fn serving(registry: Arc<Registry>, listener: TcpListener, access: Access, shutdown: CancellationToken) -> Result<(), RegistryError> {
    let address = listener.local_addr()?;
    if !loopback::may_listen(&address, access.keys_configured()) {
        return Err(RegistryError::NotLoopback { address: address.to_string() });
    }
    tracing::info!(%address, topic = registry.topic(), keys = access.keys_configured(), "schema registry listening");
    crate::http::server::run(listener, router(registry, &access, address), access.limits, shutdown).await;
    tracing::info!(%address, "schema registry stopped");
    Ok(())
}

fn ok(body: Value) -> ApiResult {
    Ok(sr_json(StatusCode::OK, &body))
}

/// Ids in paths: anything that is not a u32 cannot name a schema.
fn parse_id(id: &str) -> Result<u32, RegistryError> {
    id.parse().map_err(|_| RegistryError::SchemaNotFound)
}

type Query = SrQuery<QueryParams>;

/// `all` without the items of `live`: what `deleted_only` lists.
fn only_deleted<T: PartialEq>(mut all: Vec<T>, live: &[T]) -> Vec<T> {
    all.retain(|item| !live.contains(item));
    all
}

/// `POST /subjects/{s}/versions`, `POST /subjects/{s}` and compatibility bodies.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaBody {
    /// Only self-contained Avro schemas are supported; say so instead of misreading others.
    fn avro(self) -> Result<String, RegistryError> {
        match self.schema_type.as_deref() {
            None => {}
            Some(t) if t.eq_ignore_ascii_case("AVRO") => {}
            Some(other) => {
                return Err(RegistryError::InvalidSchema { reason: format!("schemaType {other} is not supported (AVRO only)") });
            }
        }
        if !self.references.is_empty() {
            return Err(RegistryError::InvalidSchema { reason: "schema references are not supported".to_owned() });
        }
        Ok(self.schema)
    }
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    #[serde(alias = "compatibilityLevel")]
    compatibility: String,
}

fn version_json(v: &SubjectVersion) -> Value {
    json!({ "subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema })
}

async fn root() -> ApiResult {
    ok(json!({}))
}

async fn schema_types() -> ApiResult {
    ok(json!(["AVRO"]))
}

async fn not_found() -> RegistryError {
    RegistryError::RouteNotFound
}

async fn method_not_allowed() -> RegistryError {
    RegistryError::MethodNotAllowed
}

async fn schema_by_id(State(registry): Shared, SrPath(id): SrPath<String>, SrQuery(params): Query) -> ApiResult {
    let schema = registry.schema_by_id(parse_id(&id)?)?;
    let mut answer = json!({ "schema": schema });
    if params.fetch_max_id.get() {
        answer["maxId"] = json!(registry.max_id());
    }
    ok(answer)
}

async fn subjects_of_id(State(registry): Shared, SrPath(id): SrPath<String>, SrQuery(params): Query) -> ApiResult {
    let mut subjects: Vec<String> = registry.subjects_of_id(parse_id(&id)?, params.deleted.get())?.into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn versions_of_id(State(registry): Shared, SrPath(id): SrPath<String>, SrQuery(params): Query) -> ApiResult {
    let usages = registry.subjects_of_id(parse_id(&id)?, params.deleted.get())?;
    ok(Value::Array(usages.into_iter().map(|(subject, version)| json!({ "subject": subject, "version": version })).collect()))
}

async fn list_subjects(State(registry): Shared, SrQuery(params): Query) -> ApiResult {
    let subjects = match params.visibility() {
        Visibility::Live => registry.subjects(false),
        Visibility::All => registry.subjects(true),
        Visibility::DeletedOnly => only_deleted(registry.subjects(true), &registry.subjects(false)),
    };
    ok(json!(subjects))
}

async fn list_versions(State(registry): Shared, SrPath(subject): SrPath<String>, SrQuery(params): Query) -> ApiResult {
    let versions = match params.visibility() {
        Visibility::Live => registry.versions(&subject, false)?,
        Visibility::All => registry.versions(&subject, true)?,
        // A subject whose versions are all deleted has no live ones: not an error here.
        Visibility::DeletedOnly => only_deleted(registry.versions(&subject, true)?, &registry.versions(&subject, false).unwrap_or_default()),
    };
    ok(json!(versions))
}

/// A caller that may not write still gets the id of a schema already live in the subject.
async fn register(
    State(registry): Shared,
    Extension(caller): Extension<Caller>,
    SrPath(subject): SrPath<String>,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let schema = body.avro()?;
    let id = if caller.may_write {
        registry.register(&subject, &schema).await?
    } else {
        registry.registered_id(&subject, &schema)?.ok_or_else(|| RegistryError::Forbidden {
            reason: format!("the schema is not registered under `{subject}`, and registering it needs a key of an admin tenant (api.admin_tenants)"),
        })?
    };
    ok(json!({ "id": id }))
}

async fn lookup(State(registry): Shared, SrPath(subject): SrPath<String>, SrQuery(params): Query, SrJson(body): SrJson<SchemaBody>) -> ApiResult {
    ok(version_json(&registry.lookup(&subject, &body.avro()?, params.deleted.get())?))
}

async fn get_version(State(registry): Shared, SrPath((subject, version)): SrPath<(String, String)>, SrQuery(params): Query) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    ok(version_json(&registry.version(&subject, which, params.deleted.get())?))
}

async fn get_version_schema(State(registry): Shared, SrPath((subject, version)): SrPath<(String, String)>, SrQuery(params): Query) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    let found = registry.version(&subject, which, params.deleted.get())?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], found.schema).into_response())
}

async fn delete_version(State(registry): Shared, SrPath((subject, version)): SrPath<(String, String)>, SrQuery(params): Query) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    if params.permanent.get() {
        // Say so rather than soft-delete: the caller asked for the data to be gone.
        return Err(RegistryError::OperationNotPermitted {
            reason: "permanent deletes are not supported; a soft-deleted version's id stays readable so old records decode".to_owned(),
        });
    }
    ok(json!(registry.delete_version(&subject, which).await?))
}

/// Confluent's answer: `is_compatible`, plus `messages` (why not, possibly empty) when
/// `verbose` is set.
fn compatibility_answer(reasons: Vec<String>, params: &QueryParams) -> ApiResult {
    let mut answer = json!({ "is_compatible": reasons.is_empty() });
    if params.verbose.get() {
        answer["messages"] = json!(reasons);
    }
    ok(answer)
}

async fn check_compatibility(
    State(registry): Shared,
    SrPath((subject, version)): SrPath<(String, String)>,
    SrQuery(params): Query,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    let reasons = registry.check_compatibility(&subject, which, &body.avro()?).await?;
    compatibility_answer(reasons, &params)
}

/// Against the versions the subject's level names (all of them for transitive levels).
async fn check_compatibility_all(
    State(registry): Shared,
    SrPath(subject): SrPath<String>,
    SrQuery(params): Query,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let reasons = registry.check_compatibility(&subject, VersionSelector::Latest, &body.avro()?).await?;
    compatibility_answer(reasons, &params)
}

async fn get_global_config(State(registry): Shared) -> ApiResult {
    ok(json!({ "compatibilityLevel": registry.compatibility(None) }))
}

/// The subject's own level, or the global one when it has none (Confluent's
/// `defaultToGlobal=true`, whatever the parameter says; simpler for clients than a 40408).
async fn get_subject_config(State(registry): Shared, SrPath(subject): SrPath<String>) -> ApiResult {
    ok(json!({ "compatibilityLevel": registry.compatibility(Some(&subject)) }))
}

async fn put_global_config(State(registry): Shared, SrJson(body): SrJson<ConfigBody>) -> ApiResult {
    put_config(&registry, None, body).await
}

async fn put_subject_config(State(registry): Shared, SrPath(subject): SrPath<String>, SrJson(body): SrJson<ConfigBody>) -> ApiResult {
    put_config(&registry, Some(&subject), body).await
}

async fn put_config(registry: &Registry, subject: Option<&str>, body: ConfigBody) -> ApiResult {
    let level: CompatibilityLevel = body.compatibility.parse()?;
    ok(json!({ "compatibility": registry.set_compatibility(subject, level).await? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_method_and_path() {
        assert_eq!(action(&Method::GET, "/"), Action::Health);
        assert_eq!(action(&Method::GET, "/subjects/s/versions"), Action::Read);
        assert_eq!(action(&Method::POST, "/subjects/s"), Action::Read);
        assert_eq!(action(&Method::POST, "/compatibility/subjects/s/versions/latest"), Action::Read);
        assert_eq!(action(&Method::POST, "/subjects/s/versions"), Action::Register);
        assert_eq!(action(&Method::POST, "/subjects/a%2Fversions"), Action::Read);
        for (method, path) in [(Method::PUT, "/config"), (Method::PUT, "/config/s"), (Method::DELETE, "/subjects/s/versions/1"), (Method::POST, "/other")] {
            assert_eq!(action(&method, path), Action::Write, "{method} {path}");
        }
    }
}
