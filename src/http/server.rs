//! The listener: HTTP/1.1 and h2c on one port, bounded header sizes and read times, and a
//! graceful shutdown that stops accepting, lets in-flight requests finish (bounded), then
//! returns.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;

use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::Tls;
use crate::tls::challenge::{ALPN_ACME, alpn_config};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS handshake: a TLS-ALPN-01 validation gets its one-off certificate and is closed;
/// anyone else gets the resolver's certificate. `None` when the handshake fails (an unknown
/// SNI, a scanner): logged, never fatal.
async fn handshake(tls: &Tls, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    let accept = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
            .await
            .map_err(|e| e.to_string())?;
        let hello = start.client_hello();
        let wants_acme = hello.alpn().is_some_and(|mut p| p.any(|p| p == ALPN_ACME));
        if wants_acme {
            let domain = hello.server_name().unwrap_or_default().to_ascii_lowercase();
            let answer = tls
                .store
                .challenge("alpn", &domain)
                .await
                .ok_or("no pending TLS-ALPN-01 challenge")?;
            let config = alpn_config(&domain, &answer)?;
            let _ = start.into_stream(config).await.map_err(|e| e.to_string())?;
            return Err("answered a TLS-ALPN-01 validation".to_string());
        }
        start
            .into_stream(tls.server_config.clone())
            .await
            .map_err(|e| e.to_string())
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

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let service = TowerToHyperService::new(router.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        match tls.clone() {
            None => {
                let conn = watcher.watch(
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned(),
                );
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(tls) => {
                tokio::spawn(async move {
                    let Some(stream) = handshake(&tls, stream).await else {
                        return;
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting up to {drain:?} for in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish in {drain:?}; closing them");
    }
}
