//! Per-request bookkeeping: URL length limit, metrics by route and status, a log line,
//! `X-Content-Type-Options: nosniff`, and `Connection: close` while the replica drains.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use crate::app::App;

/// The longest request target accepted (npm's longest paths are far below).
const MAX_URI_BYTES: usize = 8 * 1024;

/// Set by handlers as a response extension: the route label for metrics.
#[derive(Clone, Copy)]
pub(crate) struct RouteLabel(pub &'static str);

pub(crate) async fn observe(State(app): State<App>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let http1 = req.version() < Version::HTTP_2;
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().chars().take(256).collect::<String>());
    let resp = if uri_len > MAX_URI_BYTES {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "URI too long",
            format!("request target is longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let route = resp.extensions().get::<RouteLabel>().map_or("other", |r| r.0);
    let status = resp.status().as_u16();
    app.metrics.request(route, status, started.elapsed().as_secs_f64());
    // Streamed bodies (tarballs) count their own bytes as they go.
    if let Some(len) = axum::body::HttpBody::size_hint(resp.body())
        .exact()
        .filter(|_| method != axum::http::Method::HEAD)
    {
        app.metrics.bytes(route, len);
    }
    tracing::debug!(%method, path = path.unwrap_or_default(), status, route, ms = started.elapsed().as_millis() as u64, "request");
    // While draining, HTTP/1.1 clients are told to reconnect: their next connection goes
    // through the balancer to a replica that stays, instead of racing this one's close.
    let mut resp = resp;
    // Error bodies quote what the client sent: no browser may read them as anything but JSON.
    resp.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if http1 && app.draining.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
