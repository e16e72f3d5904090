//! Registry errors and their Confluent-shaped HTTP bodies.
//!
//! Clients of a Confluent Schema Registry (the Java/Python serializers, schema_registry_converter)
//! branch on `error_code`, not on the message, so every variant maps to the exact code Confluent
//! uses for the same situation.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::log::LogError;

/// What a registry operation can fail with. The HTTP layer turns each into Confluent's body
/// `{"error_code": N, "message": "..."}` with the matching status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{subject}' not found.")]
    SubjectNotFound { subject: String },

    #[error("Version {version} not found.")]
    VersionNotFound { subject: String, version: String },

    #[error("Schema not found")]
    SchemaNotFound,

    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\" ({level}): {}", reasons.join("; "))]
    Incompatible { subject: String, level: String, reasons: Vec<String> },

    #[error("Invalid schema: {reason}")]
    InvalidSchema { reason: String },

    #[error("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion { version: String },

    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive (got '{level}')"
    )]
    InvalidCompatibilityLevel { level: String },

    /// The request body is JSON, but not of the shape the endpoint expects.
    #[error("Unprocessable request body: {reason}")]
    InvalidBody { reason: String },

    /// The request body is not JSON at all.
    #[error("Malformed JSON in the request body: {reason}")]
    MalformedJson { reason: String },

    /// The request body could not be read (the connection broke, or bad chunked encoding).
    #[error("Unreadable request body: {reason}")]
    UnreadableBody { reason: String },

    /// The request body is over the server's size limit.
    #[error("Request body too large: {reason}")]
    BodyTooLarge { reason: String },

    /// A query parameter has a value its endpoint cannot read; the reason names it.
    #[error("Invalid query parameter {reason}")]
    InvalidQuery { reason: String },

    /// A path segment could not be decoded.
    #[error("Invalid request path: {reason}")]
    InvalidPath { reason: String },

    /// No route has this path.
    #[error("HTTP 404 Not Found")]
    RouteNotFound,

    /// The path exists, but not with this HTTP method.
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,

    /// A request this registry understands but deliberately does not carry out.
    #[error("Operation not permitted: {reason}")]
    OperationNotPermitted { reason: String },

    /// No valid API key (keys are configured).
    #[error("Unauthorized: {reason}")]
    Unauthorized { reason: String },

    /// A valid key whose tenant may not do this (a write by a non-admin tenant), or a request
    /// from outside this machine in loopback mode.
    #[error("Forbidden: {reason}")]
    Forbidden { reason: String },

    /// The compatibility check did not finish within `registry.compatibility_timeout_ms`.
    #[error(
        "Invalid schema: the compatibility check took longer than {budget_ms} ms (registry.compatibility_timeout_ms); a smaller schema (fewer enum symbols) checks faster"
    )]
    CompatibilityTimeout { budget_ms: u64 },

    /// The server would serve the network without keys.
    #[error(
        "the schema registry's address {address} is not a loopback address and no api.keys are configured: without keys the registry only serves this machine"
    )]
    NotLoopback { address: String },

    /// The schemas topic could not be read or written.
    #[error("Error in the backend data store ({operation}): {source}")]
    Storage {
        operation: &'static str,
        #[source]
        source: LogError,
    },

    /// A write was durable but this instance did not see it applied in time (the tail is stuck).
    #[error("Operation timed out: {operation} after {after_ms} ms")]
    Timeout { operation: &'static str, after_ms: u64 },

    /// A stored record could not be encoded (never expected; kept typed rather than panicking).
    #[error("Error while encoding a registry record: {reason}")]
    Encoding { reason: String },

    /// The HTTP server could not run (bind/accept failure).
    #[error("schema registry HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

impl RegistryError {
    /// Confluent's `(HTTP status, error_code)` pair for this error.
    pub fn codes(&self) -> (StatusCode, u32) {
        match self {
            RegistryError::SubjectNotFound { .. } => (StatusCode::NOT_FOUND, 40401),
            RegistryError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            RegistryError::SchemaNotFound => (StatusCode::NOT_FOUND, 40403),
            RegistryError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            RegistryError::InvalidSchema { .. } | RegistryError::CompatibilityTimeout { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            RegistryError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, 40101),
            RegistryError::Forbidden { .. } => (StatusCode::FORBIDDEN, 40301),
            RegistryError::InvalidVersion { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            RegistryError::InvalidCompatibilityLevel { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            RegistryError::OperationNotPermitted { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42205),
            // rest-utils' generic codes: the HTTP status as error_code.
            RegistryError::InvalidBody { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            RegistryError::MalformedJson { .. }
            | RegistryError::UnreadableBody { .. }
            | RegistryError::InvalidQuery { .. }
            | RegistryError::InvalidPath { .. } => (StatusCode::BAD_REQUEST, 400),
            RegistryError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 413),
            RegistryError::RouteNotFound => (StatusCode::NOT_FOUND, 404),
            RegistryError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            RegistryError::Storage { .. } | RegistryError::Encoding { .. } | RegistryError::Io(_) | RegistryError::NotLoopback { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, 50001)
            }
            RegistryError::Timeout { .. } => (StatusCode::INTERNAL_SERVER_ERROR, 50002),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.codes();
        if status.is_server_error() {
            tracing::error!(error_code = code, error = %self, "schema registry request failed");
        } else {
            tracing::debug!(error_code = code, error = %self, "schema registry request rejected");
        }
        super::answer::sr_json(status, &json!({ "error_code": code, "message": self.to_string() }))
    }
}
