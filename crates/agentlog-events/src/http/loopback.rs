//! Loopback mode is safe from web pages. Without API keys the API serves anyone who can reach
//! its loopback address, and a browser on this machine reaches it for any page it shows: a
//! page of evil.example can POST to `http://127.0.0.1:8080` (CSRF: the browser sends it even
//! though the page cannot read the answer), and once evil.example resolves to 127.0.0.1 (DNS
//! rebinding) the page can read answers too. Either could replay the projection, snapshot it
//! or cancel tasks. So in that mode:
//!
//! - the `Host` must be `localhost` or a loopback address, with the server's port: a rebound
//!   page sends its own name;
//! - a state-changing request (POST, PUT, DELETE, PATCH) with an `Origin` must come from such
//!   a host: browsers send `Origin` on them, curl and SDKs do not and keep working.
//!
//! With keys configured neither check applies: a page cannot send a key it does not have
//! (browsers attach no `Authorization` by themselves), and a reverse proxy on this machine may
//! rightly forward a public `Host` to a loopback listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Whether a server may listen on `address`: without keys only on a loopback address, since
/// anyone who reaches it could otherwise change what it serves. Shared by the API and the
/// schema registry.
pub fn may_listen(address: &SocketAddr, keys_configured: bool) -> bool {
    keys_configured || address.ip().is_loopback()
}

/// The checks of loopback mode, for a server on `port`.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    port: u16,
}

impl Guard {
    /// The guard for a server bound to `bound`, or `None` when keys are configured.
    pub fn for_server(bound: SocketAddr, keys_configured: bool) -> Option<Guard> {
        (!keys_configured).then_some(Guard { port: bound.port() })
    }

    /// Why a request is refused, if it is.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return Err(refused(
                "foreign_host",
                format!(
                    "a Host header naming this server is required: without api.keys the API answers only requests to localhost:{} or a loopback address",
                    self.port
                ),
            ));
        };
        if !self.is_local(host, Some(80)) {
            return Err(refused(
                "foreign_host",
                format!(
                    "Host `{host}` is not this server: without api.keys the API answers only requests to localhost:{port} or a loopback address with port {port} (a web page reaching it through DNS rebinding sends its own name)",
                    port = self.port
                ),
            ));
        }
        if matches!(*method, Method::POST | Method::PUT | Method::DELETE | Method::PATCH)
            && let Some(origin) = headers.get(header::ORIGIN)
        {
            let text = origin.to_str().unwrap_or("(not text)");
            if !self.is_local_origin(text) {
                return Err(refused(
                    "foreign_origin",
                    format!(
                        "a {method} from a web page of `{text}` is refused: without api.keys only pages of localhost:{} or a loopback address may change anything (requests without Origin, as curl and SDKs send them, are not affected)",
                        self.port
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `localhost` or a loopback address, with this server's port (or none, when the
    /// default port of the scheme is this server's).
    fn is_local(&self, authority: &str, default_port: Option<u16>) -> bool {
        let (host, port) = match authority.strip_prefix('[') {
            // `[::1]:8080`
            Some(rest) => match rest.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, after)) => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return false,
                },
                None => return false,
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let local = host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let this_port = match port {
            Some(port) => port.parse::<u16>().is_ok_and(|p| p == self.port),
            None => default_port == Some(self.port),
        };
        local && this_port
    }

    /// An `Origin` (`scheme://host[:port]`) of a page of this server. `null` (a sandboxed or
    /// local-file page) is not.
    fn is_local_origin(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        if let Some(authority) = origin.strip_prefix("http://") {
            self.is_local(authority, Some(80))
        } else if let Some(authority) = origin.strip_prefix("https://") {
            self.is_local(authority, Some(443))
        } else {
            false
        }
    }
}

fn refused(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// Middleware: refuses what `Guard::check` refuses, before any handler runs.
pub async fn refuse_foreign(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    if let Err(error) = guard.check(request.method(), request.headers()) {
        tracing::info!(code = error.code, method = %request.method(), "refused a request from outside this machine's loopback names");
        return error.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.clone(), value.parse().expect("header value"))).collect()
    }

    #[test]
    fn hosts_and_origins_of_this_machine_pass_and_others_do_not() {
        let guard = Guard { port: 8080 };
        for host in ["localhost:8080", "LOCALHOST:8080", "127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080"] {
            assert!(guard.check(&Method::GET, &headers(&[(header::HOST, host)])).is_ok(), "{host}");
        }
        for host in ["evil.example:8080", "localhost:8081", "localhost", "[::1]", "[::1]x", "10.0.0.1:8080", "localhost.evil.example:8080", ""] {
            assert!(guard.check(&Method::GET, &headers(&[(header::HOST, host)])).is_err(), "{host}");
        }
        assert!(guard.check(&Method::GET, &HeaderMap::new()).is_err(), "no Host");
        let local = (header::HOST, "127.0.0.1:8080");
        for origin in ["http://localhost:8080", "http://127.0.0.1:8080/", "https://[::1]:8080"] {
            assert!(guard.check(&Method::POST, &headers(&[local.clone(), (header::ORIGIN, origin)])).is_ok(), "{origin}");
        }
        for origin in ["http://evil.example", "http://localhost:9999", "null", "file://", "http://localhost"] {
            assert!(guard.check(&Method::DELETE, &headers(&[local.clone(), (header::ORIGIN, origin)])).is_err(), "{origin}");
            // Reads with a foreign Origin pass: without CORS headers the page cannot read them.
            assert!(guard.check(&Method::GET, &headers(&[local.clone(), (header::ORIGIN, origin)])).is_ok(), "{origin}");
        }
        let on_80 = Guard { port: 80 };
        assert!(on_80.check(&Method::POST, &headers(&[(header::HOST, "localhost"), (header::ORIGIN, "http://localhost")])).is_ok());
        assert!(on_80.check(&Method::POST, &headers(&[(header::HOST, "localhost"), (header::ORIGIN, "https://localhost")])).is_err());
    }
}
