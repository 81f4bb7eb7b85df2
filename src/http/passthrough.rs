//! Everything npg does not answer itself goes to upstream byte for byte, streamed both ways,
//! with the client's headers (Authorization included, unless access control is on: then it
//! was npg's and is gone, see `super::auth`) and never cached: search, audit, dist-tags,
//! whoami, login, publish.

use axum::body::Body;
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

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Forwards `req` to `<REGISTRY_URL><relative>` (relative keeps its query).
pub async fn forward(app: &App, req: Request, relative: &str) -> Result<Response<Body>, ApiError> {
    let url = app.upstream.url(relative);
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    let mut builder = app.upstream.raw_request(parts.method.clone(), &url).headers(headers);
    let has_body =
        parts.headers.contains_key(header::CONTENT_LENGTH) || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        builder = builder.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let upstream = app.upstream.send("passthrough", builder).await?;
    let mut resp = Response::builder().status(upstream.status());
    if let Some(h) = resp.headers_mut() {
        copy_headers(upstream.headers(), h);
    }
    Ok(resp
        .body(Body::from_stream(upstream.bytes_stream()))
        .expect("valid response"))
}
