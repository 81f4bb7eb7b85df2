//! Every HTTP client npg builds starts here: the process-wide rustls provider installed, npg's
//! User-Agent, a connect timeout. Callers add their own deadlines.

use std::time::Duration;

/// `npg/<version>`, or `npg/<version> (<role>)` when `role` says who asks.
pub(crate) fn builder(role: Option<&str>) -> reqwest::ClientBuilder {
    // rustls needs one process-wide crypto provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let agent = match role {
        Some(role) => format!("npg/{} ({role})", env!("CARGO_PKG_VERSION")),
        None => concat!("npg/", env!("CARGO_PKG_VERSION")).to_string(),
    };
    reqwest::Client::builder()
        .user_agent(agent)
        .connect_timeout(Duration::from_secs(10))
}
