//! The tarball service: disk hits stream from the file; a miss streams from upstream to the
//! client and to a temp file at once while hashing, and the file is renamed into the cache
//! only when the hash matches the version's `dist.integrity` (else `dist.shasum`). The last
//! chunk is held back until that check, so a client never receives a complete bad tarball.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::cache::disk::{Cached, Pending, TarballStore};
use crate::guard::{Block, Guard};
use crate::metrics::Metrics;
use crate::npm::integrity::Expected;
use crate::npm::name::PackageName;
use crate::npm::packument::TarballInfo;
use crate::npm::path::version_from_file;
use crate::packuments::{FetchError, Package, Packuments, Source};
use crate::upstream::{Upstream, UpstreamError};

pub enum TarballBody {
    /// From the disk cache.
    Cached(Cached),
    /// A download in progress: chunks, and the length upstream announced.
    Download(mpsc::Receiver<io::Result<Bytes>>, Option<u64>),
}

#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    #[error("{0}")]
    NotFound(String),
    #[error("blocked: {}", block.reason)]
    Blocked {
        name: PackageName,
        block: Block,
        version: Option<String>,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

pub struct Tarballs {
    store: Arc<TarballStore>,
    packuments: Arc<Packuments>,
    guard: Arc<Guard>,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
}

impl Tarballs {
    pub fn new(
        store: Arc<TarballStore>,
        packuments: Arc<Packuments>,
        guard: Arc<Guard>,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
    ) -> Tarballs {
        Tarballs {
            store,
            packuments,
            guard,
            upstream,
            metrics,
        }
    }

    pub async fn get(&self, name: &PackageName, file: &str) -> Result<(TarballBody, bool), TarballError> {
        self.check_policy(name, file).await?;
        if let Some(cached) = self.store.open(name, file).await {
            self.metrics.cache("disk", true);
            return Ok((TarballBody::Cached(cached), true));
        }
        self.metrics.cache("disk", false);
        let info = self.find(name, file).await?;
        let url = info
            .upstream_url
            .clone()
            .unwrap_or_else(|| self.upstream.url(&format!("{name}/-/{file}")));
        let resp = self.upstream.tarball(&url).await.map_err(|e| match e {
            UpstreamError::Status(404) => TarballError::NotFound(format!("upstream has no tarball {file} of {name}")),
            e => TarballError::Fetch(e.into()),
        })?;
        let length = resp.content_length();
        let (tx, rx) = mpsc::channel(16);
        let expected = Expected::from_dist(info.integrity.as_deref(), info.shasum.as_deref());
        let pending = self
            .store
            .pending()
            .map_err(|e| FetchError::Internal(format!("temp file: {e}")))?;
        let job = Download {
            store: self.store.clone(),
            name: name.clone(),
            file: file.to_string(),
            version: info.version,
        };
        tokio::spawn(job.run(resp, pending, expected, tx));
        Ok((TarballBody::Download(rx, length), false))
    }

    /// Refuses blocked tarballs even when they are on disk: lockfile installs skip metadata
    /// and yarn 4 builds tarball URLs itself. Hits stay cheap: the packument is only needed
    /// when the release-age gate applies.
    async fn check_policy(&self, name: &PackageName, file: &str) -> Result<(), TarballError> {
        let policy = self.guard.policy();
        if let Some(block) = policy.package(name.as_str()) {
            return Err(TarballError::Blocked {
                name: name.clone(),
                block,
                version: None,
            });
        }
        let version = version_from_file(name, file);
        if let Some(v) = version
            && let Some(block) = policy.version(name.as_str(), v)
        {
            if block.kind == "malware" && self.store.purge(name, Some(v)) > 0 {
                tracing::warn!(package = %name, version = v, "purged a cached tarball now listed as malware");
            }
            return Err(TarballError::Blocked {
                name: name.clone(),
                block,
                version: Some(v.to_string()),
            });
        }
        if policy.age_gate(name.as_str()).is_some() {
            let (pkg, _) = self.packuments.get(name).await?;
            let version = version.or_else(|| pkg.index.files.get(file).map(|i| i.version.as_str()));
            if let Some(block) = version.and_then(|v| pkg.hidden.get(v)) {
                return Err(TarballError::Blocked {
                    name: name.clone(),
                    block: block.clone(),
                    version: version.map(str::to_string),
                });
            }
        }
        Ok(())
    }

    /// The packument's entry for `file`, refreshing the packument once if it does not know it
    /// (a version published after it was cached).
    async fn find(&self, name: &PackageName, file: &str) -> Result<TarballInfo, TarballError> {
        let (pkg, source) = self.packuments.get(name).await?;
        let allowed = |pkg: &Package| -> Option<Result<TarballInfo, TarballError>> {
            let info = pkg.index.files.get(file)?;
            Some(match pkg.hidden.get(&info.version) {
                Some(block) => Err(TarballError::Blocked {
                    name: name.clone(),
                    block: block.clone(),
                    version: Some(info.version.clone()),
                }),
                None => Ok(info.clone()),
            })
        };
        if let Some(found) = allowed(&pkg) {
            return found;
        }
        if source != Source::Upstream {
            let (pkg, _) = self.packuments.refresh(name).await?;
            if let Some(found) = allowed(&pkg) {
                return found;
            }
        }
        Err(TarballError::NotFound(format!(
            "{name} has no version with tarball {file}"
        )))
    }
}

/// One download from upstream, run in its own task so it completes (and fills the cache)
/// even when the client goes away.
struct Download {
    store: Arc<TarballStore>,
    name: PackageName,
    file: String,
    version: String,
}

impl Download {
    async fn run(
        self,
        resp: reqwest::Response,
        mut pending: Pending,
        expected: Option<Expected>,
        tx: mpsc::Sender<io::Result<Bytes>>,
    ) {
        let mut verifier = expected.as_ref().map(Expected::verifier);
        let mut held: Option<Bytes> = None;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(package = %self.name, file = %self.file, error = %e, "tarball download from upstream broke off");
                    let _ = tx.send(Err(io::Error::other("upstream download broke off"))).await;
                    return;
                }
            };
            if let Err(e) = pending.file.write_all(&chunk).await {
                tracing::error!(file = %self.file, error = %e, "cannot write tarball temp file; serving without caching");
                verifier = None;
            }
            if let Some(v) = verifier.as_mut() {
                v.update(&chunk);
            }
            if let Some(prev) = held.replace(chunk) {
                // A client that went away does not stop the download: the cache still fills.
                let _ = tx.send(Ok(prev)).await;
            }
        }
        let last = held.unwrap_or_default();
        match verifier.map(|v| v.matches()) {
            Some(true) => {
                if let Err(e) = self.store.persist(pending, &self.name, &self.file).await {
                    tracing::error!(file = %self.file, error = %e, "cannot store verified tarball");
                }
                let _ = tx.send(Ok(last)).await;
            }
            Some(false) => {
                tracing::error!(package = %self.name, version = %self.version, file = %self.file,
                    "tarball from upstream does not match dist.integrity; not cached, client aborted");
                let _ = tx.send(Err(io::Error::other("integrity mismatch"))).await;
            }
            None => {
                if expected.is_none() {
                    tracing::warn!(package = %self.name, version = %self.version, "packument gives no integrity for this tarball; served without caching");
                }
                let _ = tx.send(Ok(last)).await;
            }
        }
    }
}
