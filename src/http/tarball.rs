//! Tarball responses: a cached tarball (small ones from memory, large ones streamed from disk),
//! or a download relayed as it arrives.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::npm::name::PackageName;
use crate::proxy::cache::disk::Cached;
use crate::proxy::tarballs::TarballBody;

use super::packument::etag_matches;

/// Tarballs never change once published, so name and size identify the bytes on any replica.
fn etag(name: &PackageName, file: &str, len: u64) -> String {
    let digest = Sha256::digest(format!("{name}/{file}"));
    format!("\"t{len:x}-{}\"", hex::encode(&digest[..8]))
}

pub(crate) fn respond(
    req: &HeaderMap,
    name: &PackageName,
    file: &str,
    body: TarballBody,
    hit: bool,
    metrics: Arc<Metrics>,
) -> Response<Body> {
    let authed = req.contains_key(header::AUTHORIZATION);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("x-cache", if hit { "HIT" } else { "MISS" })
        .header(
            header::CACHE_CONTROL,
            if authed {
                "private, no-cache"
            } else {
                "public, max-age=31536000, immutable"
            },
        );
    let body = match body {
        TarballBody::Cached(cached) => {
            let len = cached.size();
            let tag = etag(name, file, len);
            builder = builder.header(header::ETAG, &tag);
            if etag_matches(req, &[&tag]) {
                return builder
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Body::empty())
                    .expect("valid response");
            }
            metrics.bytes("tarball", len);
            builder = builder.header(header::CONTENT_LENGTH, len);
            match cached {
                Cached::Whole(bytes) => Body::from(bytes),
                Cached::File(chunks) => Body::from_stream(chunks.stream()),
            }
        }
        TarballBody::Download(rx, len) => {
            if let Some(len) = len {
                builder = builder.header(header::CONTENT_LENGTH, len);
                builder = builder.header(header::ETAG, etag(name, file, len));
            }
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    metrics.bytes("tarball", c.len() as u64);
                }
            });
            Body::from_stream(stream)
        }
    };
    let mut resp = builder.body(body).expect("valid response");
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    resp
}
