//! Request extractors whose rejections are [`RegistryError`]s.
//!
//! Why: axum's own extractors answer a bad query string, path or body in plain text, and a
//! Confluent client then cannot read the error at all (confluent-kafka reports "Unknown
//! Schema Registry Error" and the caller cannot branch on `error_code`). Each wrapper here
//! maps its rejection to a typed error, so the one `IntoResponse` of [`RegistryError`]
//! shapes every answer the registry gives, `{"error_code": N, "message": "..."}`.

use std::error::Error as _;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::RegistryError;

/// The query string as `T` (see [`super::params::QueryParams`]).
pub struct SrQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for SrQuery<T> {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::try_from_uri(&parts.uri).map(|Query(value)| SrQuery(value)).map_err(|rejection| {
            // The source names the parameter ("deleted: invalid value: …"); the rejection's
            // own text only prefixes it with axum's wording.
            let reason = match &rejection {
                QueryRejection::FailedToDeserializeQueryString(inner) => inner.source().map(ToString::to_string),
                _ => None,
            };
            RegistryError::InvalidQuery { reason: reason.unwrap_or_else(|| rejection.body_text()) }
        })
    }
}

/// Path segments as `T`. Segments are strings here, so this fails only on a segment that is
/// not UTF-8 once percent-decoded.
pub struct SrPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for SrPath<T> {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| SrPath(value))
            .map_err(|rejection: PathRejection| RegistryError::InvalidPath { reason: rejection.body_text() })
    }
}

/// A JSON body as `T`, whatever the request's content type: clients send
/// `application/vnd.schemaregistry.v1+json`, `application/vnd.schemaregistry+json`,
/// `application/json`, and curl users often nothing useful.
pub struct SrJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for SrJson<T> {
    type Rejection = RegistryError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state).await.map_err(|rejection: BytesRejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                RegistryError::BodyTooLarge { reason: rejection.body_text() }
            } else {
                RegistryError::UnreadableBody { reason: rejection.body_text() }
            }
        })?;
        parse_json(&body).map(SrJson)
    }
}

/// Confluent (Jackson behind rest-utils) tells apart text that is not JSON (400) from JSON
/// of the wrong shape (422); clients may branch on the code, so keep the distinction.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => RegistryError::InvalidBody { reason: e.to_string() },
        _ => RegistryError::MalformedJson { reason: e.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[allow(dead_code)]
        schema: String,
    }

    #[test]
    fn not_json_is_400_and_wrong_shape_is_422() {
        let codes = |body: &[u8]| parse_json::<Body>(body).map(|_| ()).map_err(|e| e.codes().1);
        assert_eq!(codes(b"{\"schema\": \"x\"}"), Ok(()));
        assert_eq!(codes(b"{\"schema\": "), Err(400));
        assert_eq!(codes(b"not json"), Err(400));
        assert_eq!(codes(b""), Err(400));
        assert_eq!(codes(b"{\"schema\": 3}"), Err(422));
        assert_eq!(codes(b"{}"), Err(422));
    }
}
