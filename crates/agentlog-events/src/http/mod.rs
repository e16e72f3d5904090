//! Serving HTTP on a port, shared by the API and the schema registry: the connection-capped
//! HTTP/1 server, the loopback guard against web pages, API keys and tenants' rates, and the
//! JSON error shape. It knows nothing of tasks or schemas.

pub mod access;
pub mod error;
pub mod loopback;
pub mod server;
