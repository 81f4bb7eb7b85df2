//! Everything npg does not answer itself goes to upstream byte for byte, streamed both ways,
//! with the client's end-to-end headers (Authorization included, unless access control is
//! on: then it was npg's and is gone, see `super::auth`) and never cached: search, audit,
//! dist-tags, whoami, login, publish.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, Response, header};

use super::errors::ApiError;
use crate::app::App;

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Addressing a client can write anything into: npg does not vouch for it upstream.
fn client_addressing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto" | "forwarded" | "x-real-ip"
    )
}

/// Upstream's cookies belong to npg's session with it, not to npg's clients.
fn upstream_cookie(name: &HeaderName) -> bool {
    name == header::SET_COOKIE || name.as_str() == "set-cookie2"
}

/// The headers a message's `Connection` header names: hop-by-hop too (RFC 9110 §7.6.1).
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect()
}

/// The end-to-end headers of `from`, less those `dropped` says.
fn relayed(from: &HeaderMap, dropped: fn(&HeaderName) -> bool) -> HeaderMap {
    let named = named_by_connection(from);
    let mut to = HeaderMap::new();
    for (name, value) in from {
        if !hop_by_hop(name) && !dropped(name) && !named.contains(name) {
            to.append(name.clone(), value.clone());
        }
    }
    to
}

/// Forwards `req` to `<REGISTRY_URL><relative>` (relative keeps its query).
pub(crate) async fn forward(app: &App, req: Request, relative: &str) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = relayed(&parts.headers, client_addressing);
    // From the body itself, not the headers: an HTTP/2 request needs no Content-Length.
    let body = (!body.is_end_stream()).then(|| reqwest::Body::wrap_stream(body.into_data_stream()));
    let upstream = app
        .upstream
        .passthrough(parts.method.clone(), relative, headers, body)
        .await?;
    let mut resp = Response::builder().status(upstream.status());
    if let Some(h) = resp.headers_mut() {
        *h = relayed(upstream.headers(), upstream_cookie);
    }
    Ok(resp
        .body(Body::from_stream(upstream.bytes_stream()))
        .expect("valid response"))
}
