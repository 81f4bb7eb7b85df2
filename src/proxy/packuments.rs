//! The packument service: L1 (rendered, per replica) → L2 (raw, shared Redis) → upstream,
//! with one upstream fetch per name at a time, ETag revalidation after the TTL, and the
//! stale copy served when upstream fails, is down (the breaker) or is slower to revalidate
//! than `REVALIDATE_GRACE` (stale-while-revalidate: the revalidation goes on in the
//! background). Packages upstream does not have are remembered (`cache::misses`). When
//! upstream fails and no copy is left, a document imported from a bundle (`npg import`) is
//! the last resort, served stale.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderValue;

use crate::budget::{Budget, RENDER_FACTOR, Reservation};
use crate::clock::now_ms;
use crate::cluster::redis::SharedRedis;
use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::npm::name::PackageName;
use crate::proxy::cache::imported::ImportedDocs;
use crate::proxy::cache::memory::MemoryCache;
use crate::proxy::cache::misses::{Miss, Misses};
use crate::proxy::cache::redis::SharedMeta;
use crate::proxy::rendered::{DocMeta, Raw, RenderError, gunzip, gzip_size, render};
use crate::proxy::singleflight::SingleFlight;
use crate::upstream::{Document, Fetched, Upstream, UpstreamError};

pub(crate) use crate::proxy::rendered::Package;

/// After an upstream failure, how long the stale copy is served before asking again.
const STALE_RETRY: Duration = Duration::from_secs(10);

/// How long a request waits for the revalidation of its expired copy before it is served the
/// copy as it is: a healthy upstream answers a conditional request well within it, a sick
/// one never stalls an install.
const REVALIDATE_GRACE: Duration = Duration::from_millis(250);

/// Where an answer came from; `X-Cache` says HIT for all but `Upstream` and `Stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Memory,
    Shared,
    Revalidated,
    Upstream,
    Stale,
}

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("package not found upstream")]
    NotFound,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A document that did not render is upstream's fault only when the document itself is bad.
impl From<RenderError> for FetchError {
    fn from(e: RenderError) -> FetchError {
        match e {
            RenderError::Document(_) | RenderError::NotGzip(_) | RenderError::TooLarge(_) => {
                FetchError::Upstream(UpstreamError::Body(e.to_string()))
            }
            RenderError::Budget(b) => FetchError::Upstream(UpstreamError::Budget(b)),
            RenderError::NotDecoded | RenderError::Task(_) => FetchError::Internal(e.to_string()),
        }
    }
}

pub(crate) type Lookup = (Arc<Package>, Source);

pub(crate) struct Settings {
    pub(crate) public_base: String,
    pub(crate) ttl: Duration,
    pub(crate) max_stale: Duration,
    pub(crate) memory_bytes: u64,
    /// Documents larger than this, decoded, are refused.
    pub(crate) max_document_bytes: usize,
    /// The memory budget of documents being read and rendered at once.
    pub(crate) render_memory_bytes: u64,
    /// How long a miss is remembered (METADATA_MISS_TTL).
    pub(crate) miss_ttl: Duration,
    /// STORAGE_DIR, where `npg import` keeps the packuments of a bundle.
    pub(crate) storage_dir: std::path::PathBuf,
}

pub(crate) struct Packuments {
    inner: Arc<Inner>,
    flights: SingleFlight<(PackageName, bool), Result<Lookup, FetchError>>,
}

struct Inner {
    l1: MemoryCache,
    l2: SharedMeta,
    misses: Misses,
    imported: ImportedDocs,
    redis: Arc<SharedRedis>,
    upstream: Arc<Upstream>,
    guard: Arc<Guard>,
    metrics: Arc<Metrics>,
    budget: Budget,
    settings: Settings,
}

/// A forced refresh of a copy validated more recently than this is answered from it.
const MIN_REFRESH: Duration = Duration::from_secs(2);

/// The copy a revalidation starts from: rendered in L1, or only raw in L2.
#[derive(Clone)]
enum Base {
    Memory(Arc<Package>),
    Shared(DocMeta),
}

impl Packuments {
    pub(crate) fn new(
        settings: Settings,
        upstream: Arc<Upstream>,
        guard: Arc<Guard>,
        redis: Arc<SharedRedis>,
        metrics: Arc<Metrics>,
    ) -> Packuments {
        let inner = Inner {
            l1: MemoryCache::new(settings.memory_bytes),
            l2: SharedMeta::new(redis.clone()),
            misses: Misses::new(redis.clone(), settings.miss_ttl),
            imported: ImportedDocs::new(&settings.storage_dir),
            redis,
            upstream,
            guard,
            metrics,
            budget: Budget::new(settings.render_memory_bytes),
            settings,
        };
        Packuments {
            inner: Arc::new(inner),
            flights: SingleFlight::default(),
        }
    }

    /// The packument, from the nearest fresh copy.
    pub(crate) async fn get(&self, name: &PackageName) -> Result<Lookup, FetchError> {
        if let Some(p) = self.inner.l1.get(name).await
            && self.inner.is_fresh(p.checked_ms)
            && p.current(self.inner.guard.version(), now_ms())
        {
            self.inner.metrics.cache("l1", true);
            let source = if p.stale { Source::Stale } else { Source::Memory };
            return Ok((p, source));
        }
        self.inner.metrics.cache("l1", false);
        self.load(name, false).await
    }

    /// Whether a lookup of `name` would go to upstream for want of any copy: none in memory or
    /// Redis, and not known to be missing.
    pub(crate) async fn cold(&self, name: &PackageName) -> bool {
        self.inner.l1.get(name).await.is_none()
            && self.inner.l2.meta(name).await.is_none()
            && self.inner.misses.get(name).await.is_none()
    }

    /// The packument this replica holds in memory, fresh or not, without asking anyone.
    pub(crate) async fn cached(&self, name: &PackageName) -> Option<Arc<Package>> {
        self.inner.l1.get(name).await
    }

    /// Forgets `name` in this replica's memory and, with `shared`, in Redis too (the package
    /// changed upstream: the next request fetches it again).
    pub(crate) async fn invalidate(&self, name: &PackageName, shared: bool) {
        self.inner.l1.remove(name).await;
        self.inner.misses.remove(name, shared).await;
        if shared {
            self.inner.l2.delete(name).await;
        }
    }

    /// A packument upstream serves only with the client's `credentials` (a private package):
    /// fetched with them, judged and rendered like any other, and never kept, neither in
    /// memory nor in Redis, so no other client is ever served it.
    pub(crate) async fn private(
        &self,
        name: &PackageName,
        credentials: &HeaderValue,
    ) -> Result<Arc<Package>, FetchError> {
        let now = now_ms();
        let mut reservation = self.inner.budget.reserve();
        let max = self.inner.settings.max_document_bytes;
        let fetched = self
            .inner
            .upstream
            .packument(name, None, Some(credentials), max, &mut reservation);
        match fetched.await? {
            Fetched::Modified { body, etag } => {
                let (_, rendered) = self.inner.render_fetched(name, body, etag, now, reservation).await;
                Ok(rendered?)
            }
            Fetched::NotFound => Err(FetchError::NotFound),
            Fetched::NotModified => Err(FetchError::Internal("304 to an unconditional request".into())),
        }
    }

    /// Asks upstream even if the cached copy is fresh (a version or file it does not know was
    /// asked for), unless this replica validated it within `MIN_REFRESH` or a replica asked
    /// for it within METADATA_MISS_TTL: made-up versions or files cannot turn into a stream
    /// of upstream fetches.
    pub(crate) async fn refresh(&self, name: &PackageName) -> Result<Lookup, FetchError> {
        if let Some(p) = self.inner.l1.get(name).await
            && now_ms().saturating_sub(p.checked_ms) < MIN_REFRESH.as_millis() as u64
            && !p.stale
        {
            return Ok((self.inner.current(p).await, Source::Memory));
        }
        if self.inner.misses.get(name).await.is_some() {
            self.inner.metrics.negative_hit();
            return self.get(name).await;
        }
        let found = self.load(name, true).await;
        self.inner.misses.insert(name, Miss::Refreshed).await;
        found
    }

    async fn load(&self, name: &PackageName, force: bool) -> Result<Lookup, FetchError> {
        let inner = self.inner.clone();
        let n = name.clone();
        let result = self
            .flights
            .run(
                (name.clone(), force),
                move || async move { inner.load(&n, force).await },
            )
            .await;
        result.unwrap_or_else(|| Err(FetchError::Internal("packument fetch panicked".into())))
    }
}

impl Inner {
    fn is_fresh(&self, checked_ms: u64) -> bool {
        now_ms().saturating_sub(checked_ms) < self.settings.ttl.as_millis() as u64
    }

    fn keep_in_redis(&self) -> Duration {
        self.settings.ttl + self.settings.max_stale
    }

    async fn load(self: &Arc<Self>, name: &PackageName, force: bool) -> Result<Lookup, FetchError> {
        let memory = self.l1.get(name).await;
        if let Some(p) = memory.as_ref().filter(|p| !force && self.is_fresh(p.checked_ms)) {
            let source = if p.stale { Source::Stale } else { Source::Memory };
            return Ok((self.current(p.clone()).await, source));
        }
        let mut base = memory.map(Base::Memory);
        if let Some(meta) = self.l2.meta(name).await {
            let same = matches!(&base, Some(Base::Memory(p)) if p.fetched_ms == meta.fetched_ms && p.upstream_etag == meta.etag);
            if !force && self.is_fresh(meta.checked_ms) {
                let found = match &base {
                    Some(Base::Memory(p)) if same => Some(self.current(p.checked_at(meta.checked_ms, false)).await),
                    _ => self.render_shared(name, &meta).await,
                };
                if let Some(p) = found {
                    self.metrics.cache("l2", true);
                    self.l1.insert(p.clone()).await;
                    return Ok((p, Source::Shared));
                }
            }
            let newer = match &base {
                Some(Base::Memory(p)) => meta.fetched_ms > p.fetched_ms,
                _ => true,
            };
            if !same && newer {
                base = Some(Base::Shared(meta));
            }
        } else if self.redis.clustered() {
            self.metrics.cache("l2", false);
        }
        match base {
            None if self.misses.get(name).await == Some(Miss::Package) => {
                self.metrics.negative_hit();
                Err(FetchError::NotFound)
            }
            Some(base) if !force => self.revalidate(name, base).await,
            base => self.ask_upstream(name, base).await,
        }
    }

    /// Revalidates an expired copy, serving it as it is if upstream takes longer than
    /// `REVALIDATE_GRACE` (the revalidation finishes in the background and updates the
    /// caches).
    async fn revalidate(self: &Arc<Self>, name: &PackageName, base: Base) -> Result<Lookup, FetchError> {
        let (inner, n, copy) = (self.clone(), name.clone(), base.clone());
        let mut asking = tokio::spawn(async move { inner.ask_upstream(&n, Some(base)).await });
        // Upstream silent for the grace already (it hangs, the breaker is not open yet): waiting
        // again would only add a grace per package to an install.
        let grace = match self.upstream.breaker().silent_for() >= REVALIDATE_GRACE {
            true => Duration::ZERO,
            false => REVALIDATE_GRACE,
        };
        let joined = match tokio::time::timeout(grace, &mut asking).await {
            Ok(joined) => joined,
            Err(_) => match self.stale_copy(name, Some(copy)).await {
                Some(p) => {
                    self.metrics.stale_served("revalidating");
                    return Ok((p, Source::Stale));
                }
                None => asking.await,
            },
        };
        joined.unwrap_or_else(|e| Err(FetchError::Internal(format!("revalidation failed: {e}"))))
    }

    async fn ask_upstream(&self, name: &PackageName, base: Option<Base>) -> Result<Lookup, FetchError> {
        let etag = match &base {
            Some(Base::Memory(p)) => p.upstream_etag.clone(),
            Some(Base::Shared(meta)) => meta.etag.clone(),
            None => None,
        };
        let now = now_ms();
        let mut reservation = self.budget.reserve();
        let max = self.settings.max_document_bytes;
        let fetched = self
            .upstream
            .packument(name, etag.as_deref(), None, max, &mut reservation)
            .await;
        let revalidated = match (&fetched, &base) {
            (Ok(Fetched::NotModified), Some(Base::Memory(p))) => Some(self.current(p.checked_at(now, false)).await),
            (Ok(Fetched::NotModified), Some(Base::Shared(meta))) => {
                self.render_shared(
                    name,
                    &DocMeta {
                        checked_ms: now,
                        ..meta.clone()
                    },
                )
                .await
            }
            _ => None,
        };
        match fetched {
            Ok(Fetched::Modified { body, etag }) => {
                let (meta, rendered) = self.render_fetched(name, body, etag, now, reservation).await;
                match rendered {
                    Ok(p) => {
                        self.l1.insert(p.clone()).await;
                        self.l2.put(name, p.raw_gz.clone(), &meta, self.keep_in_redis()).await;
                        Ok((p, Source::Upstream))
                    }
                    Err(e) => self.serve_stale(name, base, e.into()).await,
                }
            }
            Ok(Fetched::NotModified) => match revalidated {
                Some(p) => {
                    self.l1.insert(p.clone()).await;
                    self.l2.touch(name, now, self.keep_in_redis()).await;
                    Ok((p, Source::Revalidated))
                }
                // The copy we revalidated vanished meanwhile (Redis went away): fetch it whole.
                None => Box::pin(self.ask_upstream(name, None)).await,
            },
            Ok(Fetched::NotFound) => {
                self.l1.remove(name).await;
                self.l2.delete(name).await;
                self.misses.insert(name, Miss::Package).await;
                Err(FetchError::NotFound)
            }
            Err(err) => self.serve_stale(name, base, err.into()).await,
        }
    }

    /// stale-if-error: the old copy, if there is one and it is not too old.
    async fn serve_stale(&self, name: &PackageName, base: Option<Base>, err: FetchError) -> Result<Lookup, FetchError> {
        match self.stale_copy(name, base).await {
            Some(p) => {
                if let FetchError::Upstream(UpstreamError::Unavailable { .. }) = err {
                    // The breaker logged the trip once; one line per package would flood.
                    self.metrics.stale_served("breaker_open");
                    tracing::debug!(package = %name, "upstream down; serving the stale copy");
                } else {
                    self.metrics.stale_served("upstream_error");
                    tracing::warn!(package = %name, error = %err, "upstream failed; serving the stale copy");
                }
                Ok((p, Source::Stale))
            }
            None => match self.imported_copy(name).await {
                Some(p) => {
                    self.metrics.stale_served("imported");
                    tracing::debug!(package = %name, error = %err, "upstream failed; serving the imported copy");
                    Ok((p, Source::Stale))
                }
                None => Err(err),
            },
        }
    }

    /// The document `npg import` left for `name`, rendered under the policy in force, marked
    /// stale and made to look fresh for `STALE_RETRY` like any stale copy.
    async fn imported_copy(&self, name: &PackageName) -> Option<Arc<Package>> {
        let (gz, imported_ms) = self.imported.get(name, self.settings.max_document_bytes).await?;
        let meta = DocMeta {
            etag: None,
            fetched_ms: imported_ms,
            checked_ms: imported_ms,
        };
        let raw = Raw {
            gz: Some(gz),
            plain: None,
        };
        let p = match self.render(name, raw, &meta, self.budget.reserve()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(package = %name, error = %e, "unusable imported packument; ignoring it");
                return None;
            }
        };
        let retry_at = now_ms().saturating_sub(self.settings.ttl.saturating_sub(STALE_RETRY).as_millis() as u64);
        let p = p.checked_at(retry_at, true);
        self.l1.insert(p.clone()).await;
        Some(p)
    }

    /// The old copy if it is within METADATA_MAX_STALE, marked stale and made to look fresh
    /// for `STALE_RETRY`, so a sick upstream is not asked again on every request.
    async fn stale_copy(&self, name: &PackageName, base: Option<Base>) -> Option<Arc<Package>> {
        let stale = match base? {
            Base::Memory(p) => p,
            Base::Shared(meta) => self.render_shared(name, &meta).await?,
        };
        let max_age = (self.settings.ttl + self.settings.max_stale).as_millis() as u64;
        let now = now_ms();
        if now.saturating_sub(stale.checked_ms) >= max_age {
            return None;
        }
        // The revalidation may have finished meanwhile: its copy wins.
        if let Some(newer) = self.l1.get(name).await.filter(|p| p.checked_ms > stale.checked_ms) {
            return Some(self.current(newer).await);
        }
        let retry_at = now.saturating_sub(self.settings.ttl.saturating_sub(STALE_RETRY).as_millis() as u64);
        let p = self
            .current(stale.checked_at(retry_at.max(stale.checked_ms), true))
            .await;
        self.l1.insert(p.clone()).await;
        Some(p)
    }

    async fn render_shared(&self, name: &PackageName, meta: &DocMeta) -> Option<Arc<Package>> {
        let gz = self.l2.body_gz(name, self.settings.max_document_bytes).await?;
        match self
            .render(
                name,
                Raw {
                    gz: Some(gz),
                    plain: None,
                },
                meta,
                self.budget.reserve(),
            )
            .await
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(package = %name, error = %e, "unusable packument in redis; ignoring it");
                None
            }
        }
    }

    /// `p` if it was rendered under the policy in force, else rendered again from its raw
    /// document (the cached document stays valid; only the decision changed).
    async fn current(&self, p: Arc<Package>) -> Arc<Package> {
        let (policy, now) = (self.guard.policy(), now_ms());
        if p.current(policy.version, now) {
            return p;
        }
        if let Some(same) = p.rejudged(&policy, now) {
            self.l1.insert(same.clone()).await;
            return same;
        }
        let meta = DocMeta {
            etag: p.upstream_etag.clone(),
            fetched_ms: p.fetched_ms,
            checked_ms: p.checked_ms,
        };
        match self
            .render(
                &p.name,
                Raw {
                    gz: Some(p.raw_gz.clone()),
                    plain: None,
                },
                &meta,
                self.budget.reserve(),
            )
            .await
        {
            Ok(fresh) => {
                let fresh = if p.stale {
                    fresh.checked_at(fresh.checked_ms, true)
                } else {
                    fresh
                };
                self.l1.insert(fresh.clone()).await;
                fresh
            }
            Err(e) => {
                tracing::error!(package = %p.name, error = %e, "cannot re-render under the new policy");
                p
            }
        }
    }

    /// A document upstream just sent, rendered; it was fetched and checked `now`.
    async fn render_fetched(
        &self,
        name: &PackageName,
        body: Document,
        etag: Option<String>,
        now: u64,
        reservation: Reservation,
    ) -> (DocMeta, Result<Arc<Package>, RenderError>) {
        let meta = DocMeta {
            etag,
            fetched_ms: now,
            checked_ms: now,
        };
        let raw = match body {
            Document::Plain(plain) => Raw {
                plain: Some(plain),
                gz: None,
            },
            Document::Gzip(gz) => Raw {
                plain: None,
                gz: Some(gz),
            },
        };
        let rendered = self.render(name, raw, &meta, reservation).await;
        (meta, rendered)
    }

    /// Filters, rewrites and compresses a raw document under the policy in force (on a
    /// blocking thread: it can be 40 MB), holding `reservation` of the memory budget for what
    /// that takes. A document gzip'd (upstream's answer, or kept so in Redis or memory) is
    /// decoded first, bounded.
    async fn render(
        &self,
        name: &PackageName,
        raw: Raw,
        meta: &DocMeta,
        mut reservation: Reservation,
    ) -> Result<Arc<Package>, RenderError> {
        let max = self.settings.max_document_bytes;
        let raw = match raw {
            Raw {
                plain: None,
                gz: Some(gz),
            } => {
                // Decoded to the size its trailer says (checked), within `max`: a bomb holds
                // the budget for what it claims, and no more is decoded.
                let size = gzip_size(&gz).unwrap_or(0).min(max);
                reservation.grow_to(gz.len().saturating_add(size)).await?;
                let zipped = gz.clone();
                let plain = tokio::task::spawn_blocking(move || gunzip(&zipped, max)).await??;
                Raw {
                    plain: Some(plain),
                    gz: Some(gz),
                }
            }
            raw => raw,
        };
        let size = raw.plain.as_ref().map_or(0, Bytes::len);
        reservation.grow_to(size.saturating_mul(RENDER_FACTOR)).await?;
        let (n, base, meta, policy) = (
            name.clone(),
            self.settings.public_base.clone(),
            meta.clone(),
            self.guard.policy(),
        );
        let rendered =
            tokio::task::spawn_blocking(move || render(&n, raw, &meta, &policy, &base, now_ms()).map(Arc::new));
        let rendered = rendered.await?;
        drop(reservation);
        if let Ok(pkg) = &rendered {
            self.metrics.signatures(pkg.signatures.values().map(|s| s.as_str()));
        }
        rendered
    }
}
