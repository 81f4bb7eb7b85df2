//! One download from upstream, run in its own task so it completes (and fills the cache) even
//! when its clients go away. Every chunk is hashed whether or not the temp file takes it: a
//! full disk costs the cache, never the integrity check. The last chunk is held back until
//! the hash matched, so no client ever receives a complete bad tarball. The same holds for a
//! tarball whose own package.json runs install scripts its manifest does not declare
//! (`npm::tarball`): what the guard judged must be what npm runs.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::flight::{Failure, Landing, State};
use crate::metrics::Metrics;
use crate::npm::integrity::Expected;
use crate::npm::name::PackageName;
use crate::npm::tarball::ScriptProbe;
use crate::proxy::cache::disk::Pending;
use crate::proxy::cache::store::Store;
use crate::upstream::UpstreamError;

/// Chunks for the client that started the download, sent as they are verified safe to send.
pub(crate) type Direct = mpsc::Sender<io::Result<Bytes>>;

pub(crate) struct Download {
    pub(crate) name: PackageName,
    pub(crate) file: String,
    pub(crate) version: String,
    /// Whether the version's manifest declares an install script.
    pub(crate) declares_script: bool,
    pub(crate) expected: Expected,
    /// Where a verified download is kept; `None` for a private package (never cached).
    pub(crate) store: Option<Arc<Store>>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Where a download's bytes go.
pub(crate) struct Outputs {
    /// The temp file joiners read (and the cache keeps), while the disk takes it.
    pub(crate) pending: Option<Pending>,
    pub(crate) state: watch::Sender<State>,
    pub(crate) direct: Option<Direct>,
    /// Takes the download out of the map of downloads in flight when it ends.
    #[expect(dead_code, reason = "held for its Drop")]
    pub(crate) landing: Option<Landing>,
}

impl Download {
    pub(crate) async fn run(
        self,
        request: impl Future<Output = Result<reqwest::Response, UpstreamError>>,
        mut out: Outputs,
    ) {
        let resp = match request.await {
            Ok(resp) => resp,
            Err(UpstreamError::Status(404)) => return fail(&mut out, Failure::NotFound).await,
            Err(e) => return fail(&mut out, Failure::Upstream(e)).await,
        };
        let length = resp.content_length();
        out.state.send_replace(State::Streaming { length, relayable: 0 });
        let mut verifier = self.expected.verifier();
        let mut probe = ScriptProbe::default();
        let mut held: Option<Bytes> = None;
        let mut total = 0u64;
        let mut resp = resp;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(package = %self.name, file = %self.file, error = %e, "tarball download from upstream broke off");
                    let broke = UpstreamError::Network("the download from upstream broke off".into());
                    return fail(&mut out, Failure::Upstream(broke)).await;
                }
            };
            verifier.update(&chunk);
            probe.update(&chunk);
            // The chunk held until now is already in the file: release it before writing this
            // one, so no client waits for the disk.
            if let Some(prev) = held.take() {
                pass(&mut out, prev, total).await;
            }
            total += chunk.len() as u64;
            self.write(&mut out, &chunk).await;
            held = Some(chunk);
            if out.pending.is_none() && out.direct.is_none() {
                return; // nobody to serve and nothing to keep
            }
        }
        if !verifier.matches() {
            tracing::error!(package = %self.name, version = %self.version, file = %self.file,
                "tarball from upstream does not match dist.integrity; not cached, client aborted");
            self.metrics.tarball_refused("integrity");
            return fail(&mut out, Failure::Integrity).await;
        }
        let probed = probe.finish();
        if !probed.agrees(self.declares_script) {
            tracing::error!(package = %self.name, version = %self.version, file = %self.file, ?probed,
                "tarball runs install scripts its manifest does not declare (or cannot be read); not cached, client aborted");
            self.metrics.tarball_refused("undeclared_script");
            return fail(&mut out, Failure::UndeclaredScript).await;
        }
        let on_disk = out.pending.is_some();
        // The disk keeps it before its clients have it all (a quick rename: a client done can
        // count on the cache); a bucket's upload is not waited for.
        let uploads = self.store.as_ref().is_some_and(|s| s.bucket().is_some());
        if !uploads {
            self.keep(out.pending.take()).await;
        }
        out.state.send_replace(State::Verified { length: total });
        if let (Some(direct), Some(last)) = (out.direct.take(), held) {
            // With the file, a client that cannot take it now reads it there.
            let _ = match on_disk {
                true => direct.try_send(Ok(last)).map_err(|_| ()),
                false => direct.send(Ok(last)).await.map_err(|_| ()),
            };
        }
        // Until it is uploaded the download stays in flight: a new miss joins it.
        self.keep(out.pending.take()).await;
    }

    /// Appends to the temp file; a failure stops the file (joiners are told), never the hash.
    async fn write(&self, out: &mut Outputs, chunk: &Bytes) {
        let Some(pending) = out.pending.as_mut() else { return };
        // Flushed before it is announced: joiners read what `relayable` says is there.
        let written = match pending.file.write_all(chunk).await {
            Ok(()) => pending.file.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::error!(package = %self.name, file = %self.file, error = %e,
                "cannot write the tarball temp file; still verified, not cached");
            self.metrics.tarball_store_error();
            out.pending = None;
            out.state.send_modify(|s| {
                if let State::Streaming { length, .. } = *s {
                    *s = State::Unshared { length };
                }
            });
        }
    }

    /// Keeps a verified download in the store (renamed into place, or uploaded).
    async fn keep(&self, pending: Option<Pending>) {
        let (Some(store), Some(pending)) = (self.store.as_ref(), pending) else {
            return;
        };
        if let Err(e) = store.persist(pending, &self.name, &self.file).await {
            tracing::error!(package = %self.name, file = %self.file, error = %e, "cannot store a verified tarball");
            self.metrics.tarball_store_error();
        }
    }
}

/// Makes `chunk` (ending at `relayable`) available: in the file for joiners, and to the
/// direct client. While the file is there a slow direct client is not waited for (it goes on
/// reading the file), so no client can stall a download others share.
async fn pass(out: &mut Outputs, chunk: Bytes, relayable: u64) {
    if out.pending.is_some() {
        out.state.send_modify(|s| {
            if let State::Streaming { relayable: r, .. } = s {
                *r = relayable;
            }
        });
    }
    let Some(direct) = out.direct.as_ref() else { return };
    let delivered = if out.pending.is_some() {
        direct.try_send(Ok(chunk)).is_ok()
    } else {
        direct.send(Ok(chunk)).await.is_ok()
    };
    if !delivered {
        out.direct = None;
    }
}

/// Ends a download that failed: its temp file goes first, so nothing of it is left once
/// anyone hears of the failure.
async fn fail(out: &mut Outputs, failure: Failure) {
    out.pending = None;
    out.state.send_replace(State::Failed(failure.clone()));
    if let Some(direct) = &out.direct {
        let _ = direct.send(Err(io::Error::other(failure.to_string()))).await;
    }
}
