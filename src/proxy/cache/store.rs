//! The tarball store as the tarball service sees it (`TARBALL_STORE`): the disk (`disk`, the
//! cache of record), or a bucket (`s3`) with the disk as a bounded local cache in front of it
//! (`TARBALL_LOCAL_CACHE_MB`, 0: none). Reads go memory -> local disk -> bucket, so the hot path
//! stays local; a verified download is uploaded to the bucket before it is kept locally, and
//! a bucket that is down only costs its local copy and upstream fetches, never a request.
//! Unlike the local disk, which only npg's own rename of verified bytes writes, a bucket is
//! shared and reachable by others: what comes from it is checked against the version's
//! integrity like a download (the last chunk held back until it matched), and an object that
//! fails is deleted, so the next miss fills it anew.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::bucket::{Bucket, Object};
use super::disk::{Cached, Pending, TarballStore};
use super::local::LocalBound;
use crate::metrics::Metrics;
use crate::npm::integrity::{Expected, Verifier};
use crate::npm::name::PackageName;

/// Chunks buffered for a client of a tarball streamed from the bucket.
const STREAM_BUFFER: usize = 16;

/// A stored tarball.
pub(crate) enum Found {
    Cached(Cached),
    /// Streamed from the bucket: chunks, and the length.
    Streamed(mpsc::Receiver<io::Result<Bytes>>, u64),
}

pub(crate) struct Store {
    disk: Arc<TarballStore>,
    bucket: Option<S3>,
    metrics: Arc<Metrics>,
}

struct S3 {
    bucket: Arc<Bucket>,
    /// The local cache's bound; `None`: no local cache (memory only).
    local: Option<Arc<LocalBound>>,
}

impl Store {
    pub(crate) fn disk(disk: TarballStore, metrics: Arc<Metrics>) -> Store {
        Store {
            disk: Arc::new(disk),
            bucket: None,
            metrics,
        }
    }

    /// The bucket, with a local cache of at most `local_bytes` (0: none) in `disk`. Blocking
    /// (counts what the local cache holds).
    pub(crate) fn s3(disk: TarballStore, bucket: Bucket, local_bytes: u64, metrics: Arc<Metrics>) -> Store {
        let disk = disk.touching_reads();
        let local = (local_bytes > 0).then(|| Arc::new(LocalBound::new(disk.root(), local_bytes)));
        if let Some(local) = local.as_ref().filter(|l| l.used() > local_bytes) {
            // Over the bound already (a smaller TARBALL_LOCAL_CACHE_MB, a disk store reused).
            local.sweep();
        }
        let bucket = Some(S3 {
            bucket: Arc::new(bucket),
            local,
        });
        Store {
            disk: Arc::new(disk),
            bucket,
            metrics,
        }
    }

    /// `disk` or `s3`, as TARBALL_STORE says.
    pub(crate) fn kind(&self) -> &'static str {
        match self.bucket {
            None => "disk",
            Some(_) => "s3",
        }
    }

    /// The bucket, when there is one (for its probe and health).
    pub(crate) fn bucket(&self) -> Option<&Arc<Bucket>> {
        self.bucket.as_ref().map(|s| &s.bucket)
    }

    /// A stored tarball, counted by the tier that answered (`disk`; or `local`, then `bucket`).
    /// What the bucket gives is checked against `expected`; without it (no packument to say,
    /// upstream down) the bucket is not read: its bytes are never served unchecked.
    pub(crate) async fn lookup(&self, name: &PackageName, file: &str, expected: Option<&Expected>) -> Option<Found> {
        let Some(s3) = &self.bucket else {
            let found = self.disk.open(name, file).await;
            self.metrics.cache("disk", found.is_some());
            return found.map(Found::Cached);
        };
        let local = self.local(s3, name, file).await;
        self.metrics.cache("local", local.is_some());
        if local.is_some() {
            return local.map(Found::Cached);
        }
        let expected = expected.filter(|_| s3.bucket.is_up())?;
        let found = self.read_bucket(s3, name, file, expected).await;
        self.metrics.cache("bucket", found.is_some());
        found
    }

    /// Whether a tarball is a file on this replica's disk: one `stat`, for callers that hold
    /// a lock (a download stores its file there before it ends).
    pub(crate) fn kept_locally(&self, name: &PackageName, file: &str) -> bool {
        self.disk.path(name, file).is_some_and(|p| p.is_file())
    }

    /// A stored tarball, not counted (a download that just ended looks for its result).
    pub(crate) async fn open(&self, name: &PackageName, file: &str, expected: &Expected) -> Option<Found> {
        let Some(s3) = &self.bucket else {
            return self.disk.open(name, file).await.map(Found::Cached);
        };
        match self.local(s3, name, file).await {
            Some(cached) => Some(Found::Cached(cached)),
            None => self.read_bucket(s3, name, file, expected).await,
        }
    }

    async fn local(&self, s3: &S3, name: &PackageName, file: &str) -> Option<Cached> {
        match s3.local {
            Some(_) => self.disk.open(name, file).await,
            None => self.disk.in_memory(name, file).await.map(Cached::Whole),
        }
    }

    /// From the bucket: a small tarball whole (then kept in memory and on the local disk), a
    /// large one streamed (and written to the local cache as it goes).
    async fn read_bucket(&self, s3: &S3, name: &PackageName, file: &str, expected: &Expected) -> Option<Found> {
        let object = s3.bucket.get(name, file).await?;
        let mut check = Check {
            verifier: expected.verifier(),
            bucket: s3.bucket.clone(),
            metrics: self.metrics.clone(),
            name: name.clone(),
            file: file.to_string(),
        };
        let keep = match &s3.local {
            Some(bound) => self.disk.pending().ok().map(|p| (p, bound.clone())),
            None => None,
        };
        let keep = keep.map(|(pending, bound)| Keep {
            pending,
            bound,
            disk: self.disk.clone(),
            name: name.clone(),
            file: file.to_string(),
        });
        match object {
            Object::Whole(bytes) => {
                check.verifier.update(&bytes);
                if !check.passes().await {
                    return None;
                }
                self.disk.remember(name, file, bytes.clone()).await;
                if let Some(keep) = keep {
                    let bytes = bytes.clone();
                    tokio::spawn(async move {
                        let mut keep = keep;
                        if keep.pending.file.write_all(&bytes).await.is_ok() {
                            keep.done().await;
                        }
                    });
                }
                Some(Found::Cached(Cached::Whole(bytes)))
            }
            Object::Stream(chunks, size) => {
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                tokio::spawn(relay(chunks, size, tx, keep, check));
                Some(Found::Streamed(rx, size))
            }
        }
    }

    /// A new temp file beside the local files (the disk's).
    pub(crate) fn pending(&self) -> io::Result<Pending> {
        self.disk.pending()
    }

    /// Keeps a complete, verified download: renamed into place on disk; or uploaded to the
    /// bucket first, then kept in the local cache (when there is one). A bucket that fails
    /// (and is marked down) leaves the local copy only.
    pub(crate) async fn persist(&self, pending: Pending, name: &PackageName, file: &str) -> io::Result<()> {
        let Some(s3) = &self.bucket else {
            return self.disk.persist(pending, name, file).await.map(drop);
        };
        if !s3.bucket.put(name, file, pending.path()).await {
            tracing::warn!(package = %name, file, "tarball not uploaded to the bucket (down): kept locally only");
            self.metrics.tarball_store_error();
        }
        if let Some(bound) = &s3.local {
            let path = self.disk.persist(pending, name, file).await?;
            bound.added(file_size(&path).await);
        }
        Ok(())
    }

    /// Deletes tarballs newly found malicious (the given files, or every file of the package)
    /// from memory, disk and bucket; returns how many files went from the store of record.
    pub(crate) async fn purge(&self, name: &PackageName, files: Option<&[String]>) -> usize {
        let (disk, n, owned) = (self.disk.clone(), name.clone(), files.map(<[String]>::to_vec));
        let on_disk = tokio::task::spawn_blocking(move || disk.purge(&n, owned.as_deref()))
            .await
            .unwrap_or_default();
        match &self.bucket {
            None => on_disk,
            Some(s3) => s3.bucket.purge(name, files).await.max(on_disk),
        }
    }

    /// Removes temp files older than `age` (left by a crash). Blocking.
    pub(crate) fn clean_temp(&self, age: Duration) -> usize {
        self.disk.clean_temp(age)
    }
}

/// The check of a bucket read against the version's integrity.
struct Check {
    verifier: Verifier,
    bucket: Arc<Bucket>,
    metrics: Arc<Metrics>,
    name: PackageName,
    file: String,
}

impl Check {
    /// Whether the bytes read match; an object that does not is deleted (a later miss fills
    /// it anew: put-if-absent would otherwise keep the bad one for good).
    async fn passes(self) -> bool {
        if self.verifier.matches() {
            return true;
        }
        tracing::error!(package = %self.name, file = self.file,
            "a tarball in the bucket does not match dist.integrity; not served, object deleted");
        self.metrics.tarball_refused("bucket_integrity");
        self.bucket
            .purge(&self.name, Some(std::slice::from_ref(&self.file)))
            .await;
        false
    }
}

/// A bucket read being written to the local cache.
struct Keep {
    pending: Pending,
    bound: Arc<LocalBound>,
    disk: Arc<TarballStore>,
    name: PackageName,
    file: String,
}

impl Keep {
    async fn done(self) {
        match self.disk.persist(self.pending, &self.name, &self.file).await {
            Ok(path) => self.bound.added(file_size(&path).await),
            Err(e) => {
                tracing::warn!(package = %self.name, file = self.file, error = %e, "cannot keep a tarball from the bucket locally")
            }
        }
    }
}

/// Relays a large object to its client, and to the local cache when there is one, checking
/// it as it goes: the last chunk is held back until the whole matched, and the local copy is
/// kept only when complete and matching. The copy goes on when the client leaves.
async fn relay(
    mut chunks: BoxStream<'static, Result<Bytes, String>>,
    size: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
    mut keep: Option<Keep>,
    mut check: Check,
) {
    let (mut client, mut total, mut held) = (Some(tx), 0u64, None::<Bytes>);
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = e, "a tarball stream from the bucket broke off");
                if let Some(tx) = client {
                    let _ = tx.send(Err(io::Error::other("the bucket stopped sending"))).await;
                }
                return;
            }
        };
        total += chunk.len() as u64;
        check.verifier.update(&chunk);
        if let Some(k) = keep.as_mut()
            && k.pending.file.write_all(&chunk).await.is_err()
        {
            keep = None;
        }
        if let Some(prev) = held.replace(chunk)
            && let Some(tx) = &client
            && tx.send(Ok(prev)).await.is_err()
        {
            client = None;
        }
    }
    // Read to the end even when nobody reads along: a forged object is found and deleted.
    let matches = check.passes().await;
    if let Some(tx) = client {
        let last = match (matches, held) {
            (true, Some(last)) => Ok(last),
            (true, None) => return,
            (false, _) => Err(io::Error::other(
                "the tarball in the bucket does not match its integrity",
            )),
        };
        let _ = tx.send(last).await;
    }
    if let Some(keep) = keep.filter(|_| matches && total == size) {
        keep.done().await;
    }
}

async fn file_size(path: &Path) -> u64 {
    tokio::fs::metadata(path).await.map_or(0, |m| m.len())
}
