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

/// `builder` trusting, besides the system's roots, the PEM certificate at `ca_file` (a private
/// or test CA), for the commands that ask a running npg (`npg health`, `npg status`).
pub(crate) fn trusting(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(path) = ca_file else {
        return Ok(builder);
    };
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(builder.add_root_certificate(cert))
}
