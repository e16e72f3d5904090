//! The OpenAPI document, generated from the handlers' annotations. A test compares its paths
//! with the router's routes, so the two cannot drift apart.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::{ApiState, admin, ops, reads, signals, stream, task_stream, tasks};

#[derive(OpenApi)]
#[openapi(
    info(title = "agentlog", description = "Run AI agents as consumer-group workers on an event log. Errors are JSON: {\"error\": {\"code\", \"message\", \"field\", \"detail\" (when there is one)}}."),
    paths(
        ops::healthz, ops::readyz, ops::metrics, openapi,
        tasks::submit, tasks::submit_batch, tasks::get, tasks::list, tasks::outcome, tasks::cancel,
        tasks::dlq_list, tasks::dlq_resubmit,
        reads::agents, reads::agent_types, reads::jobs, reads::job, reads::stats,
        stream::outcomes,
        task_stream::task_stream,
        signals::signal,
        admin::replay, admin::replay_status, admin::snapshot,
    ),
    components(schemas(tasks::SubmitTask, tasks::SubmitBatch, tasks::Cancel, signals::SendSignal)),
    modifiers(&Security, &Refusals),
)]
pub struct ApiDoc;

/// Serves this document, with the configured agent types' input schemas.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "this document")))]
pub async fn openapi(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(document(state.agents.keys().map(String::as_str), state.config.max_batch))
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

/// What any operation may answer, whatever its handler: 403 for a request from outside this
/// machine in loopback mode (`http::loopback`).
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.options, &mut item.head, &mut item.patch, &mut item.trace]
                .into_iter()
                .flatten()
            {
                op.responses.responses.entry("403".to_string()).or_insert_with(|| {
                    utoipa::openapi::ResponseBuilder::new()
                        .description(
                            "refused: without api.keys, a Host or (on POST) an Origin that is not this machine's loopback name; or a tenant not allowed here",
                        )
                        .build()
                        .into()
                });
            }
        }
    }
}

/// The document as this deployment serves it: the generated one, with what depends on the
/// configuration filled in — the declared agent types, the lanes, the batch size limit — so
/// a client generated from it (or a fuzzer) sends what the handlers accept.
pub fn document<'a>(agent_types: impl IntoIterator<Item = &'a str>, max_batch: usize) -> serde_json::Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        // Plain data with string keys: it always serialises.
        Err(_) => return serde_json::Value::Null,
    };
    let mut types: Vec<&str> = agent_types.into_iter().collect();
    types.sort_unstable();
    if let Some(property) = doc.pointer_mut("/components/schemas/SubmitTask/properties/agent_type") {
        property["enum"] = serde_json::json!(types);
    }
    if let Some(property) = doc.pointer_mut("/components/schemas/SubmitTask/properties/lane") {
        // Optional: null is the default lane (normal).
        let mut lanes: Vec<serde_json::Value> = crate::events::Lane::ALL.iter().map(|l| serde_json::json!(l.as_str())).collect();
        lanes.push(serde_json::Value::Null);
        property["enum"] = serde_json::Value::Array(lanes);
    }
    if let Some(property) = doc.pointer_mut("/components/schemas/SubmitBatch/properties/tasks") {
        property["minItems"] = serde_json::json!(1);
        property["maxItems"] = serde_json::json!(max_batch);
    }
    doc
}

/// Every (method, path) the document describes, e.g. `("GET", "/v1/tasks/{id}")`, sorted.
pub fn documented_routes() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = ApiDoc::openapi()
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| operations(item).into_iter().map(move |(method, _)| (method.to_string(), path.clone())))
        .collect();
    out.sort();
    out
}

/// The operations of a path, by method (every method OpenAPI has).
fn operations(item: &utoipa::openapi::PathItem) -> Vec<(&'static str, &utoipa::openapi::path::Operation)> {
    [
        ("GET", &item.get),
        ("PUT", &item.put),
        ("POST", &item.post),
        ("DELETE", &item.delete),
        ("OPTIONS", &item.options),
        ("HEAD", &item.head),
        ("PATCH", &item.patch),
        ("TRACE", &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::openapi::path::ParameterIn;

    use super::*;

    fn served() -> Vec<(String, String)> {
        super::super::routes().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect()
    }

    /// The router is built from `api::routes()`: each of them must be in the document, and
    /// each operation of the document must be served.
    #[test]
    fn the_document_describes_exactly_the_routes_served() {
        let served = served();
        let unique: BTreeSet<_> = served.iter().cloned().collect();
        assert_eq!(unique.len(), served.len(), "api::routes() lists a route twice: {served:?}");
        let documented: BTreeSet<_> = documented_routes().into_iter().collect();
        let undocumented: Vec<_> = unique.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&unique).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "OpenAPI and router disagree.\n served but not documented (add the handler to `paths(...)` in src/api/openapi.rs): {undocumented:?}\n documented but not served (add it to api::routes()): {unserved:?}"
        );
    }

    /// Clients and Schemathesis read `/openapi.json` as OpenAPI 3.1; a path parameter they
    /// cannot fill in (undeclared) would make the document unusable.
    #[test]
    fn the_document_is_openapi_3_1_with_every_path_parameter_declared() {
        let doc = ApiDoc::openapi();
        let json = serde_json::to_value(&doc).expect("the document serializes");
        let version = json["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3.1."), "openapi version {version}");
        let mut operation_ids = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let in_path: BTreeSet<&str> = path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            for (method, op) in operations(item) {
                let declared: BTreeSet<&str> =
                    op.parameters.iter().flatten().filter(|p| matches!(p.parameter_in, ParameterIn::Path)).map(|p| p.name.as_str()).collect();
                assert_eq!(in_path, declared, "{method} {path}: path parameters in the path vs declared");
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(!id.is_empty() && operation_ids.insert(id.clone()), "{method} {path}: operationId `{id}` missing or not unique");
            }
        }
    }

    /// Every success of a JSON operation documents its body, so a generated client knows the
    /// answer's fields and Schemathesis checks each answer against them. Not JSON: the
    /// liveness text, the Prometheus text, the document itself and the SSE stream.
    #[test]
    fn every_json_success_documents_its_answer() {
        let not_json = ["/healthz", "/metrics", "/openapi.json", "/v1/stream/outcomes", "/v1/tasks/{id}/stream"];
        let doc = ApiDoc::openapi();
        let mut missing = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
                for (status, response) in &op.responses.responses {
                    let utoipa::openapi::RefOr::T(response) = response else { continue };
                    let documented = response.content.get("application/json").is_some_and(|c| c.schema.is_some());
                    if status.starts_with('2') && !not_json.contains(&path.as_str()) && !documented {
                        missing.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "answers without a documented body (add `body = answers::...`): {missing:?}");
        let names: BTreeSet<&String> = doc.components.as_ref().map(|c| c.schemas.keys().collect()).unwrap_or_default();
        for schema in ["Task", "Submitted", "TaskPage", "DeadLetterPage", "Stats", "UsageStats", "ModelUsage", "Usage", "Readiness", "ReplayState"] {
            assert!(names.contains(&schema.to_string()), "schema {schema} is not in components: {names:?}");
        }
    }

    /// What the handlers check beyond the types is in the served document, so generated
    /// clients and fuzzers send what is accepted.
    #[test]
    fn the_served_document_names_the_declared_types_lanes_and_limits() {
        let doc = document(["summarize", "echo"], 50);
        let task = &doc["components"]["schemas"]["SubmitTask"]["properties"];
        assert_eq!(task["agent_type"]["enum"], serde_json::json!(["echo", "summarize"]));
        assert_eq!(task["lane"]["enum"], serde_json::json!(["critical", "high", "normal", "low", null]));
        assert_eq!((task["task_id"]["minLength"].as_u64(), task["task_id"]["maxLength"].as_u64()), (Some(1), Some(200)), "{task}");
        assert_eq!(task["max_attempts"]["minimum"].as_f64(), Some(1.0), "{task}");
        assert_eq!(task["deadline_ms"]["minimum"].as_f64(), Some(1.0), "{task}");
        let tasks = &doc["components"]["schemas"]["SubmitBatch"]["properties"]["tasks"];
        assert_eq!((tasks["minItems"].as_u64(), tasks["maxItems"].as_u64()), (Some(1), Some(50)), "{tasks}");
    }
}
