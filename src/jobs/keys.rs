//! The registry's signing keys, kept current for the signature policy (SIGNATURE_POLICY).
//!
//! - The last good keys document is kept on disk, `<MALWARE_LIST_DIR>/registry-keys/<registry
//!   host>/keys` (the feed's `FeedFiles`), and loaded before npg serves, so a restart without
//!   network still verifies.
//! - Every SIGNATURE_KEYS_INTERVAL `<REGISTRY_URL>-/npm/v1/keys` is fetched through the
//!   upstream client (its deadlines, breaker and metrics). A 404 means the registry publishes
//!   no keys: none are in force (health says so). A failure keeps the keys in use and is
//!   retried with backoff.
//! - In a cluster one replica fetches per interval, as the malware feed: the holder of the
//!   Redis lock `keys`, and only when no replica fetched within the interval (the shared
//!   document `registry:keys` says when; an empty body there is "no keys"). The others load
//!   the cluster's copy when they look (every few seconds) and find it newer than theirs.
//! - New keys replace the guard's signature rules (a new policy version: packuments are
//!   rendered again, with their signatures checked against the new keys). Keys never go away
//!   silently: a registry that had keys and now publishes none (a 404, an empty list) is an
//!   error, and the keys in force stay (what a hostile upstream turning verification off
//!   looks like).
//! - SIGNATURE_KEYS_FILE pins the keys: they come from that file only, and upstream is never
//!   asked (an upstream that can replace the signatures can replace its keys too).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use tokio::time::Instant;

use crate::clock::{now_ms, unix_ms};
use crate::cluster::documents::{DocKind, DocStamps, SharedDocuments};
use crate::cluster::lock::RedisLock;
use crate::cluster::redis::SharedRedis;
use crate::config::Settings;
use crate::guard::Guard;
use crate::guard::signatures::{RegistryKeys, SignatureMode, Signatures};
use crate::guard::status::{ListOrigin, State};
use crate::jobs::feed::{FeedFiles, Persisted};
use crate::proxy::rendered::{gunzip, gzip};
use crate::retry::Backoff;
use crate::upstream::{Fetched, KEYS_PATH, Upstream};

/// A keys document is a few hundred bytes: anything near this is not one.
const MAX_KEYS_BYTES: usize = 1 << 20;
/// How often a replica compares its keys with the cluster's copy (at most the interval).
const CLUSTER_CHECK: Duration = Duration::from_secs(10);
/// First retry after a failed fetch; doubles up to the interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// Longer than a fetch (UPSTREAM_FETCH_DEADLINE is far less), short if a holder crashes.
const LOCK_TTL: Duration = Duration::from_secs(120);
/// While another replica holds the lock, how soon to look again.
const BUSY_RETRY: Duration = Duration::from_secs(3);
/// A fetch in the cluster is skipped when another replica fetched this recently (a fraction
/// of the interval: replicas' timers drift).
const RECENT: f64 = 0.9;
/// How long a starting replica waits for Redis before it fetches on its own.
const REDIS_WAIT: Duration = Duration::from_secs(3);
/// Never spin, whatever SIGNATURE_KEYS_INTERVAL says.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const KEYS: DocKind = DocKind {
    stamp: "updated",
    what: "registry keys",
};
const KEYS_KEY: &str = "registry:keys";

struct Refresher {
    mode: SignatureMode,
    guard: Arc<Guard>,
    upstream: Arc<Upstream>,
    redis: Arc<SharedRedis>,
    shared: SharedDocuments,
    lock: Arc<RedisLock>,
    files: FeedFiles,
    interval: Duration,
    /// The document in force (empty: the registry publishes none), and when it was fetched.
    body: Option<Bytes>,
    updated_ms: u64,
}

/// Puts SIGNATURE_POLICY in force with the kept keys (before npg serves), then keeps the keys
/// current in the background; nothing when the policy is off.
pub(crate) fn spawn(
    jobs: &crate::jobs::Jobs,
    guard: Arc<Guard>,
    upstream: Arc<Upstream>,
    redis: Arc<SharedRedis>,
    settings: &Settings,
) {
    let mode = settings.signature_policy;
    guard.set_signatures(Signatures {
        mode,
        keys: Arc::default(),
    });
    if mode == SignatureMode::Off {
        guard.update_keys_status(|s| s.state = State::Disabled);
        return;
    }
    if let Some(path) = &settings.signature_keys_file {
        return pin(&guard, mode, path);
    }
    let url = settings
        .registry_url
        .join(KEYS_PATH)
        .unwrap_or_else(|_| settings.registry_url.clone());
    let lock = Arc::new(RedisLock::new(redis.clone(), "keys", LOCK_TTL));
    let mut refresher = Refresher {
        mode,
        guard,
        upstream,
        shared: SharedDocuments::new(redis.clone(), KEYS),
        redis,
        lock: lock.clone(),
        files: FeedFiles::new(&settings.policy.malware_list_dir.join("registry-keys"), &url),
        interval: settings.signature_keys_interval.max(MIN_INTERVAL),
        body: None,
        updated_ms: 0,
    };
    refresher.load_disk();
    jobs.spawn_leased("registry keys", lock, refresher.run());
}

/// The operator's keys, in force for the life of the process (checked by the preflight).
fn pin(guard: &Guard, mode: SignatureMode, path: &std::path::Path) {
    match RegistryKeys::load(path) {
        Ok(keys) => {
            let count = keys.len();
            guard.set_signatures(Signatures {
                mode,
                keys: Arc::new(keys),
            });
            tracing::info!(keys = count, path = %path.display(), "registry signing keys pinned");
            guard.update_keys_status(|s| {
                s.state = State::Ok;
                s.count = count;
                s.source = Some(ListOrigin::File);
            });
        }
        Err(e) => {
            let error = format!("{e:#}");
            tracing::error!(%error, "SIGNATURE_KEYS_FILE not loaded: nothing verified");
            guard.update_keys_status(|s| {
                s.state = State::Error;
                s.last_error = Some(error);
            });
        }
    }
}

impl Refresher {
    /// The kept keys, if any.
    fn load_disk(&mut self) {
        let found = match self.files.load() {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                let error = format!("cannot read {}: {e}", self.files.body.display());
                tracing::warn!(%error, "kept registry keys not loaded");
                self.guard.update_keys_status(|s| s.last_error = Some(error));
                return;
            }
        };
        let Persisted { body, written, .. } = found;
        if let Err(e) = self.apply(body.into(), ListOrigin::Disk, unix_ms(written)) {
            tracing::warn!(error = format!("{e:#}"), path = %self.files.body.display(), "kept registry keys not loaded");
        }
    }

    async fn run(mut self) {
        let clustered = self.redis.clustered();
        if clustered {
            let deadline = Instant::now() + REDIS_WAIT;
            while self.redis.conn().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut next_fetch = Instant::now();
        let mut backoff = Backoff::new(FIRST_BACKOFF.min(self.interval), self.interval);
        let mut check = tokio::time::interval(CLUSTER_CHECK.min(self.interval));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_fetch) => match self.refresh().await {
                    Ok(true) => {
                        backoff.reset();
                        next_fetch = Instant::now() + self.interval;
                    }
                    Ok(false) => next_fetch = Instant::now() + BUSY_RETRY.min(self.interval),
                    Err(error) => {
                        let error = format!("{error:#}");
                        let retry_in = backoff.after_failure();
                        tracing::warn!(%error, ?retry_in, "registry keys not updated; keeping the keys in use");
                        self.guard.update_keys_status(|s| {
                            s.state = State::Error;
                            s.last_error = Some(error);
                        });
                        next_fetch = Instant::now() + retry_in;
                    }
                },
                _ = check.tick(), if clustered => self.sync_from_cluster().await,
            }
        }
    }

    /// One scheduled look at the keys: false when another replica holds the lock.
    async fn refresh(&mut self) -> anyhow::Result<bool> {
        if self.redis.conn().is_none() {
            let body = self.download().await?;
            self.apply(body, ListOrigin::Remote, now_ms())?;
            return Ok(true);
        }
        if !self.lock.try_acquire().await {
            return Ok(false);
        }
        let lock = self.lock.clone();
        let result = lock.hold_while(self.refresh_for_cluster()).await;
        lock.release().await;
        result.map_or(Ok(false), |r| r.map(|()| true))
    }

    /// Under the lock: the cluster's copy when it is recent, else a fetch, shared.
    async fn refresh_for_cluster(&mut self) -> anyhow::Result<()> {
        if let Some(copy) = self.shared.stamps(KEYS_KEY).await
            && let Some(updated) = copy.stamp_ms
        {
            if updated > self.updated_ms {
                self.load_from_cluster(updated).await;
            }
            if now_ms().saturating_sub(updated) < self.interval.mul_f64(RECENT).as_millis() as u64 {
                return Ok(());
            }
        }
        let body = self.download().await?;
        let updated = now_ms();
        // Checked before sharing: a bad document must not reach the other replicas.
        self.apply(body.clone(), ListOrigin::Remote, updated)?;
        if self.lock.extend().await {
            let stamps = DocStamps {
                etag: None,
                stamp_ms: Some(updated),
                checked_ms: Some(updated),
            };
            let gz = gzip(&body, flate2::Compression::default());
            self.shared.put(KEYS_KEY, &gz, &stamps, None).await;
        }
        Ok(())
    }

    /// The keys document from upstream; empty when it publishes none.
    async fn download(&self) -> anyhow::Result<Bytes> {
        match self.upstream.keys(MAX_KEYS_BYTES).await {
            Ok(Fetched::Modified { body, .. }) if body.is_empty() => Err(anyhow!("keys endpoint answered nothing")),
            Ok(Fetched::Modified { body, .. }) => Ok(body),
            Ok(Fetched::NotFound) => Ok(Bytes::new()),
            Ok(Fetched::NotModified) => Err(anyhow!("keys endpoint answered 304 unasked")),
            Err(e) => Err(anyhow!("keys not fetched: {e}")),
        }
    }

    async fn sync_from_cluster(&mut self) {
        if let Some(copy) = self.shared.stamps(KEYS_KEY).await
            && let Some(updated) = copy.stamp_ms.filter(|u| *u > self.updated_ms)
        {
            self.load_from_cluster(updated).await;
        }
    }

    async fn load_from_cluster(&mut self, updated: u64) {
        let Ok(Some(gz)) = self.shared.body_gz(KEYS_KEY, MAX_KEYS_BYTES).await else {
            return;
        };
        let loaded = gunzip(&gz, MAX_KEYS_BYTES)
            .map_err(anyhow::Error::from)
            .and_then(|body| self.apply(body, ListOrigin::Redis, updated));
        if let Err(e) = loaded {
            tracing::warn!(
                error = format!("{e:#}"),
                "the cluster's registry keys in Redis are unusable"
            );
        }
    }

    /// Puts a keys document in force (an empty one: no keys) unless it is the one in use,
    /// and keeps it on disk.
    fn apply(&mut self, body: Bytes, source: ListOrigin, updated_ms: u64) -> anyhow::Result<()> {
        let keys = match body.is_empty() {
            true => RegistryKeys::default(),
            false => RegistryKeys::parse(body.clone())?,
        };
        let in_force = self.guard.policy().signatures.keys.len();
        if keys.is_empty() && in_force > 0 {
            return Err(anyhow!(
                "the registry stopped publishing signing keys; keeping the {in_force} in force"
            ));
        }
        self.updated_ms = updated_ms;
        if self.body.as_ref() != Some(&body) {
            let count = keys.len();
            self.guard.set_signatures(Signatures {
                mode: self.mode,
                keys: Arc::new(keys),
            });
            tracing::info!(keys = count, source = source.as_str(), "registry signing keys in force");
            if source != ListOrigin::Disk
                && let Err(e) = self.persist(&body)
            {
                tracing::warn!(error = %e, path = %self.files.body.display(), "registry keys not kept on disk");
            }
            self.body = Some(body.clone());
        }
        let count = self.guard.policy().signatures.keys.len();
        self.guard.update_keys_status(|s| {
            s.state = State::Ok;
            s.count = count;
            s.none_published = body.is_empty();
            s.source = Some(source);
            s.fetched_at_ms = Some(updated_ms);
            s.last_error = None;
        });
        Ok(())
    }

    /// Keeps the document on disk; "no keys" removes the kept one.
    fn persist(&self, body: &[u8]) -> io::Result<()> {
        if body.is_empty() {
            return match std::fs::remove_file(&self.files.body) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        self.files.save(body, None)
    }
}
