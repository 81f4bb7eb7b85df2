//! The changes-feed follower: packages that changed upstream are dropped from every cache at
//! once instead of when their TTL runs out.
//!
//! The feed (npm's replicate service since 2025) lists changed names without documents:
//! `GET <base>/_changes?since=<seq>&limit=<n>`; the head is `update_seq` of `GET <base>/`.
//! One replica of a cluster follows it (lock `changes`), deletes each changed package from
//! Redis (L2) and its own memory, and tells the others over the bus to drop their memory copy.
//! Its position is kept in Redis (`changes:seq`), so a successor resumes where it stopped.
//! Without Redis the node follows alone and keeps its position in memory.
//!
//! The feed has been reset and has lagged before: a `since` beyond the head means a reset and
//! the follower restarts from the current head (changes in between are missed; the metadata
//! TTL is the backstop for anything this misses).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::bus::{Bus, Event};
use crate::cluster::lock::RedisLock;
use crate::cluster::redis::SharedRedis;
use crate::cluster::values::SharedError;
use crate::config::Settings;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::npm::name::PackageName;
use crate::proxy::packuments::Packuments;
use crate::retry::{Backoff, jittered};
use crate::upstream::redact::redact;
use crate::upstream::{describe, read_bounded};

/// The lease outlives a stuck holder by at most this long.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a replica that does not lead tries to take over.
const ACQUIRE_EVERY: Duration = Duration::from_secs(3);
/// Retries of a failed page: from a second, doubling up to a minute.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A page of 10000 changes is ~1 MB; anything far larger is not a changes page.
const MAX_PAGE_BYTES: usize = 64 << 20;
const SEQ_KEY: &str = "changes:seq";

/// What /api/health can show about the follower.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ChangesStatus {
    /// `ENABLE_NPM_CHANGES_POLLER`.
    pub(crate) enabled: bool,
    /// This replica follows the feed now.
    pub(crate) leader: bool,
    /// The last sequence this replica processed (as leader).
    pub(crate) seq: Option<u64>,
    /// The last failure while leading; cleared by the next good page.
    pub(crate) last_error: Option<String>,
}

/// The follower's state, shared with the HTTP side.
#[derive(Default)]
pub(crate) struct ChangesState(Mutex<ChangesStatus>);

impl ChangesState {
    pub(crate) fn new(enabled: bool) -> ChangesState {
        ChangesState(Mutex::new(ChangesStatus {
            enabled,
            ..ChangesStatus::default()
        }))
    }

    pub(crate) fn snapshot(&self) -> ChangesStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut ChangesStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Drops from this replica's memory what another replica's follower reports as changed.
pub(crate) fn spawn_listener(jobs: &Jobs, bus: &Bus, packuments: Arc<Packuments>) {
    let mut events = bus.subscribe();
    jobs.spawn("invalidation listener", async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(Event::PackageChanged { name }) => match PackageName::parse(&name) {
                    Ok(name) => packuments.invalidate(&name, false).await,
                    Err(e) => tracing::debug!(%name, error = %e, "ignoring a change event for a bad name"),
                },
                Ok(_) => {}
                // Missed invalidations only mean those packages wait for their TTL.
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "change events dropped: too many at once"),
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// What the changes follower works with.
pub(crate) struct ChangesFollower {
    pub(crate) packuments: Arc<Packuments>,
    pub(crate) redis: Arc<SharedRedis>,
    pub(crate) bus: Arc<Bus>,
    pub(crate) status: Arc<ChangesState>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) instance: String,
}

impl ChangesFollower {
    /// Starts the follower when `ENABLE_NPM_CHANGES_POLLER` is on. It runs until the jobs
    /// stop: every failure is logged, recorded in the status, and retried.
    pub(crate) fn spawn(self, jobs: &Jobs, settings: &Settings) {
        if !settings.enable_npm_changes_poller {
            return;
        }
        let Some(base) = settings.registry_poll_url.as_ref() else {
            tracing::error!("ENABLE_NPM_CHANGES_POLLER is on without REGISTRY_POLL_URL: not following changes");
            return;
        };
        let feed = match Feed::new(base.as_str(), &self.instance) {
            Ok(feed) => feed,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the changes-feed client: not following changes");
                self.status.update(|s| s.last_error = Some(e.to_string()));
                return;
            }
        };
        let lock = Arc::new(RedisLock::new(self.redis.clone(), "changes", LOCK_TTL));
        let follower = Follower {
            job: self,
            feed,
            interval: settings.npm_changes_poll_interval,
            limit: settings.npm_changes_batch_size.max(1),
            seq: None,
        };
        jobs.spawn_leased("changes follower", lock.clone(), follower.run(lock));
    }
}

struct Follower {
    job: ChangesFollower,
    feed: Feed,
    interval: Duration,
    limit: u32,
    /// Where this replica stopped, for when Redis has no position (or there is no Redis).
    seq: Option<u64>,
}

impl Follower {
    async fn run(mut self, lock: Arc<RedisLock>) {
        loop {
            if !lock.try_acquire().await {
                self.job.status.update(|s| s.leader = false);
                tokio::time::sleep(jittered(ACQUIRE_EVERY)).await;
                continue;
            }
            tracing::info!(instance = %self.job.instance, "following the registry changes feed");
            self.job.status.update(|s| s.leader = true);
            self.lead(&lock).await;
            self.job.status.update(|s| s.leader = false);
            tracing::warn!("stopped following the changes feed (lock lost or Redis failed)");
        }
    }

    /// Follows while the lock is ours (extended every third of its TTL); returns when it is lost.
    async fn lead(&mut self, lock: &RedisLock) {
        lock.hold_while(self.follow(lock)).await;
    }

    /// Pages through the feed until caught up, sleeps, repeats. Returns only when a fenced
    /// write shows the lock is gone.
    async fn follow(&mut self, lock: &RedisLock) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut since = loop {
            match self.start_seq().await {
                Ok(seq) => break seq,
                Err(e) => self.failed(&mut backoff, e).await,
            }
        };
        if !self.record(since, lock).await {
            return;
        }
        loop {
            let page = match self.feed.page(since, self.limit).await {
                Ok(page) => page,
                Err(e) => {
                    self.failed(&mut backoff, e).await;
                    continue;
                }
            };
            backoff.reset();
            self.job.status.update(|s| s.last_error = None);
            if page.ids.is_empty() {
                // Caught up, or `since` lies beyond a feed that was reset: only the head tells.
                let head = match self.feed.head().await {
                    Ok(head) => head,
                    Err(e) => {
                        self.failed(&mut backoff, e).await;
                        continue;
                    }
                };
                if let Some(restart) = reset_target(since, page.last_seq, head) {
                    tracing::warn!(since, restart, "the changes feed was reset; continuing from its head");
                    since = restart;
                    if !self.record(since, lock).await {
                        return;
                    }
                }
                tokio::time::sleep(self.interval).await;
                continue;
            }
            self.invalidate(&page.ids).await;
            if page.next <= since {
                // Without a later sequence the same page would come back at once, forever.
                self.failed(&mut backoff, anyhow!("the changes feed did not move past {since}"))
                    .await;
                continue;
            }
            since = page.next;
            if !self.record(since, lock).await {
                return;
            }
            if page.count < self.limit as usize {
                tokio::time::sleep(self.interval).await;
            }
        }
    }

    /// The stored position (Redis, then memory), or the feed's head on a first start.
    async fn start_seq(&self) -> anyhow::Result<u64> {
        if self.job.redis.clustered() {
            let stored = match self.job.redis.get(SEQ_KEY, "changes position").await {
                Ok(stored) => stored,
                Err(SharedError::Unavailable) => {
                    return Err(anyhow!("redis unavailable: cannot read the changes position"));
                }
                Err(SharedError::Failed { source, .. }) => {
                    return Err(source).context("reading the changes position");
                }
            };
            if let Some(seq) = stored.and_then(|s| s.trim().parse().ok()) {
                tracing::info!(seq, "resuming the changes feed from the stored position");
                return Ok(seq);
            }
        }
        if let Some(seq) = self.seq {
            return Ok(seq);
        }
        let head = self.feed.head().await?;
        tracing::info!(seq = head, "starting the changes feed at its head");
        Ok(head)
    }

    /// Keeps the position; false when the lock turned out to be gone (then stop: the new
    /// leader owns the position).
    async fn record(&mut self, seq: u64, lock: &RedisLock) -> bool {
        self.seq = Some(seq);
        self.job.status.update(|s| s.seq = Some(seq));
        if !self.job.redis.clustered() {
            return true;
        }
        lock.set_if_held(SEQ_KEY, &seq.to_string()).await
    }

    async fn invalidate(&self, ids: &[String]) {
        let shared = self.job.redis.clustered();
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            // The feed also lists design documents (`_design/...`) and other non-packages.
            let Ok(name) = PackageName::parse(id) else {
                tracing::debug!(%id, "skipping a change that is not a package");
                continue;
            };
            self.job.packuments.invalidate(&name, shared).await;
            self.job.metrics.changes_invalidation();
            if shared {
                self.job.bus.publish(Event::PackageChanged { name: id.clone() }).await;
            }
        }
        tracing::debug!(count = seen.len(), "invalidated changed packages");
    }

    async fn failed(&self, backoff: &mut Backoff, error: anyhow::Error) {
        let error = format!("{error:#}");
        tracing::warn!(%error, "changes feed");
        self.job.status.update(|s| s.last_error = Some(error));
        tokio::time::sleep(backoff.after_failure()).await;
    }
}

/// After an empty page: the sequence to restart from when `since` lies beyond the feed (it
/// was reset), given what the page reported as `last_seq` and the feed's `update_seq`.
fn reset_target(since: u64, last_seq: Option<u64>, head: u64) -> Option<u64> {
    let end = last_seq.map_or(head, |last| last.min(head));
    (end < since).then_some(end)
}

struct Feed {
    client: reqwest::Client,
    /// `<base>/_changes`
    changes: String,
    /// `<base>/`
    root: String,
}

struct Page {
    /// Changed ids in feed order (may repeat, may include non-packages).
    ids: Vec<String>,
    /// Entries in the page, to tell a full page (more to come) from the tail.
    count: usize,
    last_seq: Option<u64>,
    /// Where the next page starts: `last_seq`, else the highest `seq` seen.
    next: u64,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    results: Vec<RawChange>,
    #[serde(default)]
    last_seq: Option<Value>,
}

#[derive(Deserialize)]
struct RawChange {
    #[serde(default)]
    seq: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct RawRoot {
    update_seq: Option<Value>,
}

impl Feed {
    fn new(base: &str, instance: &str) -> anyhow::Result<Feed> {
        let client = crate::upstream::client::builder(Some(&format!("changes follower; {instance}")))
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = base.trim_end_matches('/');
        Ok(Feed {
            client,
            changes: format!("{base}/_changes"),
            root: format!("{base}/"),
        })
    }

    async fn head(&self) -> anyhow::Result<u64> {
        let body = self.get(&self.root).await?;
        let shown = || format!("GET {}", redact(&self.root));
        let root: RawRoot = serde_json::from_slice(&body).context("bad JSON").with_context(shown)?;
        root.update_seq
            .as_ref()
            .and_then(seq_number)
            .ok_or_else(|| anyhow!("{}: no numeric update_seq", shown()))
    }

    async fn page(&self, since: u64, limit: u32) -> anyhow::Result<Page> {
        let url = format!("{}?since={since}&limit={limit}", self.changes);
        let body = self.get(&url).await?;
        parse_page(&body).with_context(|| format!("GET {}", redact(&url)))
    }

    async fn get(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let shown = redact(url);
        let resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| anyhow!("GET {shown}: {}", describe(e)))?;
        if !resp.status().is_success() {
            return Err(anyhow!("GET {shown}: HTTP {}", resp.status().as_u16()));
        }
        let body = read_bounded(resp, MAX_PAGE_BYTES)
            .await
            .map_err(|e| anyhow!("GET {shown}: {e}"))?;
        Ok(body.to_vec())
    }
}

fn parse_page(body: &[u8]) -> anyhow::Result<Page> {
    let raw: RawPage = serde_json::from_slice(body).context("bad JSON")?;
    let last_seq = match &raw.last_seq {
        None | Some(Value::Null) => None,
        Some(v) => Some(seq_number(v).ok_or_else(|| anyhow!("unsupported last_seq {v}"))?),
    };
    let mut highest = None;
    for change in &raw.results {
        if let Some(v) = &change.seq {
            let seq = seq_number(v).ok_or_else(|| anyhow!("unsupported seq {v}"))?;
            highest = highest.max(Some(seq));
        }
    }
    Ok(Page {
        count: raw.results.len(),
        ids: raw.results.into_iter().filter_map(|c| c.id).collect(),
        last_seq,
        next: last_seq.or(highest).unwrap_or(0),
    })
}

/// npm's sequences are integers; some CouchDB-style servers send them as strings.
fn seq_number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_with_numbers_strings_and_deletions() {
        let page = parse_page(
            br#"{"results":[{"seq":11,"id":"a","changes":[{"rev":"1-x"}]},
                {"seq":"12","id":"_design/app","changes":[]},
                {"seq":13,"id":"@s/b","changes":[{"rev":"2-y"}],"deleted":true}],"last_seq":13}"#,
        )
        .unwrap();
        assert_eq!(page.ids, ["a", "_design/app", "@s/b"]);
        assert_eq!((page.count, page.last_seq, page.next), (3, Some(13), 13));

        let no_last = parse_page(br#"{"results":[{"seq":5,"id":"a"},{"seq":7,"id":"b"}]}"#).unwrap();
        assert_eq!((no_last.last_seq, no_last.next), (None, 7));
        let empty = parse_page(br#"{"results":[],"last_seq":"40"}"#).unwrap();
        assert_eq!((empty.count, empty.last_seq), (0, Some(40)));
        assert!(parse_page(br#"{"results":[{"seq":"3-g1AAA","id":"a"}]}"#).is_err());
        assert!(parse_page(b"<html>").is_err());
    }

    #[test]
    fn a_since_beyond_the_feed_is_a_reset() {
        // Caught up: the page echoes `since` or reports the head.
        assert_eq!(reset_target(100, Some(100), 100), None);
        assert_eq!(reset_target(100, None, 250), None);
        // The feed says it ends before `since`.
        assert_eq!(reset_target(100, Some(7), 7), Some(7));
        // The page echoes `since`, but the head is behind it.
        assert_eq!(reset_target(100, Some(100), 7), Some(7));
        assert_eq!(reset_target(100, None, 0), Some(0));
    }
}
