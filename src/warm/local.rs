//! `npg warm --direct`: npg's own app, in this process, for the warm-up alone.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::cluster::redis::RedisState;
use crate::config::Cli;
use crate::http::routes::router;
use crate::http::server::{Limits, serve};
use crate::preflight::Preflight;
use clap::Parser;

/// How long a warm-up waits for the configured Redis to answer before it fills without it.
const REDIS_FIRST_ANSWER: Duration = Duration::from_secs(5);

/// `npg warm --direct`: npg as configured by the environment (its STORAGE_DIR, Redis and
/// policy; `Settings::local_only`), serving `work` alone on an ephemeral loopback port, then
/// stopped with its jobs (their leases released).
pub(crate) async fn with_local_npg<T>(work: impl AsyncFnOnce(url::Url) -> T) -> anyhow::Result<T> {
    let settings = Cli::try_parse_from(["npg"])?.settings.local_only();
    let checked = Preflight::run(&settings)?;
    let (app, jobs) = App::new(&settings, checked)?;
    let http = tokio::net::TcpListener::bind((settings.http_bind, 0)).await?;
    let base = url::Url::parse(&format!("http://{}", http.local_addr()?))?;
    let stop = CancellationToken::new();
    let router = router(app.clone());
    let limits = Limits::new(&settings, app.metrics.clone());
    let stopped = stop.clone().cancelled_owned();
    let server = serve(http, router, None, stopped, settings.shutdown_timeout, limits);
    let server = tokio::spawn(server);
    // A warm-up is run to fill the cluster's cache: it must not race the first check of Redis
    // (until then Redis counts as down and nothing is written to it).
    let deadline = tokio::time::Instant::now() + REDIS_FIRST_ANSWER;
    while app.redis.state() == RedisState::Disconnected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if app.redis.state() == RedisState::Disconnected {
        tracing::warn!("redis did not answer within {REDIS_FIRST_ANSWER:?}: warming without it");
    }
    let result = work(base).await;
    jobs.stop();
    stop.cancel();
    let _ = server.await;
    jobs.stopped(settings.shutdown_timeout).await;
    Ok(result)
}
