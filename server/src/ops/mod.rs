//! What operating the server needs beside the API: Prometheus [`metrics`], API-key
//! authentication ([`auth`]), graceful draining ([`drain`]) and the outgoing HTTP client
//! ([`http_client`]). Nothing here knows the handlers' state: each piece takes only what it
//! reads.

pub mod auth;
pub mod drain;
pub mod http_client;
pub mod metrics;
