//! The OpenAPI document, generated from the handlers' annotations. A test compares its paths
//! with the router's routes, so the two cannot drift apart.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ops, reads, stream, tasks};

#[derive(OpenApi)]
#[openapi(
    info(title = "agentlog", description = "Run AI agents as consumer-group workers on an event log. Errors are JSON: {\"error\": {\"code\", \"message\", \"field\"}}."),
    paths(
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
        tasks::submit, tasks::submit_batch, tasks::get, tasks::list, tasks::outcome, tasks::cancel,
        tasks::dlq_list, tasks::dlq_resubmit,
        reads::agents, reads::agent_types, reads::jobs, reads::job, reads::stats,
        stream::outcomes,
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

/// Every (method, path) the document describes, e.g. `("GET", "/v1/tasks/{id}")`.
pub fn documented_routes() -> Vec<(String, String)> {
    let doc = ApiDoc::openapi();
    let mut out = Vec::new();
    for (path, item) in doc.paths.paths {
        for (method, op) in [
            ("GET", item.get.is_some()),
            ("POST", item.post.is_some()),
            ("PUT", item.put.is_some()),
            ("DELETE", item.delete.is_some()),
            ("PATCH", item.patch.is_some()),
        ] {
            if op {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    out.sort();
    out
}
