//! Outgoing HTTP (the router's remote tiers, `wick bench`, `wick route-eval`): reqwest over
//! rustls with the ring crypto provider. ring is already built for hf-hub; reqwest's default
//! provider (aws-lc) would add a long C build for the same TLS. [`error_chain`] words their
//! errors.

use std::sync::Once;

/// A reqwest client builder, with rustls' process-wide crypto provider installed first.
pub fn builder() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Err: another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// An error with its causes, `: `-joined (reqwest's own message hides whether the connection
/// was refused, reset or timed out). For the HTTP clients: bench, router, route-eval.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_https_client_builds() {
        // Building the TLS configuration is where a missing provider would fail.
        let client = super::builder().https_only(true).build();
        assert!(client.is_ok(), "{:?}", client.err());
    }
}
