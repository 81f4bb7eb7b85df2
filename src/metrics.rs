//! Prometheus metrics: requests by route and status, cache hits and misses by tier, upstream
//! requests and latency, bytes served, access refused.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    cache: Family<Labels, Counter>,
    upstream: Family<Labels, Counter>,
    upstream_seconds: Family<Labels, Histogram>,
    bytes_served: Family<Labels, Counter>,
    redis_up: Gauge,
    guard_blocks: Family<Labels, Counter>,
    acme_orders: Family<Labels, Counter>,
    changes_invalidations: Counter,
    connections_open: Gauge,
    connections_cut: Family<Labels, Counter>,
    tarball_downloads: Family<Labels, Counter>,
    tarball_store_errors: Counter,
    auth_denied: Family<Labels, Counter>,
    auth_reload_errors: Counter,
    breaker_state: Gauge,
    breaker_trips: Counter,
    stale_served: Family<Labels, Counter>,
    negative_hits: Counter,
}

/// An open client connection, counted until dropped.
pub struct OpenConnection(Gauge);

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
        let cache = Family::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by tier (l1, l2, disk) and result (hit, miss)",
            cache.clone(),
        );
        let upstream = Family::default();
        registry.register(
            "upstream_requests",
            "Requests to the upstream registry by kind and outcome",
            upstream.clone(),
        );
        let upstream_seconds =
            Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
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
            "Tarball misses by role (lead: fetched from upstream; join: served from a download in flight)",
            tarball_downloads.clone(),
        );
        let tarball_store_errors = Counter::default();
        registry.register(
            "tarball_store_errors",
            "Tarball downloads that could not be written to STORAGE_DIR (still verified, not cached)",
            tarball_store_errors.clone(),
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
        Metrics {
            registry,
            breaker_state,
            breaker_trips,
            stale_served,
            negative_hits,
            auth_denied,
            auth_reload_errors,
            tarball_downloads,
            tarball_store_errors,
            connections_open,
            connections_cut,
            requests,
            cache,
            upstream,
            upstream_seconds,
            bytes_served,
            redis_up,
            guard_blocks,
            changes_invalidations,
            acme_orders,
        }
    }
}

impl Metrics {
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    pub fn connection_deadline(&self, which: &'static str) {
        self.connections_cut
            .get_or_create(&vec![("deadline", which.to_string())])
            .inc();
    }

    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&vec![("route", route.to_string()), ("status", status.to_string())])
            .inc();
    }

    pub fn cache(&self, tier: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&vec![("tier", tier.to_string()), ("result", result.to_string())])
            .inc();
    }

    /// One upstream request of `kind` (packument, tarball, passthrough) and its outcome.
    pub fn upstream(&self, kind: &'static str, outcome: &str, seconds: f64) {
        self.upstream
            .get_or_create(&vec![("kind", kind.to_string()), ("outcome", outcome.to_string())])
            .inc();
        self.upstream_seconds
            .get_or_create(&vec![("kind", kind.to_string())])
            .observe(seconds);
    }

    pub fn bytes(&self, route: &'static str, n: u64) {
        self.bytes_served
            .get_or_create(&vec![("route", route.to_string())])
            .inc_by(n);
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn acme_order(&self, result: &'static str) {
        self.acme_orders
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn guard_block(&self, kind: &'static str) {
        self.guard_blocks.get_or_create(&vec![("type", kind.to_string())]).inc();
    }

    pub fn tarball_download(&self, role: &'static str) {
        self.tarball_downloads
            .get_or_create(&vec![("role", role.to_string())])
            .inc();
    }

    pub fn tarball_store_error(&self) {
        self.tarball_store_errors.inc();
    }

    pub fn auth_denied(&self, reason: &'static str) {
        self.auth_denied
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn auth_reload_error(&self) {
        self.auth_reload_errors.inc();
    }

    pub fn changes_invalidation(&self) {
        self.changes_invalidations.inc();
    }

    pub fn set_breaker_state(&self, state: i64) {
        self.breaker_state.set(state);
    }

    pub fn breaker_trip(&self) {
        self.breaker_trips.inc();
    }

    pub fn stale_served(&self, why: &'static str) {
        self.stale_served.get_or_create(&vec![("why", why.to_string())]).inc();
    }

    pub fn negative_hit(&self) {
        self.negative_hits.inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
