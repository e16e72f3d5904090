//! The OpenAPI document, generated from the handlers' annotations. A test compares its paths
//! with the router's routes, so the two cannot drift apart.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, ops, reads, stream, tasks};

#[derive(OpenApi)]
#[openapi(
    info(title = "agentlog", description = "Run AI agents as consumer-group workers on an event log. Errors are JSON: {\"error\": {\"code\", \"message\", \"field\"}}."),
    paths(
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
        tasks::submit, tasks::submit_batch, tasks::get, tasks::list, tasks::outcome, tasks::cancel,
        tasks::dlq_list, tasks::dlq_resubmit,
        reads::agents, reads::agent_types, reads::jobs, reads::job, reads::stats,
        stream::outcomes,
        admin::replay, admin::replay_status, admin::snapshot,
    ),
    components(schemas(tasks::SubmitTask, tasks::SubmitBatch, tasks::Cancel)),
    modifiers(&Security),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

/// Every (method, path) the document describes, e.g. `("GET", "/v1/tasks/{id}")`, sorted.
pub fn documented_routes() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        ApiDoc::openapi().paths.paths.iter().flat_map(|(path, item)| operations(item).into_iter().map(move |(method, _)| (method.to_string(), path.clone()))).collect();
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
}
