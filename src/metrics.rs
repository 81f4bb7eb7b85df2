//! Prometheus metrics: requests by route and status, cache hits and misses by tier, upstream
//! requests and latency, bytes served, access refused, and the ages the alerting rules of
//! `deploy/prometheus` watch (certificate expiry, last ACME order, malware feeds).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

// Label sets are small static structs: counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierResult {
    tier: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcome {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Action {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockType {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Role {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Why {
    why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SigLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabel {
    feed: &'static str,
}

/// A malware source kept current in the background, as its metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Feed {
    /// MALWARE_FEED_URL.
    Malware,
    /// OSV_FEED_URL or OSV_FEED_DIR.
    Osv,
}

impl Feed {
    fn label(self) -> FeedLabel {
        let feed = match self {
            Feed::Malware => "malware",
            Feed::Osv => "osv",
        };
        FeedLabel { feed }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Deadline {
    deadline: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    request_seconds: Family<Route, Histogram>,
    cache: Family<TierResult, Counter>,
    upstream: Family<KindOutcome, Counter>,
    upstream_seconds: Family<Kind, Histogram>,
    bytes_served: Family<Route, Counter>,
    redis_up: Gauge,
    redis_failovers: Counter,
    redis_unreplicated: Counter,
    redis_enabled: Gauge,
    guard_blocks: Family<BlockType, Counter>,
    acme_orders: Family<Outcome, Counter>,
    acme_failing: Gauge,
    certificate_expiry: Gauge,
    feed_updated: Family<FeedLabel, Gauge>,
    feed_interval: Family<FeedLabel, Gauge>,
    changes_invalidations: Counter,
    connections_open: Gauge,
    connections_cut: Family<Deadline, Counter>,
    tarball_downloads: Family<Role, Counter>,
    tarball_early: Family<Outcome, Counter>,
    tarball_store_errors: Counter,
    bucket_errors: Family<Op, Counter>,
    bucket_up: Gauge,
    tarball_refused: Family<Reason, Counter>,
    auth_denied: Family<Reason, Counter>,
    auth_reload_errors: Counter,
    breaker_state: Gauge,
    breaker_trips: Counter,
    stale_served: Family<Why, Counter>,
    negative_hits: Counter,
    typosquat_suspects: Family<Action, Counter>,
    signature_checks: Family<SigLabel, Counter>,
    tally: Tally,
}

/// The cache tiers, in the order a request meets them.
pub(crate) const TIERS: [&str; 5] = ["l1", "l2", "disk", "local", "bucket"];

/// Running totals for the status page's history (a Prometheus family cannot be listed back):
/// one relaxed add beside each count.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    /// Hits and misses per tier of `TIERS`.
    cache: [[AtomicU64; 2]; TIERS.len()],
    upstream: AtomicU64,
    upstream_errors: AtomicU64,
    upstream_micros: AtomicU64,
    /// Blocks by rule: rare, so a lock is fine.
    blocks: Mutex<BTreeMap<&'static str, u64>>,
}

/// What `Metrics::totals` reads: counts since this replica started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    /// `[hits, misses]` per tier of `TIERS`.
    pub(crate) cache: [[u64; 2]; TIERS.len()],
    pub(crate) upstream_requests: u64,
    /// Upstream requests that failed: 5xx, timeouts, connection errors, an open breaker.
    pub(crate) upstream_errors: u64,
    pub(crate) upstream_seconds: f64,
    pub(crate) blocks: BTreeMap<String, u64>,
}

/// An open client connection, counted until dropped.
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("npg");
        let requests = Family::default();
        registry.register("http_requests", "HTTP requests by route and status", requests.clone());
        let request_seconds = Family::<Route, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to response headers by route (a streamed body's transfer not included)",
            request_seconds.clone(),
        );
        let cache = Family::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by tier (l1, l2, disk; with TARBALL_STORE=s3 local, bucket) and result (hit, miss)",
            cache.clone(),
        );
        let upstream = Family::default();
        registry.register(
            "upstream_requests",
            "Requests to the upstream registry by kind and outcome",
            upstream.clone(),
        );
        let upstream_seconds = Family::<Kind, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "upstream_request_duration_seconds",
            "Upstream latency to response headers",
            upstream_seconds.clone(),
        );
        let bytes_served = Family::default();
        registry.register(
            "bytes_served",
            "Response body bytes served by route",
            bytes_served.clone(),
        );
        let redis_up = Gauge::default();
        registry.register("redis_up", "1 when the shared Redis answers", redis_up.clone());
        let redis_failovers = Counter::default();
        registry.register(
            "redis_failovers",
            "Times the Redis master changed under this replica (Sentinel failovers followed)",
            redis_failovers.clone(),
        );
        let redis_unreplicated = Counter::default();
        registry.register(
            "redis_unreplicated",
            "Leases and fenced writes no Redis replica acknowledged in time (WAIT)",
            redis_unreplicated.clone(),
        );
        let redis_enabled = Gauge::default();
        registry.register(
            "redis_enabled",
            "1 when this replica is configured with a shared Redis (npg_redis_up is 0 without one)",
            redis_enabled.clone(),
        );
        let guard_blocks = Family::default();
        registry.register(
            "guard_blocks",
            "Refused requests and hidden versions by rule type",
            guard_blocks.clone(),
        );
        let changes_invalidations = Counter::default();
        registry.register(
            "changes_invalidations",
            "Packages invalidated because the registry's changes feed listed them",
            changes_invalidations.clone(),
        );
        let acme_orders = Family::default();
        registry.register(
            "acme_orders",
            "ACME orders placed by this replica, by result",
            acme_orders.clone(),
        );
        let acme_failing = Gauge::default();
        registry.register(
            "acme_last_order_failed",
            "1 when this replica's last ACME order failed (renewal failing), 0 after one succeeds",
            acme_failing.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the certificate this replica serves expires (unix seconds; 0: none served)",
            certificate_expiry.clone(),
        );
        let feed_updated = Family::default();
        registry.register(
            "feed_updated_timestamp_seconds",
            "When the malware source in force was last fetched or found unchanged (unix seconds; 0: never)",
            feed_updated.clone(),
        );
        let feed_interval = Family::default();
        registry.register(
            "feed_refresh_interval_seconds",
            "How often the malware source is refreshed (UPDATE_INTERVAL; absent when it is not)",
            feed_interval.clone(),
        );
        let connections_open = Gauge::default();
        registry.register("connections_open", "Client connections open", connections_open.clone());
        let connections_cut = Family::default();
        registry.register(
            "connections_cut",
            "Client connections closed by a deadline (head: no request in time; idle)",
            connections_cut.clone(),
        );
        let tarball_downloads = Family::default();
        registry.register(
            "tarball_downloads",
            "Tarball misses by role (lead: fetched from upstream; join: served from a download in flight; follow: stored in the bucket meanwhile by the replica that held the fill lease)",
            tarball_downloads.clone(),
        );
        let tarball_early = Family::default();
        registry.register(
            "tarball_early_requests",
            "Tarballs asked of upstream while their packument was on its way, by result (used: the leading download took the answer; unused: blocked, stored, another URL, or the client gone)",
            tarball_early.clone(),
        );
        let tarball_store_errors = Counter::default();
        registry.register(
            "tarball_store_errors",
            "Tarball downloads that could not be written to STORAGE_DIR or the bucket (still verified, not cached there)",
            tarball_store_errors.clone(),
        );
        let bucket_errors = Family::default();
        registry.register(
            "tarball_bucket_errors",
            "Calls to the tarball bucket (TARBALL_STORE=s3) that failed or passed their deadline, by operation",
            bucket_errors.clone(),
        );
        let bucket_up = Gauge::default();
        registry.register(
            "tarball_bucket_up",
            "1 while the tarball bucket answers (TARBALL_STORE=s3)",
            bucket_up.clone(),
        );
        let tarball_refused = Family::default();
        registry.register(
            "tarball_refused",
            "Tarballs from upstream refused whole, never cached (integrity: not the bytes dist.integrity names; undeclared_script: runs install scripts its manifest does not declare)",
            tarball_refused.clone(),
        );
        let auth_denied = Family::default();
        registry.register(
            "auth_denied",
            "Requests refused by access control, by reason (missing, invalid, forbidden)",
            auth_denied.clone(),
        );
        let auth_reload_errors = Counter::default();
        registry.register(
            "auth_reload_errors",
            "Reloads of AUTH_TOKENS_FILE refused (the previous table stays)",
            auth_reload_errors.clone(),
        );
        let breaker_state = Gauge::default();
        registry.register(
            "upstream_breaker_state",
            "The upstream breaker: 0 closed, 1 open (upstream taken as down), 2 half-open (probing)",
            breaker_state.clone(),
        );
        let breaker_trips = Counter::default();
        registry.register(
            "upstream_breaker_trips",
            "Times the upstream breaker opened (here or on another replica)",
            breaker_trips.clone(),
        );
        let stale_served = Family::default();
        registry.register(
            "stale_served",
            "Packuments served stale, by why (revalidating: upstream slower than the grace; upstream_error; breaker_open)",
            stale_served.clone(),
        );
        let negative_hits = Counter::default();
        registry.register(
            "negative_cache_hits",
            "Upstream fetches saved by remembering a miss (unknown package, version or file)",
            negative_hits.clone(),
        );
        let typosquat_suspects = Family::default();
        registry.register(
            "typosquat_suspects",
            "Requests for names that look like a popular one, by action (warn: served with a notice; block: refused)",
            typosquat_suspects.clone(),
        );
        let signature_checks = Family::default();
        registry.register(
            "signature_checks",
            "Registry signatures checked at rendering, by state (valid, invalid, unsigned, unknown_key)",
            signature_checks.clone(),
        );
        Metrics {
            signature_checks,
            typosquat_suspects,
            registry,
            breaker_state,
            breaker_trips,
            stale_served,
            negative_hits,
            auth_denied,
            auth_reload_errors,
            tarball_downloads,
            tarball_early,
            tarball_store_errors,
            bucket_errors,
            bucket_up,
            tarball_refused,
            connections_open,
            connections_cut,
            requests,
            request_seconds,
            cache,
            upstream,
            upstream_seconds,
            bytes_served,
            redis_up,
            redis_failovers,
            redis_unreplicated,
            redis_enabled,
            guard_blocks,
            changes_invalidations,
            acme_orders,
            acme_failing,
            certificate_expiry,
            feed_updated,
            feed_interval,
            tally: Tally::default(),
        }
    }
}

impl Metrics {
    pub(crate) fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    pub(crate) fn connection_deadline(&self, which: &'static str) {
        self.connections_cut.get_or_create(&Deadline { deadline: which }).inc();
    }

    pub(crate) fn request(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests.get_or_create(&RouteStatus { route, status }).inc();
        self.tally.requests.fetch_add(1, Ordering::Relaxed);
        self.request_seconds.get_or_create(&Route { route }).observe(seconds);
    }

    pub(crate) fn cache(&self, tier: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache.get_or_create(&TierResult { tier, result }).inc();
        if let Some(i) = TIERS.iter().position(|t| *t == tier) {
            self.tally.cache[i][usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One upstream request of `kind` (packument, tarball, passthrough) and its outcome.
    pub(crate) fn upstream(&self, kind: &'static str, outcome: &'static str, seconds: f64) {
        self.upstream.get_or_create(&KindOutcome { kind, outcome }).inc();
        self.upstream_seconds.get_or_create(&Kind { kind }).observe(seconds);
        let tally = &self.tally;
        tally.upstream.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, "error" | "timeout" | "breaker_open") {
            tally.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
        tally
            .upstream_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub(crate) fn bytes(&self, route: &'static str, n: u64) {
        self.bytes_served.get_or_create(&Route { route }).inc_by(n);
    }

    pub(crate) fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub(crate) fn redis_failover(&self) {
        self.redis_failovers.inc();
    }

    pub(crate) fn redis_unreplicated(&self) {
        self.redis_unreplicated.inc();
    }

    /// Whether Redis is configured at all, so that "Redis down" can be told from "no Redis".
    pub(crate) fn set_redis_enabled(&self, enabled: bool) {
        self.redis_enabled.set(i64::from(enabled));
    }

    pub(crate) fn acme_order(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.acme_orders.get_or_create(&Outcome { result }).inc();
        self.acme_failing.set(i64::from(!ok));
    }

    /// The certificate now served expires at `not_after` (unix seconds).
    pub(crate) fn certificate_served(&self, not_after: i64) {
        self.certificate_expiry.set(not_after);
    }

    /// `feed`'s state changed; `updated_at_ms` is its last good look (`None`: never yet).
    pub(crate) fn feed_updated(&self, feed: Feed, updated_at_ms: Option<u64>) {
        let seconds = updated_at_ms.map_or(0, |ms| (ms / 1000) as i64);
        self.feed_updated.get_or_create(&feed.label()).set(seconds);
    }

    /// `feed` is refreshed every `interval`: its age is judged against it.
    pub(crate) fn feed_interval(&self, feed: Feed, interval: std::time::Duration) {
        self.feed_interval
            .get_or_create(&feed.label())
            .set(interval.as_secs().max(1) as i64);
    }

    pub(crate) fn guard_block(&self, kind: &'static str) {
        self.guard_blocks.get_or_create(&BlockType { r#type: kind }).inc();
        *self
            .tally
            .blocks
            .lock()
            .expect("block tally poisoned")
            .entry(kind)
            .or_default() += 1;
    }

    pub(crate) fn tarball_download(&self, role: &'static str) {
        self.tarball_downloads.get_or_create(&Role { role }).inc();
    }

    pub(crate) fn tarball_early(&self, result: &'static str) {
        self.tarball_early.get_or_create(&Outcome { result }).inc();
    }

    pub(crate) fn tarball_store_error(&self) {
        self.tarball_store_errors.inc();
    }

    pub(crate) fn bucket_error(&self, op: &'static str) {
        self.bucket_errors.get_or_create(&Op { op }).inc();
    }

    pub(crate) fn set_bucket_up(&self, up: bool) {
        self.bucket_up.set(i64::from(up));
    }

    pub(crate) fn tarball_refused(&self, reason: &'static str) {
        self.tarball_refused.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn auth_denied(&self, reason: &'static str) {
        self.auth_denied.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn auth_reload_error(&self) {
        self.auth_reload_errors.inc();
    }

    pub(crate) fn changes_invalidation(&self) {
        self.changes_invalidations.inc();
    }

    pub(crate) fn set_breaker_state(&self, state: i64) {
        self.breaker_state.set(state);
    }

    pub(crate) fn breaker_trip(&self) {
        self.breaker_trips.inc();
    }

    pub(crate) fn stale_served(&self, why: &'static str) {
        self.stale_served.get_or_create(&Why { why }).inc();
    }

    pub(crate) fn negative_hit(&self) {
        self.negative_hits.inc();
    }

    pub(crate) fn typosquat_suspect(&self, action: &'static str) {
        self.typosquat_suspects.get_or_create(&Action { action }).inc();
    }

    /// Counts the registry signature states of one rendering (`SigState::as_str`).
    pub(crate) fn signatures(&self, states: impl Iterator<Item = &'static str>) {
        for state in states {
            self.signature_checks.get_or_create(&SigLabel { state }).inc();
        }
    }

    /// Prometheus text exposition.
    /// The running totals since start.
    pub(crate) fn totals(&self) -> Totals {
        let t = &self.tally;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            requests: read(&t.requests),
            cache: t.cache.each_ref().map(|[h, m]| [read(h), read(m)]),
            upstream_requests: read(&t.upstream),
            upstream_errors: read(&t.upstream_errors),
            upstream_seconds: read(&t.upstream_micros) as f64 / 1e6,
            blocks: (t.blocks.lock().expect("block tally poisoned").iter())
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_named_as_before() {
        let m = Metrics::default();
        m.request("packument", 200, 0.03);
        m.guard_block("malware");
        m.upstream("tarball", "not_found", 0.01);
        let text = m.render();
        for line in [
            r#"npg_http_requests_total{route="packument",status="200"} 1"#,
            r#"npg_http_request_duration_seconds_bucket{le="0.02",route="packument"} 0"#,
            r#"npg_http_request_duration_seconds_bucket{le="0.04",route="packument"} 1"#,
            r#"npg_guard_blocks_total{type="malware"} 1"#,
            r#"npg_upstream_requests_total{kind="tarball",outcome="not_found"} 1"#,
            r#"npg_upstream_request_duration_seconds_count{kind="tarball"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn totals_follow_the_counts() {
        let m = Metrics::default();
        m.request("packument", 200, 0.01);
        m.request("tarball", 404, 0.01);
        m.cache("l1", true);
        m.cache("l1", false);
        m.cache("bucket", false);
        m.upstream("packument", "ok", 0.25);
        m.upstream("tarball", "timeout", 0.5);
        m.guard_block("malware");
        m.guard_block("malware");
        let t = m.totals();
        assert_eq!(t.requests, 2);
        assert_eq!(t.cache[0], [1, 1]);
        assert_eq!(t.cache[4], [0, 1]);
        assert_eq!((t.upstream_requests, t.upstream_errors), (2, 1));
        assert!((t.upstream_seconds - 0.75).abs() < 1e-3, "{t:?}");
        assert_eq!(t.blocks.get("malware"), Some(&2));
    }

    #[test]
    fn alerting_gauges() {
        let m = Metrics::default();
        let text = m.render();
        // before anything happened: no certificate, no failed order, no feed series
        assert!(text.contains("npg_certificate_expiry_timestamp_seconds 0\n"), "{text}");
        assert!(text.contains("npg_acme_last_order_failed 0\n"), "{text}");
        assert!(text.contains("npg_redis_enabled 0\n"), "{text}");
        assert!(!text.contains("npg_feed_updated_timestamp_seconds{"), "{text}");
        m.acme_order(false);
        m.set_redis_enabled(true);
        m.certificate_served(1_900_000_000);
        m.feed_updated(Feed::Malware, None);
        m.feed_updated(Feed::Osv, Some(1_800_000_123_456));
        m.feed_interval(Feed::Osv, std::time::Duration::from_millis(100));
        let text = m.render();
        for line in [
            "npg_acme_last_order_failed 1\n",
            "npg_redis_enabled 1\n",
            r#"npg_acme_orders_total{result="error"} 1"#,
            "npg_certificate_expiry_timestamp_seconds 1900000000\n",
            r#"npg_feed_updated_timestamp_seconds{feed="malware"} 0"#,
            r#"npg_feed_updated_timestamp_seconds{feed="osv"} 1800000123"#,
            // never 0: the rule compares the age with three times it
            r#"npg_feed_refresh_interval_seconds{feed="osv"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        m.acme_order(true);
        assert!(m.render().contains("npg_acme_last_order_failed 0\n"));
    }
}
