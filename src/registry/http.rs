//! Confluent Schema Registry REST API, the subset Kafka clients and serializers use.
//!
//! Answers are always `application/vnd.schemaregistry.v1+json`, as Confluent's, errors
//! included: handlers take their inputs through the extractors of [`super::extract`] and
//! return [`RegistryError`], and unknown routes and methods are errors too, so no answer
//! leaves in axum's plain-text shape. Query flags are parsed by [`super::params`].

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::compatibility::CompatibilityLevel;
use super::error::RegistryError;
use super::extract::{SrJson, SrPath, SrQuery};
use super::params::{QueryParams, Visibility};
use super::state::{SubjectVersion, VersionSelector};
use super::Registry;

/// The media type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Shared = State<Arc<Registry>>;
type ApiResult = Result<Response, RegistryError>;

/// The registry's routes, with the registry as state. Mountable into a larger axum app
/// (`Router::merge` / `nest`) or served alone by [`serve`].
pub fn router(registry: Arc<Registry>) -> Router {
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
        .with_state(registry)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled, then finishes in-flight
/// requests (graceful shutdown). The registry itself (its tail task) is closed by its owner.
pub async fn serve(registry: Arc<Registry>, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RegistryError> {
    let address = listener.local_addr()?;
    tracing::info!(%address, topic = registry.topic(), "schema registry listening");
    axum::serve(listener, router(registry)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    tracing::info!(%address, "schema registry stopped");
    Ok(())
}

/// A JSON answer with Confluent's media type.
pub(crate) fn sr_json(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], Body::from(bytes)).into_response()
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
    let mut subjects: Vec<String> =
        registry.subjects_of_id(parse_id(&id)?, params.deleted.get())?.into_iter().map(|(s, _)| s).collect();
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

async fn register(State(registry): Shared, SrPath(subject): SrPath<String>, SrJson(body): SrJson<SchemaBody>) -> ApiResult {
    let id = registry.register(&subject, &body.avro()?).await?;
    ok(json!({ "id": id }))
}

async fn lookup(
    State(registry): Shared,
    SrPath(subject): SrPath<String>,
    SrQuery(params): Query,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    ok(version_json(&registry.lookup(&subject, &body.avro()?, params.deleted.get())?))
}

async fn get_version(State(registry): Shared, SrPath((subject, version)): SrPath<(String, String)>, SrQuery(params): Query) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    ok(version_json(&registry.version(&subject, which, params.deleted.get())?))
}

async fn get_version_schema(
    State(registry): Shared,
    SrPath((subject, version)): SrPath<(String, String)>,
    SrQuery(params): Query,
) -> ApiResult {
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
    let reasons = registry.check_compatibility(&subject, which, &body.avro()?)?;
    compatibility_answer(reasons, &params)
}

/// Against the versions the subject's level names (all of them for transitive levels).
async fn check_compatibility_all(
    State(registry): Shared,
    SrPath(subject): SrPath<String>,
    SrQuery(params): Query,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let reasons = registry.check_compatibility(&subject, VersionSelector::Latest, &body.avro()?)?;
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
