//! The listener: HTTP/1.1 and h2c on one port, bounded header sizes, connection deadlines
//! (`connection`), a cap on open connections, and a graceful shutdown that stops accepting,
//! lets in-flight requests finish (bounded), then returns.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::sync::Semaphore;
use tower_service::Service;

use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::connection::{Activity, Deadlines, hold_until_sent, run_within};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::tls::Tls;
use crate::tls::challenge::{ALPN_ACME, alpn_config};
use crate::tls::store::Challenge;
use anyhow::anyhow;

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS handshake: a TLS-ALPN-01 validation gets its one-off certificate and is closed;
/// anyone else gets the resolver's certificate. `None` when the handshake fails (an unknown
/// SNI, a scanner): logged, never fatal.
async fn handshake(tls: &Tls, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    let accept = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let hello = start.client_hello();
        let wants_acme = hello.alpn().is_some_and(|mut p| p.any(|p| p == ALPN_ACME));
        if wants_acme {
            let domain = hello.server_name().unwrap_or_default().to_ascii_lowercase();
            let answer = tls
                .store
                .challenge(Challenge::TlsAlpn01, &domain)
                .await
                .ok_or_else(|| anyhow!("no pending TLS-ALPN-01 challenge"))?;
            let config = alpn_config(&domain, &answer)?;
            let _ = start.into_stream(config).await?;
            return Err(anyhow!("answered a TLS-ALPN-01 validation"));
        }
        start
            .into_stream(tls.server_config.clone())
            .await
            .map_err(anyhow::Error::from)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS connection not served");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Request heads larger than this are refused by hyper with 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 256;

/// What one listener allows its clients.
#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) deadlines: Deadlines,
    /// Beyond this many open connections, new ones wait in the kernel's backlog.
    pub(crate) max_connections: usize,
    /// Each connection's SO_SNDBUF, in bytes (`None`: the kernel's autotuning).
    pub(crate) send_buffer: Option<usize>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Limits {
    /// What the settings allow.
    pub(crate) fn new(settings: &Settings, metrics: Arc<Metrics>) -> Limits {
        Limits {
            deadlines: Deadlines {
                head: settings.header_read_timeout,
                idle: settings.keepalive_timeout,
                send: settings.send_timeout,
            },
            max_connections: settings.max_connections as usize,
            send_buffer: (settings.send_buffer_kb > 0).then_some(settings.send_buffer_kb as usize * 1024),
            metrics,
        }
    }
}

/// Serves one accepted connection: its requests go to `router`, its deadlines are watched.
async fn serve_connection<I>(io: I, router: Router, builder: Builder<TokioExecutor>, watcher: Watcher, limits: Limits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
        let guard = seen.begin();
        // Router is always ready: `call` on a clone needs no poll_ready.
        let answer = router.clone().call(req.map(Body::new));
        async move {
            let resp = answer.await.unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(hold_until_sent(resp, guard))
        }
    });
    let conn = watcher.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
    let conn = async {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    };
    if let Some(which) = run_within(conn, &activity, limits.deadlines).await {
        tracing::debug!(deadline = which, "connection closed by its deadline");
        limits.metrics.connection_deadline(which);
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.deadlines.head)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_STREAMS)
        // A peer that stops answering pings is gone, whatever its socket says.
        .keep_alive_interval(Some(limits.deadlines.idle.min(Duration::from_secs(30))))
        .keep_alive_timeout(Duration::from_secs(20));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: further clients wait in the backlog, not in memory.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = limits.send_buffer
            && let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes)
        {
            tracing::warn!(error = %e, "cannot set SEND_BUFFER_KB on a connection");
        }
        let (router, builder, watcher, limits) = (router.clone(), builder.clone(), graceful.watcher(), limits.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = limits.metrics.connection_opened();
            match tls {
                None => serve_connection(TokioIo::new(stream), router, builder, watcher, limits).await,
                Some(tls) => {
                    let Some(stream) = handshake(&tls, stream).await else {
                        return;
                    };
                    serve_connection(TokioIo::new(stream), router, builder, watcher, limits).await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting up to {drain:?} for in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish in {drain:?}; closing them");
    }
}
