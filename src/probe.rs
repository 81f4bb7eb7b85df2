//! `npg health`: probes a running npg and exits 0 when it serves, 1 when not, so container
//! health checks need no curl in the image.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::http::health::Summary;
use crate::status::Status;
use anyhow::anyhow;

#[derive(Parser, Debug)]
#[command(
    name = "npg health",
    about = "Probe a running npg; exit 0 when it serves, 1 when not"
)]
pub(crate) struct HealthArgs {
    /// The health endpoint (HTTP or HTTPS).
    #[arg(long, env = "NPG_HEALTH_URL", default_value = "http://127.0.0.1:3000/api/health")]
    pub(crate) url: String,

    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) timeout: u64,

    /// Extra root certificate (PEM) to trust for HTTPS (a private or test CA).
    #[arg(long)]
    pub(crate) ca_file: Option<PathBuf>,

    /// Fail when npg reports `degraded` (Redis unreachable), not only when it does not answer.
    #[arg(long)]
    pub(crate) strict: bool,
}

/// Runs the probe; the exit code for the process.
pub(crate) async fn run(args: &HealthArgs) -> anyhow::Result<()> {
    let builder = crate::upstream::client::builder(Some("health probe")).timeout(Duration::from_secs(args.timeout));
    let client = crate::upstream::client::trusting(builder, args.ca_file.as_deref())?.build()?;
    let resp = client
        .get(&args.url)
        .send()
        .await
        .map_err(|e| anyhow!("{}: {}", args.url, crate::upstream::error_chain(&e)))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| anyhow!("{}: {e}", args.url))?;
    let body: Summary =
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: not a health document ({e})", args.url))?;
    match (status.is_success(), body.status) {
        (true, Status::Ok) => Ok(()),
        (true, Status::Degraded) if !args.strict => Ok(()),
        (_, state) => Err(anyhow!("{}: HTTP {status}, status {}", args.url, state.as_str())),
    }
}
