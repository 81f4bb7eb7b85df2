//! The HTTP client to the upstream registry: packument fetches (conditional, decoded, size
//! bounded), tarball downloads and passthrough requests (both byte for byte), each with its
//! own deadline, only to allowed origins (`origins`), with npg's own credentials on npg's own
//! reads only (`auth`).

pub(crate) mod auth;
mod body;
pub(crate) mod breaker;
pub(crate) mod client;
mod error;
pub(crate) mod origins;
pub(crate) mod redact;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{StatusCode, header};
use url::Url;

pub(crate) use self::auth::UpstreamAuth;
pub(crate) use self::body::{Document, etag_of, read_bounded};
use self::breaker::{Breaker, Health};
pub use self::error::{UpstreamError, describe, error_chain};
use self::origins::{Origin, Origins};
use crate::budget::Reservation;
use crate::metrics::Metrics;
use crate::npm::name::PackageName;

/// Where a registry publishes its signing keys, relative to its base.
pub(crate) const KEYS_PATH: &str = "-/npm/v1/keys";

/// How npg talks to upstream, from the validated settings.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// REGISTRY_URL, ending with `/`.
    pub(crate) base: Url,
    /// The wait for response headers, and for each read of a body (UPSTREAM_TIMEOUT).
    pub(crate) timeout: Duration,
    /// A whole packument fetch, headers and body (UPSTREAM_FETCH_DEADLINE): a body trickled
    /// byte by byte cannot hold the fetch, and stale-if-error answers after it.
    pub(crate) fetch_deadline: Duration,
    /// A whole tarball download (UPSTREAM_TARBALL_DEADLINE).
    pub(crate) tarball_deadline: Duration,
    /// A passthrough request with a body (publish): upload and answer (UPSTREAM_UPLOAD_TIMEOUT).
    pub(crate) upload_timeout: Duration,
    /// Origins tarballs may come from besides REGISTRY_URL's (UPSTREAM_TARBALL_HOSTS).
    pub(crate) tarball_hosts: Vec<Origin>,
    /// npg's own credentials (UPSTREAM_AUTH_FILE).
    pub(crate) auth: UpstreamAuth,
}

pub(crate) enum Fetched<B = Bytes> {
    Modified { body: B, etag: Option<String> },
    NotModified,
    NotFound,
}

pub(crate) struct Upstream {
    base: Url,
    /// Decodes gzip: for what npg reads itself (signing keys).
    decoding: reqwest::Client,
    /// Leaves bodies alone: tarballs and passthrough are relayed byte for byte; packuments are
    /// decoded by npg (`Document`).
    raw: reqwest::Client,
    /// `raw` without the per-read timeout, which would also cut a slow upload (reqwest counts
    /// it from the start of the request until the response headers).
    upload: reqwest::Client,
    origins: Arc<Origins>,
    /// Packument and tarball fetches stop while upstream is down (passthrough requests are
    /// the client's own and go through).
    breaker: Arc<Breaker>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

/// How a request stands with the breaker. Every one is refused at once while upstream is
/// down; only npg's own reads tell whether it is (a client can make upstream fail its own
/// requests, say with a garbage audit body, and must not take upstream down for everyone).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// npg's packument and tarball reads: they count, and stop waiting when the breaker opens.
    Own,
    /// A client's read relayed: stops waiting when the breaker opens, counts for nothing.
    Relayed,
    /// A client's write (publish): never cut, counts for nothing.
    Upload,
}

/// What an outcome says of upstream's health: down when it did not answer or failed (5xx,
/// 429), up when it answered; nothing when the request was not sent or was given up
/// because the breaker opened.
fn health_of(result: &Result<reqwest::Response, UpstreamError>) -> Health {
    match result {
        Ok(r) if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS => {
            Health::Down(UpstreamError::Status(r.status().as_u16()).to_string())
        }
        Ok(_) => Health::Up,
        Err(UpstreamError::Unavailable { .. }) => Health::Unknown,
        Err(e @ (UpstreamError::Timeout | UpstreamError::Network(_))) => Health::Down(e.to_string()),
        Err(_) => Health::Up,
    }
}

impl Upstream {
    pub(crate) fn new(settings: Settings, metrics: Arc<Metrics>) -> anyhow::Result<Upstream> {
        let origins = Arc::new(Origins::new(&settings.base, &settings.tarball_hosts));
        let timeout = settings.timeout;
        let builder = || {
            client::builder(None)
                .connect_timeout(Duration::from_secs(10).min(timeout))
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(60))
                .redirect(origins.clone().redirect_policy())
        };
        Ok(Upstream {
            base: settings.base.clone(),
            decoding: builder().read_timeout(timeout).gzip(true).build()?,
            raw: builder().read_timeout(timeout).gzip(false).build()?,
            upload: builder().gzip(false).build()?,
            origins,
            breaker: Arc::new(Breaker::new(metrics.clone())),
            settings,
            metrics,
        })
    }

    /// Whether npg sends its own credentials for this package (UPSTREAM_AUTH_FILE, by scope).
    pub(crate) fn has_own_credentials(&self, name: &PackageName) -> bool {
        self.settings.auth.for_package(name.as_str()).is_some()
    }

    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Leave from the breaker, or `Unavailable` at once.
    fn admit(&self) -> Result<breaker::Ticket<'_>, UpstreamError> {
        self.breaker.admit().map_err(|down| UpstreamError::Unavailable {
            reason: down.reason,
            retry_in_seconds: down.retry_in.as_secs().max(1),
        })
    }

    /// The upstream URL of a path relative to the registry base (`-/v1/search?text=x`).
    pub(crate) fn url(&self, relative: &str) -> String {
        format!("{}{}", self.base, relative.trim_start_matches('/'))
    }

    /// Sends a request unless the breaker holds upstream as down, bounding the wait for its
    /// answer by `bound`, and records the outcome (metrics; the breaker, as `watch` says). A
    /// read also stops waiting when the breaker opens meanwhile: nothing waits a whole
    /// timeout for an upstream the cluster already knows is down.
    async fn send(
        &self,
        kind: &'static str,
        req: reqwest::RequestBuilder,
        bound: Duration,
        watch: Watch,
    ) -> Result<reqwest::Response, UpstreamError> {
        let ticket = self.admit()?;
        let tripped = self.breaker.tripped();
        let mut tripped = std::pin::pin!(tripped);
        tripped.as_mut().enable();
        let started = Instant::now();
        let answer = async {
            match tokio::time::timeout(bound, req.send()).await {
                Err(_) => Err(UpstreamError::Timeout),
                Ok(r) => r.map_err(UpstreamError::from_reqwest),
            }
        };
        let result = tokio::select! {
            result = answer => result,
            () = tripped, if watch != Watch::Upload => Err(self.admit().err().unwrap_or(UpstreamError::Timeout)),
        };
        ticket.finish(if watch == Watch::Own {
            health_of(&result)
        } else {
            Health::Unknown
        });
        let outcome = match &result {
            Ok(r) if r.status() == StatusCode::NOT_MODIFIED => "not_modified",
            Ok(r) if r.status() == StatusCode::NOT_FOUND => "not_found",
            Ok(r) if r.status().is_server_error() => "error",
            Ok(_) => "ok",
            Err(UpstreamError::Timeout) => "timeout",
            Err(UpstreamError::Unavailable { .. }) => "breaker_open",
            Err(_) => "error",
        };
        self.metrics.upstream(kind, outcome, started.elapsed().as_secs_f64());
        result
    }

    /// Fetches the full packument, conditionally when an upstream ETag is known, within
    /// UPSTREAM_FETCH_DEADLINE. A client's `credentials` (for a package upstream serves only
    /// to them) come before npg's own for the package's scope. The body, gzip'd when upstream
    /// will (kept as is: decoding it whole costs less than reqwest's decoder growing a buffer,
    /// and npg keeps a gzip'd copy anyway), holds `reservation` of the memory budget and is
    /// refused beyond `max` bytes.
    pub(crate) async fn packument(
        &self,
        name: &PackageName,
        etag: Option<&str>,
        credentials: Option<&header::HeaderValue>,
        max: usize,
        reservation: &mut Reservation,
    ) -> Result<Fetched<Document>, UpstreamError> {
        let fetch = async {
            let mut req = self
                .raw
                .get(self.url(&name.url_segment()))
                .header(header::ACCEPT, "application/json")
                .header(header::ACCEPT_ENCODING, "gzip");
            if let Some(etag) = etag {
                req = req.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(credentials) = credentials.or_else(|| self.settings.auth.for_package(name.as_str())) {
                req = req.header(header::AUTHORIZATION, credentials);
            }
            let resp = self.send("packument", req, self.settings.timeout, Watch::Own).await?;
            match resp.status() {
                StatusCode::NOT_MODIFIED if etag.is_some() => return Ok(Fetched::NotModified),
                StatusCode::NOT_FOUND => return Ok(Fetched::NotFound),
                s if !s.is_success() => return Err(UpstreamError::Status(s.as_u16())),
                _ => {}
            }
            let etag = etag_of(&resp);
            let body = body::read_document(resp, max, reservation).await?;
            Ok(Fetched::Modified { body, etag })
        };
        match tokio::time::timeout(self.settings.fetch_deadline, fetch).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(package = %name, deadline = ?self.settings.fetch_deadline,
                    "packument fetch cut at UPSTREAM_FETCH_DEADLINE");
                Err(UpstreamError::Timeout)
            }
        }
    }

    /// Starts a tarball download from an allowed origin, bounded as a whole by
    /// UPSTREAM_TARBALL_DEADLINE, with a client's credentials for a private package (else
    /// npg's own for that URL); the body is streamed by the caller.
    pub(crate) async fn tarball(
        &self,
        url: &str,
        client_credentials: Option<&header::HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self
            .origins
            .check(url)
            .map_err(|refused| UpstreamError::Refused(refused.to_string()))?;
        let mut req = self.raw.get(url.clone()).timeout(self.settings.tarball_deadline);
        let credentials = client_credentials.or_else(|| self.settings.auth.for_url(&self.base, &url));
        if let Some(credentials) = credentials {
            req = req.header(header::AUTHORIZATION, credentials);
        }
        let resp = self.send("tarball", req, self.settings.timeout, Watch::Own).await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            s => Err(UpstreamError::Status(s.as_u16())),
        }
    }

    /// The registry's signing keys (`<REGISTRY_URL>-/npm/v1/keys`), up to `max` bytes, within
    /// UPSTREAM_FETCH_DEADLINE; `NotFound` when the registry publishes none.
    pub(crate) async fn keys(&self, max: usize) -> Result<Fetched, UpstreamError> {
        let fetch = async {
            let url = self.url(KEYS_PATH);
            let req = self.decoding.get(&url).header(header::ACCEPT, "application/json");
            // Not a health signal: a registry failing only its keys still serves packages.
            let resp = self.send("keys", req, self.settings.timeout, Watch::Relayed).await?;
            match resp.status() {
                StatusCode::NOT_FOUND => return Ok(Fetched::NotFound),
                s if !s.is_success() => return Err(UpstreamError::Status(s.as_u16())),
                _ => {}
            }
            let etag = etag_of(&resp);
            let body = body::read_within(resp, max, None).await?;
            Ok(Fetched::Modified { body, etag })
        };
        tokio::time::timeout(self.settings.fetch_deadline, fetch)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    /// A client's request relayed to `<REGISTRY_URL><relative>` with the client's headers
    /// only (never npg's credentials). With a body it is an upload, bounded as a whole by
    /// UPSTREAM_UPLOAD_TIMEOUT instead of the per-read UPSTREAM_TIMEOUT.
    pub(crate) async fn passthrough(
        &self,
        method: reqwest::Method,
        relative: &str,
        headers: header::HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.url(relative);
        match body {
            None => {
                let req = self.raw.request(method, url).headers(headers);
                self.send("passthrough", req, self.settings.timeout, Watch::Relayed)
                    .await
            }
            Some(body) => {
                let limit = self.settings.upload_timeout;
                let req = self
                    .upload
                    .request(method, url)
                    .headers(headers)
                    .body(body)
                    .timeout(limit);
                self.send("passthrough", req, limit, Watch::Upload).await
            }
        }
    }
}
