//! The HTTP client to the upstream registry: packument fetches (conditional, decoded, size
//! bounded), tarball downloads and passthrough requests (both byte for byte).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::{StatusCode, header};

use crate::budget::Reservation;
use crate::metrics::Metrics;
use crate::npm::name::PackageName;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    #[error("upstream unreachable: {0}")]
    Network(String),
    #[error("upstream sent a bad body: {0}")]
    Body(String),
}

impl UpstreamError {
    fn from_reqwest(e: reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            UpstreamError::Timeout
        } else {
            UpstreamError::Network(error_chain(&e))
        }
    }
}

/// An error and its causes on one line (reqwest's own message hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A response's `ETag`, if it has a readable one.
pub fn etag_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Reads a whole body, refusing more than `max` bytes, so no response grows without bound in
/// memory; the error says which limit was hit or what broke.
pub async fn read_bounded(resp: reqwest::Response, max: usize) -> Result<Bytes, String> {
    read_within(resp, max, None).await
}

/// `read_bounded`, holding `reservation` of the memory budget for what has arrived.
async fn read_within(
    mut resp: reqwest::Response,
    max: usize,
    mut reservation: Option<&mut Reservation>,
) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("body cut off: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("body larger than {max} bytes"));
        }
        body.reserve(chunk.len());
        if let Some(r) = reservation.as_deref_mut() {
            // What is allocated, not what is filled: a buffer grows by doubling.
            r.grow_to(body.capacity()).await?;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub enum Fetched {
    Modified { body: Bytes, etag: Option<String> },
    NotModified,
    NotFound,
}

pub struct Upstream {
    base: String,
    /// Decodes gzip: for packuments npg reads itself.
    decoding: reqwest::Client,
    /// Leaves bodies alone: tarballs and passthrough are relayed byte for byte.
    raw: reqwest::Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// `base` ends with `/`; `timeout` bounds the wait for response headers and each read.
    pub fn new(base: String, timeout: Duration, metrics: Arc<Metrics>) -> anyhow::Result<Upstream> {
        // rustls needs one process-wide crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("npg/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10).min(timeout))
                .read_timeout(timeout)
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::limited(5))
        };
        Ok(Upstream {
            base,
            decoding: builder().gzip(true).build()?,
            raw: builder().gzip(false).build()?,
            timeout,
            metrics,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The upstream URL of a path relative to the registry base (`-/v1/search?text=x`).
    pub fn url(&self, relative: &str) -> String {
        format!("{}{}", self.base, relative.trim_start_matches('/'))
    }

    /// Sends a request, bounding the wait for headers, and records the outcome.
    pub async fn send(
        &self,
        kind: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, req.send()).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r.map_err(UpstreamError::from_reqwest),
        };
        let outcome = match &result {
            Ok(r) if r.status() == StatusCode::NOT_MODIFIED => "not_modified",
            Ok(r) if r.status() == StatusCode::NOT_FOUND => "not_found",
            Ok(r) if r.status().is_server_error() => "error",
            Ok(_) => "ok",
            Err(UpstreamError::Timeout) => "timeout",
            Err(_) => "error",
        };
        self.metrics.upstream(kind, outcome, started.elapsed().as_secs_f64());
        result
    }

    /// Fetches the full packument, conditionally when an upstream ETag is known; with a
    /// client's `credentials` for a package upstream serves only to them. The decoded body
    /// holds `reservation` of the memory budget and is refused beyond `max` bytes.
    pub async fn packument(
        &self,
        name: &PackageName,
        etag: Option<&str>,
        credentials: Option<&header::HeaderValue>,
        max: usize,
        reservation: &mut Reservation,
    ) -> Result<Fetched, UpstreamError> {
        let mut req = self
            .decoding
            .get(self.url(&name.url_segment()))
            .header(header::ACCEPT, "application/json");
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(credentials) = credentials {
            req = req.header(header::AUTHORIZATION, credentials);
        }
        let resp = self.send("packument", req).await?;
        match resp.status() {
            StatusCode::NOT_MODIFIED if etag.is_some() => return Ok(Fetched::NotModified),
            StatusCode::NOT_FOUND => return Ok(Fetched::NotFound),
            s if !s.is_success() => return Err(UpstreamError::Status(s.as_u16())),
            _ => {}
        }
        let etag = etag_of(&resp);
        let body = read_within(resp, max, Some(reservation))
            .await
            .map_err(UpstreamError::Body)?;
        Ok(Fetched::Modified { body, etag })
    }

    /// Starts a tarball download, with a client's `credentials` for a private package; the
    /// body is streamed by the caller.
    pub async fn tarball(
        &self,
        url: &str,
        credentials: Option<&header::HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self.raw.get(url);
        if let Some(credentials) = credentials {
            req = req.header(header::AUTHORIZATION, credentials);
        }
        let resp = self.send("tarball", req).await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            s => Err(UpstreamError::Status(s.as_u16())),
        }
    }

    /// A request builder on the byte-for-byte client, for passthrough.
    pub fn raw_request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.raw.request(method, url)
    }
}
