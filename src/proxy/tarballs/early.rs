//! A tarball asked of upstream while its packument is still on its way. On a cold miss the
//! guard and `dist.integrity` need the packument first, so a miss would cost two upstream
//! round trips in a row; npm's lockfile installs ask for tarballs only. The early request
//! goes to the URL npm's layout gives the file (`<registry>/<name>/-/<file>`) and only waits
//! for upstream's answer: no byte of its body is read until the guard has judged the
//! version, and its answer is used only by the download that leads the miss, only when the
//! packument names that same URL for the file, and only through the same verification as any
//! download. Unused (blocked, stored, another URL, the client gone), it is dropped, which
//! aborts it. One early request per file at a time, and none while the last miss showed
//! upstream placing tarballs elsewhere (each would be wasted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::task::AbortOnDropHandle;

use crate::metrics::Metrics;
use crate::npm::name::PackageName;
use crate::upstream::{Upstream, UpstreamError};

type Key = (PackageName, String);

/// The early requests under way, by file.
#[derive(Default)]
pub(super) struct Earlies {
    started: Mutex<HashMap<Key, Early>>,
    next_id: AtomicU64,
    /// The last packument-given tarball URL was not where npm's layout puts it.
    elsewhere: AtomicBool,
}

/// One early request: where it went and its answer to come.
pub(super) struct Early {
    id: u64,
    url: String,
    answer: AbortOnDropHandle<Result<reqwest::Response, UpstreamError>>,
    metrics: Arc<Metrics>,
    used: bool,
}

/// Held by the request that started an early request: when it ends, an early request nobody
/// took is dropped.
pub(super) struct Claim {
    earlies: Arc<Earlies>,
    key: Key,
    id: u64,
}

impl Earlies {
    /// Asks upstream for `file` at `url` unless an early request for it is under way.
    pub(super) fn start(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        metrics: &Arc<Metrics>,
        name: &PackageName,
        file: &str,
        url: String,
    ) -> Option<Claim> {
        if self.elsewhere.load(Ordering::Relaxed) {
            return None;
        }
        let key = (name.clone(), file.to_string());
        let mut started = self.lock();
        if started.contains_key(&key) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let upstream = upstream.clone();
        let asked = url.clone();
        let answer = AbortOnDropHandle::new(tokio::spawn(async move { upstream.tarball(&asked, None).await }));
        let early = Early {
            id,
            url,
            answer,
            metrics: metrics.clone(),
            used: false,
        };
        started.insert(key.clone(), early);
        Some(Claim {
            earlies: self.clone(),
            key,
            id,
        })
    }

    /// Notes whether upstream put a tarball where npm's layout does.
    pub(super) fn observe(&self, follows_layout: bool) {
        self.elsewhere.store(!follows_layout, Ordering::Relaxed);
    }

    /// The early request for `file`, if it went to `url`, for the download that leads.
    pub(super) fn take(&self, name: &PackageName, file: &str, url: &str) -> Option<Early> {
        let mut started = self.lock();
        let key = (name.clone(), file.to_string());
        match started.get(&key) {
            Some(early) if early.url == url => started.remove(&key),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Early>> {
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut started = self.earlies.lock();
        if started.get(&self.key).is_some_and(|e| e.id == self.id) {
            let unused = started.remove(&self.key);
            // Aborted (and counted) outside the lock.
            drop(started);
            drop(unused);
        }
    }
}

impl Early {
    /// Upstream's answer (its head; the body is read by the download).
    pub(super) async fn answer(mut self) -> Result<reqwest::Response, UpstreamError> {
        self.used = true;
        let answer = (&mut self.answer).await;
        answer.unwrap_or_else(|e| Err(UpstreamError::Network(format!("early tarball request failed: {e}"))))
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        let outcome = if self.used { "used" } else { "unused" };
        self.metrics.tarball_early(outcome);
    }
}
