//! The malware feed refresher: keeps the guard's malware list current. The same job keeps any
//! malware source read from a URL (a `Source`: the feed here, the OSV list in `jobs::osv`), each
//! with its own lock, Redis key, kept copy and status; what follows is told of the feed.
//!
//! - The last good feed is kept on disk in the Node NPG's layout,
//!   `<MALWARE_LIST_DIR>/<feed host>/<file name>` with `.etag` beside it, and loaded before
//!   npg serves, so a restart without network still guards.
//! - Every `UPDATE_INTERVAL` the feed is fetched with `If-None-Match`. A bad download (status,
//!   JSON, network, timeout) keeps the list in use and is retried with backoff.
//! - In a cluster one replica fetches per interval: the holder of the Redis lock `feed`, and
//!   only when no replica checked within the interval (the hash `malware:feed` says when). It
//!   stores the raw feed there and announces it on the bus; the others load it from Redis on
//!   that event and on a periodic comparison (pub/sub may lose messages). Without Redis, or
//!   while it is down, each replica fetches for itself.
//! - Each new list replaces the guard's (a new policy version, so cached renderings are
//!   redone) and the tarballs it newly lists are deleted from disk.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use reqwest::{StatusCode, header};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use url::Url;

use crate::clock::{now_ms, unix_ms};
use crate::cluster::bus::{Bus, Event};
use crate::cluster::documents::{DocKind, DocStamps, SharedDocuments};
use crate::cluster::lock::RedisLock;
use crate::cluster::redis::SharedRedis;
use crate::config::Settings;
use crate::files::write_atomic;
use crate::guard::Guard;
use crate::guard::block::FeedSource;
use crate::guard::malware::MalwareList;
use crate::guard::status::{FeedStatus, ListOrigin, State};
use crate::metrics::{Feed, Metrics};
use crate::npm::name::PackageName;
use crate::proxy::rendered::{gunzip, gzip};
use crate::proxy::tarballs::Tarballs;
use crate::retry::Backoff;
use crate::upstream::{describe, etag_of, read_bounded};

/// How often a replica compares its list with the cluster's copy (at most the interval).
const CLUSTER_CHECK: Duration = Duration::from_secs(10);
/// First retry after a failed fetch; doubles up to the interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// Bound of one download, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Longer than a fetch, so the lock outlives it; short, so a crashed holder is replaced soon.
const LOCK_TTL: Duration = Duration::from_secs(180);
/// Far above any real feed: a body this large is refused rather than held in memory.
pub(crate) const MAX_FEED_BYTES: usize = 512 << 20;
/// A fetch in the cluster is skipped when another replica checked this recently (a fraction
/// of the interval: replicas' timers drift).
const RECENT_CHECK: f64 = 0.9;
/// How long a starting replica waits for Redis before it fetches on its own.
const REDIS_WAIT: Duration = Duration::from_secs(3);
/// Never spin, whatever UPDATE_INTERVAL says.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// While another replica holds the feed lock, how soon to try again: if the holder goes away
/// (its lease released on SIGTERM), the feed is fetched within seconds, not an interval later;
/// if it fetched, the next try finds its copy and fetches nothing.
const BUSY_RETRY: Duration = Duration::from_secs(3);
/// A malware source read from a URL: how its body becomes a list, and where the list and its
/// state go.
pub(crate) trait Source: Send + Sync + 'static {
    type List: Default + Send + Sync + 'static;
    /// Names it in logs and in the job list: "malware feed".
    const WHAT: &'static str;
    /// Names it in the metrics.
    const FEED: Feed;
    /// The Redis lease of the replica that fetches for the cluster.
    const LOCK: &'static str;
    /// The cluster's copy: a shared document whose stamp field is `updated`.
    const KEY: &'static str;
    const DOC: DocKind;

    fn parse(&self, body: &[u8]) -> anyhow::Result<Self::List>;
    /// Entries of a list, for the status.
    fn len(list: &Self::List) -> usize;
    fn in_force(guard: &Guard) -> Arc<Self::List>;
    fn install(guard: &Guard, list: Arc<Self::List>);
    fn update_status(guard: &Guard, update: impl FnOnce(&mut FeedStatus));
    /// What `new` lists and `old` did not (`None` as the version: every version).
    fn added_since(new: &Self::List, old: &Self::List) -> Vec<(String, Option<String>)>;
}

/// The Aikido-format feed (MALWARE_FEED_URL).
pub(crate) struct MalwareFeed {
    reasons: Vec<String>,
    source: FeedSource,
}

impl Source for MalwareFeed {
    type List = MalwareList;
    const WHAT: &'static str = "malware feed";
    const FEED: Feed = Feed::Malware;
    const LOCK: &'static str = "feed";
    const KEY: &'static str = "malware:feed";
    const DOC: DocKind = DocKind {
        stamp: "updated",
        what: "malware feed",
    };

    fn parse(&self, body: &[u8]) -> anyhow::Result<MalwareList> {
        let list = MalwareList::parse(body, &self.reasons)?;
        Ok(list.with_source(self.source.clone()))
    }

    fn len(list: &MalwareList) -> usize {
        list.len()
    }

    fn in_force(guard: &Guard) -> Arc<MalwareList> {
        guard.policy().malware.clone()
    }

    fn install(guard: &Guard, list: Arc<MalwareList>) {
        guard.set_malware(list);
    }

    fn update_status(guard: &Guard, update: impl FnOnce(&mut FeedStatus)) {
        guard.update_feed_status(update);
    }

    fn added_since(new: &MalwareList, old: &MalwareList) -> Vec<(String, Option<String>)> {
        new.added_since(old)
    }
}

/// What a scheduled look at the feed came to.
enum Looked {
    Done,
    /// Another replica holds the lock: look again soon.
    Busy,
}

/// A feed as kept on disk.
pub(crate) struct Persisted {
    pub(crate) body: Vec<u8>,
    pub(crate) etag: Option<String>,
    pub(crate) written: SystemTime,
}

/// Where the feed is kept on disk (the Node NPG's layout, so its volume is reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeedFiles {
    pub(crate) body: PathBuf,
    pub(crate) etag: PathBuf,
}

impl FeedFiles {
    pub(crate) fn new(dir: &Path, url: &Url) -> FeedFiles {
        let host = url.host_str().unwrap_or("feed");
        let file = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|f| !f.is_empty() && *f != "." && *f != "..")
            .unwrap_or("malware_predictions.json");
        let dir = dir.join(host);
        FeedFiles {
            body: dir.join(file),
            etag: dir.join(".etag"),
        }
    }

    /// The persisted feed; `None` if there is none.
    pub(crate) fn load(&self) -> io::Result<Option<Persisted>> {
        let body = match std::fs::read(&self.body) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let written = std::fs::metadata(&self.body)?.modified()?;
        let etag = std::fs::read_to_string(&self.etag)
            .ok()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty());
        Ok(Some(Persisted { body, etag, written }))
    }

    /// Writes both files atomically. The old ETag goes first, so a crash in between leaves a
    /// body without an ETag (a full fetch next time), never a stale ETag for a new body.
    pub(crate) fn save(&self, body: &[u8], etag: Option<&str>) -> io::Result<()> {
        let dir = self.body.parent().expect("feed file has a directory");
        std::fs::create_dir_all(dir)?;
        match std::fs::remove_file(&self.etag) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        write_atomic(&self.body, body)?;
        if let Some(etag) = etag {
            write_atomic(&self.etag, etag.as_bytes())?;
        }
        Ok(())
    }
}

/// A feed body parsed and fingerprinted (off the async threads: the real feed is large).
struct Parsed<L> {
    list: L,
    digest: Vec<u8>,
    body: Bytes,
}

async fn parse<S: Source>(source: &Arc<S>, body: Bytes) -> anyhow::Result<Parsed<S::List>> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        let list = source.parse(&body)?;
        let digest = Sha256::digest(&body).to_vec();
        Ok(Parsed { list, digest, body })
    })
    .await
    .context("feed parser failed")?
}

/// What a conditional fetch brought.
enum Fetched {
    NotModified,
    New { body: Bytes, etag: Option<String> },
}

/// What `new` lists and `old` did not, as package names (the feed is outside input: a name
/// that is not a package name cannot be cached).
fn newly_listed<S: Source>(new: &S::List, old: &S::List) -> Vec<(PackageName, Option<String>)> {
    let added = S::added_since(new, old);
    added
        .into_iter()
        .filter_map(|(name, version)| Some((PackageName::parse(&name).ok()?, version)))
        .collect()
}

/// Deletes the cached tarballs of what `new` lists and `old` did not; returns (entries, files).
pub(crate) async fn purge_added<S: Source>(tarballs: &Tarballs, new: &S::List, old: &S::List) -> (usize, usize) {
    let added = newly_listed::<S>(new, old);
    let mut files = 0;
    for (name, version) in &added {
        files += tarballs.purge(name, version.as_deref()).await;
    }
    (added.len(), files)
}

struct Refresher<S: Source> {
    url: Url,
    source: Arc<S>,
    files: FeedFiles,
    interval: Duration,
    guard: Arc<Guard>,
    tarballs: Arc<Tarballs>,
    redis: Arc<SharedRedis>,
    /// The cluster's copy (`S::KEY`).
    shared: SharedDocuments,
    bus: Arc<Bus>,
    lock: Arc<RedisLock>,
    client: reqwest::Client,
    /// The ETag of the list in use: what `If-None-Match` sends.
    etag: Option<String>,
    /// When the list in use was fetched (unix ms), to compare with the cluster's copy.
    updated_ms: u64,
    /// SHA-256 of the body in use: the same list again is not re-applied.
    digest: Vec<u8>,
}

/// What the feed refresher works with.
#[derive(Clone)]
pub(crate) struct FeedRefresher {
    pub(crate) guard: Arc<Guard>,
    pub(crate) tarballs: Arc<Tarballs>,
    pub(crate) redis: Arc<SharedRedis>,
    pub(crate) bus: Arc<Bus>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Loads the persisted feed into the guard at once (before npg serves), then keeps it current
/// in the background.
pub(crate) fn spawn(jobs: &crate::jobs::Jobs, refresher: FeedRefresher, settings: &Settings) {
    let url = settings.policy.malware_feed_url.clone();
    let feed = MalwareFeed {
        reasons: settings.policy.malware_feed_reasons.clone(),
        source: FeedSource::of(&url),
    };
    let files = FeedFiles::new(&settings.policy.malware_list_dir, &url);
    spawn_source(jobs, refresher, feed, url, files, settings);
}

/// Loads `source`'s copy kept in `files` into the guard at once (before npg serves), then keeps
/// it current from `url` in the background.
pub(crate) fn spawn_source<S: Source>(
    jobs: &crate::jobs::Jobs,
    refresher: FeedRefresher,
    source: S,
    url: Url,
    files: FeedFiles,
    settings: &Settings,
) {
    let FeedRefresher {
        guard,
        tarballs,
        redis,
        bus,
        metrics,
    } = refresher;
    let client = crate::upstream::client::builder(None)
        .read_timeout(Duration::from_secs(30))
        .gzip(true)
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, feed = S::WHAT, "no HTTP client for the feed; it will not be refreshed");
            return;
        }
    };
    let lock = Arc::new(RedisLock::new(redis.clone(), S::LOCK, LOCK_TTL));
    let mut refresher = Refresher {
        url,
        source: Arc::new(source),
        files,
        interval: settings.update_interval.max(MIN_INTERVAL),
        lock: lock.clone(),
        guard,
        tarballs,
        shared: SharedDocuments::new(redis.clone(), S::DOC),
        redis,
        bus,
        client,
        etag: None,
        updated_ms: 0,
        digest: Vec::new(),
    };
    let scheduled = settings.enable_scheduled_updates;
    if scheduled {
        metrics.feed_interval(S::FEED, refresher.interval);
    }
    // Before serving, so the first request is already guarded (once, at start).
    let from_disk = refresher.load_disk(scheduled);
    jobs.spawn_leased(S::WHAT, lock, async move {
        if let Some(list) = from_disk {
            // Tarballs cached before they were listed, by this run or an earlier one.
            let (_, files) = purge_added::<S>(&refresher.tarballs, &list, &S::List::default()).await;
            if files > 0 {
                tracing::info!(
                    files,
                    feed = S::WHAT,
                    "purged cached tarballs listed by the persisted feed"
                );
            }
        }
        if scheduled {
            refresher.run().await;
        }
    });
}

impl<S: Source> Refresher<S> {
    /// Applies the persisted feed, if any; returns its list for the purge.
    fn load_disk(&mut self, scheduled: bool) -> Option<Arc<S::List>> {
        let loaded = self.files.load();
        let state = if scheduled { State::Loading } else { State::Disabled };
        S::update_status(&self.guard, |s| s.state = state);
        let Persisted { body, etag, written } = match loaded {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::info!(path = %self.files.body.display(), feed = S::WHAT, "no persisted copy yet");
                return None;
            }
            Err(e) => {
                let error = format!("cannot read {}: {e}", self.files.body.display());
                tracing::warn!(%error, feed = S::WHAT, "persisted copy not loaded");
                S::update_status(&self.guard, |s| s.last_error = Some(error));
                return None;
            }
        };
        let list = match self.source.parse(&body) {
            Ok(list) => Arc::new(list),
            Err(e) => {
                let error = format!("{}: {e:#}", self.files.body.display());
                tracing::warn!(%error, feed = S::WHAT, "persisted copy not loaded");
                S::update_status(&self.guard, |s| s.last_error = Some(error));
                return None;
            }
        };
        self.digest = Sha256::digest(&body).to_vec();
        self.updated_ms = unix_ms(written);
        self.etag = etag;
        S::install(&self.guard, list.clone());
        self.set_ok(ListOrigin::Disk, self.updated_ms);
        tracing::info!(entries = S::len(&list), path = %self.files.body.display(), feed = S::WHAT, "loaded from disk");
        Some(list)
    }

    fn set_ok(&self, source: ListOrigin, at_ms: u64) {
        let entries = S::len(&S::in_force(&self.guard));
        let etag = self.etag.clone();
        S::update_status(&self.guard, |s| {
            s.state = State::Ok;
            s.entries = entries;
            s.etag = etag;
            s.source = Some(source);
            s.updated_at_ms = Some(at_ms);
            s.last_error = None;
        });
    }

    async fn run(mut self) {
        let mut events = self.bus.subscribe();
        let mut bus_open = true;
        let clustered = self.redis.clustered();
        if clustered {
            // The Redis monitor needs a moment to see Redis up; a replica that did not wait
            // would fetch for itself at every start.
            let deadline = Instant::now() + REDIS_WAIT;
            while self.redis.conn().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // A copy fetched while this replica was away is newer than its disk.
        self.sync_from_cluster().await;
        let mut next_fetch = Instant::now();
        let mut backoff = Backoff::new(FIRST_BACKOFF, self.interval);
        let mut check = tokio::time::interval(CLUSTER_CHECK.min(self.interval));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_fetch) => match self.refresh().await {
                    Ok(Looked::Done) => {
                        backoff.reset();
                        next_fetch = Instant::now() + self.interval;
                    }
                    Ok(Looked::Busy) => next_fetch = Instant::now() + BUSY_RETRY.min(self.interval),
                    Err(error) => {
                        let error = format!("{error:#}");
                        let retry_in = backoff.after_failure();
                        tracing::warn!(%error, ?retry_in, feed = S::WHAT, "not updated; keeping the list in use");
                        S::update_status(&self.guard, |s| {
                            s.state = State::Error;
                            s.last_error = Some(error);
                        });
                        next_fetch = Instant::now() + retry_in;
                    }
                },
                event = events.recv(), if bus_open => match event {
                    // Told of any source: the stamps of this one's copy tell whether it is new.
                    Ok(Event::FeedUpdated { .. }) | Err(RecvError::Lagged(_)) => self.sync_from_cluster().await,
                    Ok(_) => {}
                    Err(RecvError::Closed) => bus_open = false,
                },
                _ = check.tick(), if clustered => self.sync_from_cluster().await,
            }
        }
    }

    /// One scheduled look at the feed.
    async fn refresh(&mut self) -> anyhow::Result<Looked> {
        if self.redis.conn().is_none() {
            // No Redis, or Redis down: this replica fends for itself.
            let etag = self.etag.clone();
            return match self.download(etag.as_deref()).await? {
                Fetched::NotModified => {
                    self.checked();
                    Ok(Looked::Done)
                }
                Fetched::New { body, etag } => {
                    let parsed = parse(&self.source, body).await?;
                    self.apply(parsed, etag, now_ms(), ListOrigin::Remote).await;
                    Ok(Looked::Done)
                }
            };
        }
        if !self.lock.try_acquire().await {
            tracing::debug!(feed = S::WHAT, "another replica holds the feed lock");
            return Ok(Looked::Busy);
        }
        let lock = self.lock.clone();
        // A lost lease drops the download: its successor fetches and shares.
        let result = lock.hold_while(self.refresh_for_cluster()).await;
        lock.release().await;
        result.map_or(Ok(Looked::Busy), |r| r.map(|()| Looked::Done))
    }

    /// A refresh while holding the lock: fetch unless another replica just did, and share
    /// what was fetched.
    async fn refresh_for_cluster(&mut self) -> anyhow::Result<()> {
        let copy = self.shared.stamps(S::KEY).await;
        if let Some(copy) = &copy {
            if copy.stamp_ms.is_some_and(|u| u > self.updated_ms) {
                self.load_from_cluster(copy).await;
            }
            let recent = self.interval.mul_f64(RECENT_CHECK).as_millis() as u64;
            if copy.checked_ms.is_some_and(|c| now_ms().saturating_sub(c) < recent) {
                tracing::debug!(feed = S::WHAT, "checked recently by another replica");
                return Ok(());
            }
        }
        // A conditional fetch only when Redis holds the list in use: after a Redis restart
        // the full body is fetched again, so the others can load it.
        let shared_is_ours = copy
            .as_ref()
            .is_some_and(|c| c.stamp_ms.is_some() && c.etag.is_some() && c.etag == self.etag);
        let etag = if shared_is_ours { self.etag.clone() } else { None };
        match self.download(etag.as_deref()).await? {
            Fetched::NotModified => {
                self.store_checked().await;
                self.checked();
            }
            Fetched::New { body, etag } => {
                // Validated before sharing: a bad body must not reach the other replicas.
                let parsed = parse(&self.source, body).await?;
                let updated = now_ms();
                // A holder whose lease ran out while it downloaded leaves Redis to its successor.
                if self.lock.extend().await && self.store_copy(&parsed.body, etag.as_deref(), updated).await {
                    self.bus.publish(Event::FeedUpdated { etag: etag.clone() }).await;
                }
                self.apply(parsed, etag, updated, ListOrigin::Remote).await;
            }
        }
        Ok(())
    }

    /// A check that found nothing new (the list in use keeps its source).
    fn checked(&self) {
        let at = now_ms();
        S::update_status(&self.guard, |s| {
            s.state = State::Ok;
            s.updated_at_ms = Some(at);
            s.last_error = None;
        });
    }

    /// Puts a parsed feed in force (unless it is the list in use), persists it and purges.
    async fn apply(&mut self, parsed: Parsed<S::List>, etag: Option<String>, updated_ms: u64, source: ListOrigin) {
        let Parsed { list, digest, body } = parsed;
        let unchanged = digest == self.digest;
        self.etag = etag;
        self.updated_ms = updated_ms;
        let files = self.files.clone();
        let etag = self.etag.clone();
        let saved = tokio::task::spawn_blocking(move || files.save(&body, etag.as_deref())).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = %self.files.body.display(), feed = S::WHAT, "not persisted")
            }
            Err(e) => tracing::warn!(error = %e, feed = S::WHAT, "not persisted"),
        }
        if unchanged {
            self.set_ok(source, updated_ms);
            return;
        }
        self.digest = digest;
        let list = Arc::new(list);
        let old = S::in_force(&self.guard);
        S::install(&self.guard, list.clone());
        self.set_ok(source, updated_ms);
        let entries = S::len(&list);
        let (added, files) = purge_added::<S>(&self.tarballs, &list, &old).await;
        tracing::info!(
            feed = S::WHAT,
            entries,
            added,
            purged_files = files,
            source = source.as_str(),
            etag = self.etag.as_deref().unwrap_or(""),
            "updated"
        );
    }

    /// A conditional GET of the feed, bounded in time and size.
    async fn download(&self, etag: Option<&str>) -> anyhow::Result<Fetched> {
        let mut req = self.client.get(self.url.clone());
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let fetch = async {
            let resp = req
                .send()
                .await
                .map_err(|e| anyhow!("feed unreachable: {}", describe(e)))?;
            match resp.status() {
                StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
                StatusCode::OK => {}
                status => return Err(anyhow!("feed answered HTTP {}", status.as_u16())),
            }
            let etag = etag_of(&resp);
            let body = read_bounded(resp, MAX_FEED_BYTES)
                .await
                .map_err(|e| anyhow!("feed {e}"))?;
            Ok(Fetched::New { body, etag })
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| anyhow!("feed did not answer within {FETCH_TIMEOUT:?}"))?
    }

    /// Loads the cluster's copy when it is newer than the list in use.
    async fn sync_from_cluster(&mut self) {
        let Some(copy) = self.shared.stamps(S::KEY).await else {
            return;
        };
        if copy.stamp_ms.is_some_and(|u| u > self.updated_ms) {
            self.load_from_cluster(&copy).await;
        }
        self.checked_by_cluster(&copy);
    }

    /// Another replica's look that found nothing new counts for this one while it holds the
    /// cluster's list: otherwise the replicas that do not fetch would show (and alert on) the
    /// age of the list's last change rather than of the last look.
    fn checked_by_cluster(&self, copy: &DocStamps) {
        let holds_copy = copy.stamp_ms.is_some_and(|u| u <= self.updated_ms);
        let Some(at) = copy.checked_ms.filter(|_| holds_copy) else {
            return;
        };
        S::update_status(&self.guard, |s| {
            if s.updated_at_ms.is_none_or(|u| u < at) {
                s.updated_at_ms = Some(at);
            }
        });
    }

    async fn load_from_cluster(&mut self, copy: &DocStamps) {
        let Some(updated_ms) = copy.stamp_ms else { return };
        if copy.etag.is_some() && copy.etag == self.etag {
            // The list in use, fetched again (e.g. after Redis lost it): nothing to load.
            self.updated_ms = updated_ms;
            return;
        }
        let Ok(Some(stored)) = self.shared.body_gz(S::KEY, MAX_FEED_BYTES).await else {
            return;
        };
        let body = tokio::task::spawn_blocking(move || gunzip(&stored, MAX_FEED_BYTES)).await;
        let parsed = match body {
            Ok(Ok(body)) => parse(&self.source, body).await,
            Ok(Err(e)) => Err(anyhow!(e)),
            Err(e) => Err(e.into()),
        };
        match parsed {
            Ok(parsed) => {
                self.apply(parsed, copy.etag.clone(), updated_ms, ListOrigin::Redis)
                    .await
            }
            // Only a writer of another version could store this: keep the list in use.
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                feed = S::WHAT,
                "the cluster's copy in Redis is unusable"
            ),
        }
    }

    /// Shares a fetched feed; false when Redis did not take it.
    async fn store_copy(&self, body: &Bytes, etag: Option<&str>, updated_ms: u64) -> bool {
        if self.redis.conn().is_none() {
            return false;
        }
        let body = body.clone();
        let compressed = tokio::task::spawn_blocking(move || gzip(&body, flate2::Compression::default())).await;
        let Ok(compressed) = compressed else { return false };
        let stamps = DocStamps {
            etag: etag.map(str::to_string),
            stamp_ms: Some(updated_ms),
            checked_ms: Some(updated_ms),
        };
        self.shared.put(S::KEY, &compressed, &stamps, None).await
    }

    /// Tells the other replicas the feed was just asked (so they do not ask again).
    async fn store_checked(&self) {
        self.shared.touch(S::KEY, now_ms(), None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_npg_layout() {
        let url = Url::parse("https://malware-list.aikido.dev/malware_predictions.json").unwrap();
        let files = FeedFiles::new(Path::new("/var/lib/npg"), &url);
        assert_eq!(
            files.body,
            Path::new("/var/lib/npg/malware-list.aikido.dev/malware_predictions.json")
        );
        assert_eq!(files.etag, Path::new("/var/lib/npg/malware-list.aikido.dev/.etag"));
        let bare = FeedFiles::new(Path::new("d"), &Url::parse("http://127.0.0.1:8/").unwrap());
        assert_eq!(bare.body, Path::new("d/127.0.0.1/malware_predictions.json"));
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::parse("http://127.0.0.1:9/feeds/list.json").unwrap();
        let files = FeedFiles::new(dir.path(), &url);
        assert!(files.load().unwrap().is_none());
        files.save(b"[]", Some("\"v1\"")).unwrap();
        let saved = files.load().unwrap().unwrap();
        assert_eq!(
            (saved.body.as_slice(), saved.etag.as_deref()),
            (&b"[]"[..], Some("\"v1\""))
        );
        files.save(b"[ ]", None).unwrap();
        let saved = files.load().unwrap().unwrap();
        assert_eq!((saved.body.as_slice(), saved.etag), (&b"[ ]"[..], None));
        let names: Vec<_> = std::fs::read_dir(files.body.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["list.json"], "no temp files left");
    }

    #[test]
    fn purges_what_is_newly_listed() {
        let all = ["MALWARE".to_string()];
        let old = MalwareList::parse(br#"[{"package_name":"p","version":"1.0.0"}]"#, &all).unwrap();
        let new = MalwareList::parse(
            br#"[{"package_name":"p","version":"1.0.0"},{"package_name":"p","version":"1.0.1"},
                {"package_name":"../../x","version":"*"}]"#,
            &all,
        )
        .unwrap();
        let p = PackageName::parse("p").unwrap();
        assert_eq!(
            newly_listed::<MalwareFeed>(&new, &old),
            [(p, Some("1.0.1".to_string()))]
        );
    }
}
