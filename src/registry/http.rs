//! Confluent Schema Registry REST API, the subset Kafka clients and serializers use.
//!
//! Request bodies are parsed as JSON whatever their content type (clients send
//! `application/vnd.schemaregistry.v1+json`, `application/vnd.schemaregistry+json`,
//! `application/json`, and curl users often nothing useful); answers are always
//! `application/vnd.schemaregistry.v1+json`, as Confluent's.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::compatibility::CompatibilityLevel;
use super::error::RegistryError;
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
        .route("/compatibility/subjects/{subject}/versions/{version}", post(check_compatibility))
        .route("/config", get(get_global_config).put(put_global_config))
        .route("/config/{subject}", get(get_subject_config).put(put_subject_config))
        .fallback(not_found)
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

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::BadRequest { reason: e.to_string() })
}

/// Ids in paths: anything that is not a u32 cannot name a schema.
fn parse_id(id: &str) -> Result<u32, RegistryError> {
    id.parse().map_err(|_| RegistryError::SchemaNotFound)
}

#[derive(Debug, Default, Deserialize)]
struct Flags {
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    verbose: bool,
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

async fn not_found() -> Response {
    sr_json(StatusCode::NOT_FOUND, &json!({ "error_code": 404, "message": "HTTP 404 Not Found" }))
}

async fn schema_by_id(State(registry): Shared, Path(id): Path<String>) -> ApiResult {
    let schema = registry.schema_by_id(parse_id(&id)?)?;
    ok(json!({ "schema": schema }))
}

async fn subjects_of_id(State(registry): Shared, Path(id): Path<String>, Query(flags): Query<Flags>) -> ApiResult {
    let mut subjects: Vec<String> = registry.subjects_of_id(parse_id(&id)?, flags.deleted)?.into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn versions_of_id(State(registry): Shared, Path(id): Path<String>, Query(flags): Query<Flags>) -> ApiResult {
    let usages = registry.subjects_of_id(parse_id(&id)?, flags.deleted)?;
    ok(Value::Array(usages.into_iter().map(|(subject, version)| json!({ "subject": subject, "version": version })).collect()))
}

async fn list_subjects(State(registry): Shared, Query(flags): Query<Flags>) -> ApiResult {
    ok(json!(registry.subjects(flags.deleted)))
}

async fn list_versions(State(registry): Shared, Path(subject): Path<String>, Query(flags): Query<Flags>) -> ApiResult {
    ok(json!(registry.versions(&subject, flags.deleted)?))
}

async fn register(State(registry): Shared, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let schema = parse_body::<SchemaBody>(&body)?.avro()?;
    let id = registry.register(&subject, &schema).await?;
    ok(json!({ "id": id }))
}

async fn lookup(State(registry): Shared, Path(subject): Path<String>, Query(flags): Query<Flags>, body: Bytes) -> ApiResult {
    let schema = parse_body::<SchemaBody>(&body)?.avro()?;
    ok(version_json(&registry.lookup(&subject, &schema, flags.deleted)?))
}

async fn get_version(State(registry): Shared, Path((subject, version)): Path<(String, String)>, Query(flags): Query<Flags>) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    ok(version_json(&registry.version(&subject, which, flags.deleted)?))
}

async fn get_version_schema(State(registry): Shared, Path((subject, version)): Path<(String, String)>, Query(flags): Query<Flags>) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    let found = registry.version(&subject, which, flags.deleted)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], found.schema).into_response())
}

async fn delete_version(State(registry): Shared, Path((subject, version)): Path<(String, String)>) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    ok(json!(registry.delete_version(&subject, which).await?))
}

async fn check_compatibility(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let which = VersionSelector::parse(&version)?;
    let schema = parse_body::<SchemaBody>(&body)?.avro()?;
    let reasons = registry.check_compatibility(&subject, which, &schema)?;
    let mut answer = json!({ "is_compatible": reasons.is_empty() });
    if flags.verbose {
        answer["messages"] = json!(reasons);
    }
    ok(answer)
}

async fn get_global_config(State(registry): Shared) -> ApiResult {
    ok(json!({ "compatibilityLevel": registry.compatibility(None) }))
}

/// The subject's own level, or the global one when it has none (Confluent's
/// `defaultToGlobal=true`; simpler for clients than a 40408).
async fn get_subject_config(State(registry): Shared, Path(subject): Path<String>) -> ApiResult {
    ok(json!({ "compatibilityLevel": registry.compatibility(Some(&subject)) }))
}

async fn put_global_config(State(registry): Shared, body: Bytes) -> ApiResult {
    put_config(&registry, None, &body).await
}

async fn put_subject_config(State(registry): Shared, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    put_config(&registry, Some(&subject), &body).await
}

async fn put_config(registry: &Registry, subject: Option<&str>, body: &Bytes) -> ApiResult {
    let level: CompatibilityLevel = parse_body::<ConfigBody>(body)?.compatibility.parse()?;
    ok(json!({ "compatibility": registry.set_compatibility(subject, level).await? }))
}
