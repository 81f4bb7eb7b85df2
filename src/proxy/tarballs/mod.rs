//! The tarball service. Every request, hit or miss, is judged by the version the packument
//! gives the file (never by the file's name alone). Hits come from the store (memory, disk,
//! or bucket: `cache::store`); a miss joins the download of that file in flight or leads a
//! new one (`flight`), which streams from upstream into a temp file while hashing
//! (`download`); each client reads it as it is released (`relay`), and the file is stored
//! only when the hash matches the version's `dist.integrity` (else `dist.shasum`). Replicas
//! sharing a bucket and Redis fetch each file once for the cluster (`lease`). On a cold miss
//! the tarball is asked of upstream while its packument is on its way (`early`).

mod download;
mod early;
mod flight;
mod lease;
mod relay;

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::http::HeaderValue;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::cluster::lock::RedisLock;
use crate::cluster::redis::SharedRedis;
use crate::guard::{Block, Guard};
use crate::metrics::Metrics;
use crate::npm::integrity::Expected;
use crate::npm::name::PackageName;
use crate::npm::packument::TarballInfo;
use crate::npm::path::version_from_file;
use crate::proxy::cache::disk::{Cached, Pending};
use crate::proxy::cache::store::{Found, Store};
use crate::proxy::packuments::{FetchError, Package, Packuments, Source};
use crate::upstream::{Upstream, UpstreamError};
use download::{Download, Outputs};
use early::{Claim, Earlies};
use flight::{Failure, Flights, Landing, Role, State};
use lease::Fill;

/// Chunks buffered per client of a download.
const CLIENT_BUFFER: usize = 16;

pub(crate) enum TarballBody {
    /// From the store (memory, disk).
    Cached(Cached),
    /// A download in progress: chunks, and the length upstream announced.
    Download(mpsc::Receiver<io::Result<Bytes>>, Option<u64>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TarballError {
    #[error("{0}")]
    NotFound(String),
    #[error("blocked: {}", block.reason)]
    Blocked {
        name: PackageName,
        block: Block,
        version: Option<String>,
    },
    /// The packument gives no hash to check the bytes against: npg serves nothing unchecked.
    #[error(transparent)]
    Unverifiable(#[from] Unverifiable),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl From<Failure> for TarballError {
    fn from(f: Failure) -> TarballError {
        match f {
            Failure::NotFound => TarballError::NotFound("upstream has no such tarball".into()),
            Failure::Upstream(e) => TarballError::Fetch(e.into()),
            other => TarballError::Fetch(UpstreamError::Body(other.to_string()).into()),
        }
    }
}

pub(crate) struct Tarballs {
    store: Arc<Store>,
    packuments: Arc<Packuments>,
    guard: Arc<Guard>,
    upstream: Arc<Upstream>,
    /// For the fill leases of a cluster on one bucket.
    redis: Arc<SharedRedis>,
    metrics: Arc<Metrics>,
    flights: Arc<Flights>,
    earlies: Arc<Earlies>,
}

impl Tarballs {
    pub(crate) fn new(
        store: Arc<Store>,
        packuments: Arc<Packuments>,
        guard: Arc<Guard>,
        upstream: Arc<Upstream>,
        redis: Arc<SharedRedis>,
        metrics: Arc<Metrics>,
    ) -> Tarballs {
        Tarballs {
            store,
            packuments,
            guard,
            upstream,
            redis,
            metrics,
            flights: Arc::default(),
            earlies: Arc::default(),
        }
    }

    pub(crate) async fn get(&self, name: &PackageName, file: &str) -> Result<(TarballBody, bool), TarballError> {
        // Ends, unused, an early request the leading download did not take.
        let _early = self.early(name, file).await;
        let judged = self.judge(name, file).await?;
        // A bucket's bytes are checked like a download's (`Store`); without a packument (judged
        // by the file name, upstream down) there is nothing to check them against.
        let known = judged.as_ref().and_then(|pkg| pkg.index.files.get(file));
        let known = known.map(|info| expected(name, info)).transpose()?;
        if let Some(found) = self.store.lookup(name, file, known.as_ref()).await {
            return Ok((found.into(), true));
        }
        let pkg = match judged {
            Some(pkg) => pkg,
            None => self.find(name, file).await?,
        };
        let info = pkg
            .index
            .files
            .get(file)
            .cloned()
            .ok_or_else(|| no_such_file(name, file))?;
        let expected = expected(name, &info)?;
        // A download of it here already: join it; else one replica of the cluster fetches it.
        let lease = match self.flights.in_flight(name, file) {
            true => None,
            false => match lease::lead_or_follow(&self.redis, &self.store, name, file, &expected).await {
                Fill::Stored(found) => {
                    self.metrics.tarball_download("follow");
                    return Ok((found.into(), true));
                }
                Fill::Lead(lease) => lease,
            },
        };
        match self.miss(name, file, &info, &expected, true, lease).await {
            // The download joined lost its temp file: one of its own, without a file.
            Err(Failure::Disk) => Ok(self.miss(name, file, &info, &expected, false, None).await?),
            found => Ok(found?),
        }
    }

    /// A private package's tarball (the client's `credentials`, `pkg` the packument fetched
    /// with them): verified like any other, never kept.
    pub(crate) async fn private(
        &self,
        name: &PackageName,
        file: &str,
        pkg: &Package,
        credentials: &HeaderValue,
    ) -> Result<TarballBody, TarballError> {
        let info = pkg.index.files.get(file).ok_or_else(|| no_such_file(name, file))?;
        let expected = expected(name, info)?;
        let download = self.download(name, file, info, expected, None);
        let request = self.request(name, file, info, Some(credentials.clone()));
        let (direct, state) = start(download, request, watch::channel(State::Asking).0, None, None, None);
        let body = self
            .respond(Some(direct), None, state)
            .await
            .map_err(TarballError::from)?;
        Ok(body)
    }

    /// Starts the early request of a cold miss (`early`): the file has npm's name for a
    /// version the policy does not refuse by name, it is not stored or downloading here, and no
    /// copy of the packument is known. Not with a bucket: a cluster on one fetches each file
    /// once through its lease, and a bucket's objects cannot be looked for without the hash.
    async fn early(&self, name: &PackageName, file: &str) -> Option<Claim> {
        let version = version_from_file(name, file)?;
        if self.store.bucket().is_some() || !self.packuments.cold(name).await {
            return None;
        }
        let policy = self.guard.policy();
        let refused = policy.package(name.as_str()).is_some() || policy.version(name.as_str(), version).is_some();
        if refused || self.flights.in_flight(name, file) || self.store.kept_locally(name, file) {
            return None;
        }
        let url = self.layout_url(name, file);
        self.earlies.start(&self.upstream, &self.metrics, name, file, url)
    }

    /// Where npm's layout puts `file` upstream.
    fn layout_url(&self, name: &PackageName, file: &str) -> String {
        self.upstream.url(&format!("{name}/-/{file}"))
    }

    /// Refuses blocked tarballs even when they are on disk (lockfile installs skip metadata;
    /// yarn 4 builds tarball URLs itself), by the version the packument gives the file: a
    /// file name need not be `<name>-<version>.tgz`. Returns the packument when there is one;
    /// without any (upstream down, nothing cached) a hit is judged by its file name, unless
    /// a rule that needs the packument applies (release age, install scripts).
    async fn judge(&self, name: &PackageName, file: &str) -> Result<Option<Arc<Package>>, TarballError> {
        let policy = self.guard.policy();
        if let Some(block) = policy.package(name.as_str()) {
            return Err(blocked(name, None, block));
        }
        match self.find(name, file).await {
            Ok(pkg) => Ok(Some(pkg)),
            Err(TarballError::Fetch(e @ FetchError::Upstream(_))) if !policy.needs_document(name.as_str()) => {
                tracing::warn!(package = %name, error = %e, "no packument to judge a tarball by; judged by its file name");
                match version_from_file(name, file).and_then(|v| Some((v, policy.version(name.as_str(), v)?))) {
                    Some((v, block)) => Err(self.refuse(name, v, block).await),
                    None => Ok(None),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The block of a version, and, when it is malware, its cached tarballs purged.
    async fn refuse(&self, name: &PackageName, version: &str, block: Block) -> TarballError {
        if block.kind == crate::guard::Rule::Malware && self.purge(name, Some(version)).await > 0 {
            tracing::warn!(package = %name, version, "purged a cached tarball now listed as malware");
        }
        blocked(name, Some(version), block)
    }

    /// The packument, known to give `file` to a version the policy allows (judged when it
    /// was rendered, under the policy in force); refreshed once if it does not know `file`
    /// (a version published after it was cached).
    async fn find(&self, name: &PackageName, file: &str) -> Result<Arc<Package>, TarballError> {
        let (pkg, source) = self.packuments.get(name).await?;
        let pkg = match pkg.index.files.contains_key(file) || source == Source::Upstream {
            true => pkg,
            false => self.packuments.refresh(name).await?.0,
        };
        let Some(info) = pkg.index.files.get(file) else {
            return Err(no_such_file(name, file));
        };
        match pkg.hidden.get(&info.version) {
            Some(block) => Err(self.refuse(name, &info.version, block.clone()).await),
            None => Ok(pkg),
        }
    }

    /// Serves a miss from the download of `file` in flight, or leads a new one (`shared`), or
    /// downloads it alone, without a temp file. A leader holds the cluster's `lease` until its
    /// download ends.
    async fn miss(
        &self,
        name: &PackageName,
        file: &str,
        info: &TarballInfo,
        expected: &Expected,
        shared: bool,
        lease: Option<Arc<RedisLock>>,
    ) -> Result<(TarballBody, bool), Failure> {
        let role = match shared {
            true => {
                let stored = || self.store.kept_locally(name, file);
                self.flights.lead_or_join(name, file, || self.store.pending(), stored)
            }
            false => Role::alone(),
        };
        let lease = match (&role, lease) {
            (Role::Lead { .. }, lease) => lease,
            (_, lease) => {
                // This replica's own download fills it, or has.
                if let Some(lease) = lease {
                    tokio::spawn(async move { lease.release().await });
                }
                None
            }
        };
        let (direct, file_handle, state) = match role {
            Role::Stored => match self.store.open(name, file, expected).await {
                Some(found) => return Ok((found.into(), true)),
                None => return Err(Failure::Disk),
            },
            Role::Join(flight) => {
                self.metrics.tarball_download("join");
                match tokio::fs::File::open(&flight.temp).await {
                    Ok(f) => (None, Some(f), flight.state.clone()),
                    // Renamed into the cache just now, or failed: the cache, else lead anew.
                    Err(_) => match self.store.open(name, file, expected).await {
                        Some(found) => return Ok((found.into(), true)),
                        None => return Err(Failure::Disk),
                    },
                }
            }
            Role::Lead {
                state,
                landing,
                pending,
            } => {
                self.metrics.tarball_download("lead");
                let reader = match &pending {
                    Some(p) => tokio::fs::File::open(p.path()).await.ok(),
                    None => None,
                };
                let download = self.download(name, file, info, expected.clone(), Some(self.store.clone()));
                let request = self.request(name, file, info, None);
                let (direct, watching) = start(download, request, state, landing, pending, lease);
                (Some(direct), reader, watching)
            }
        };
        Ok((self.respond(direct, file_handle, state).await?, false))
    }

    /// Waits for upstream's answer, then relays the download to one client.
    async fn respond(
        &self,
        direct: Option<relay::Chunks>,
        file: Option<tokio::fs::File>,
        mut state: watch::Receiver<State>,
    ) -> Result<TarballBody, Failure> {
        let length = relay::started(&mut state, direct.is_some()).await?;
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        tokio::spawn(relay::relay(direct, file, state, tx));
        Ok(TarballBody::Download(rx, length))
    }

    fn download(
        &self,
        name: &PackageName,
        file: &str,
        info: &TarballInfo,
        expected: Expected,
        store: Option<Arc<Store>>,
    ) -> Download {
        Download {
            name: name.clone(),
            file: file.to_string(),
            version: info.version.clone(),
            declares_script: info.install_script,
            expected,
            store,
            metrics: self.metrics.clone(),
        }
    }

    /// The upstream request for `file`, owned, to run in the download's task: the early one
    /// when it went to the URL the packument gives (never for a client's credentials).
    fn request(
        &self,
        name: &PackageName,
        file: &str,
        info: &TarballInfo,
        credentials: Option<HeaderValue>,
    ) -> impl Future<Output = Result<reqwest::Response, UpstreamError>> + Send + 'static {
        let by_layout = self.layout_url(name, file);
        let url = info.upstream_url.clone().unwrap_or_else(|| by_layout.clone());
        self.earlies.observe(url == by_layout);
        let early = match credentials {
            None => self.earlies.take(name, file, &url),
            Some(_) => None,
        };
        let upstream = self.upstream.clone();
        async move {
            match early {
                Some(early) => early.answer().await,
                None => upstream.tarball(&url, credentials.as_ref()).await,
            }
        }
    }

    /// Deletes the cached tarballs of one version (every file the cached packument gives it,
    /// and npm's own name for it), or of the whole package; returns how many files went.
    pub(crate) async fn purge(&self, name: &PackageName, version: Option<&str>) -> usize {
        let files = match version {
            None => None,
            Some(v) => {
                let mut files = vec![format!("{}-{v}.tgz", name.unscoped())];
                if let Some(pkg) = self.packuments.cached(name).await {
                    let of_version = pkg.index.files.iter().filter(|(_, i)| i.version == v);
                    files.extend(of_version.map(|(f, _)| f.clone()));
                }
                Some(files)
            }
        };
        self.store.purge(name, files.as_deref()).await
    }

    /// Waits, at most `within`, for the downloads in flight to end and be stored (a bucket's
    /// upload goes on after its clients were served); whether they did.
    pub(crate) async fn landed(&self, within: std::time::Duration) -> bool {
        self.flights.landed(within).await
    }

    /// Where tarballs are kept (for health).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

impl From<Found> for TarballBody {
    fn from(found: Found) -> TarballBody {
        match found {
            Found::Cached(cached) => TarballBody::Cached(cached),
            Found::Streamed(chunks, length) => TarballBody::Download(chunks, Some(length)),
        }
    }
}

/// Runs `download` in its own task (holding the fill `lease`, if any); returns the chunks for
/// the client that started it and the state its other clients watch.
fn start(
    download: Download,
    request: impl Future<Output = Result<reqwest::Response, UpstreamError>> + Send + 'static,
    state: watch::Sender<State>,
    landing: Option<Landing>,
    pending: Option<Pending>,
    lease: Option<Arc<RedisLock>>,
) -> (relay::Chunks, watch::Receiver<State>) {
    let watching = state.subscribe();
    let (direct_tx, direct) = mpsc::channel(CLIENT_BUFFER);
    let outputs = Outputs {
        pending,
        state,
        direct: Some(direct_tx),
        landing,
    };
    tokio::spawn(lease::holding(lease, download.run(request, outputs)));
    (direct, watching)
}

fn no_such_file(name: &PackageName, file: &str) -> TarballError {
    TarballError::NotFound(format!("{name} has no version with tarball {file}"))
}

fn blocked(name: &PackageName, version: Option<&str>, block: Block) -> TarballError {
    TarballError::Blocked {
        name: name.clone(),
        block,
        version: version.map(str::to_string),
    }
}

/// The hash a download must match; a version without one is not served (`Unverifiable`).
fn expected(name: &PackageName, info: &TarballInfo) -> Result<Expected, Unverifiable> {
    Expected::from_dist(info.integrity.as_deref(), info.shasum.as_deref())
        .ok_or_else(|| Unverifiable(format!("{name}@{}", info.version)))
}

/// A version (`name@version`) whose packument gives no hash to check its tarball against.
#[derive(Debug, thiserror::Error)]
#[error("{0} has no dist.integrity or dist.shasum to check its tarball against")]
pub(crate) struct Unverifiable(String);
