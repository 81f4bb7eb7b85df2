//! npg: a security gateway and caching proxy for the npm registry.
//!
//! Layout: a folder per concern, each module in one place of this list (no module imports one
//! that imports it back, `scripts/import-cycles` checks it in CI; `cli`, `app` and `http` sit
//! on top, `npm`, `clock`, `files` and `retry` at the bottom). Where a behaviour lives:
//! - `cli`: the one subcommand dispatcher and `serve`'s life: listeners, jobs, the drain on
//!   SIGTERM. `main.rs` only picks the allocator and calls it.
//! - `config`: settings from flags and env, checked once at start (without writing to disk);
//!   `preflight`: the files they name (blocklist, tokens, TLS...) loaded and checked before
//!   anything listens; `npg check-config` runs exactly the same.
//! - `app`: the handler state that ties the services together, built once, and the list of
//!   the background jobs it starts under `jobs::Jobs`.
//! - `http`: routing, access checks (`auth`), error bodies and status lines (`errors`,
//!   `phrase`), the packument, tarball, passthrough and guard routes, client caching,
//!   `/api/health` and metrics, the status page and `/api/status` with this replica's
//!   announcement to the cluster (`status`), the HTTP-01 answer (`challenge`), connections and their
//!   deadlines, the listener and graceful shutdown (`server`).
//! - `proxy`: what answers metadata and tarball requests: `packuments` (stale-while-revalidate,
//!   stale-if-error, misses remembered) rendering through `rendered` (a packument filtered by
//!   the policy, in both forms, and `DocMeta`); `tarballs` (one download per file, joined by
//!   concurrent misses, verified on the stream; once per cluster on one bucket: `lease`; on
//!   a cold miss asked of upstream beside the packument: `early`);
//!   `singleflight`; `cache` (L1 rendered responses in process, L2 raw documents in Redis,
//!   tarballs (`store`: on disk, or in an S3 bucket (`bucket`, `TARBALL_STORE=s3`, read back
//!   checked against the integrity) behind a bounded local disk cache (`local`)), small ones
//!   also in memory (`hot`), large ones shared while sent under a byte budget (`large`),
//!   remembered misses, packuments imported from a bundle).
//! - `upstream`: the HTTP client to the registry and the one builder of every HTTP client npg
//!   makes: deadlines, allowed origins, npg's own credentials (by scope), URL redaction, and
//!   the breaker that takes a sick upstream as down for the whole cluster.
//! - `budget`: the memory budget that documents being read and rendered hold.
//! - `guard`: the rules, pure (no cluster, cache or config inside): the blocklist, the malware
//!   list, the OSV malware advisories (`osv`), the install-script policy (`scripts`), the
//!   release-age gate and the typosquat rule (`typosquat`: names that look like a popular
//!   one, from the list in `data/`) as one policy, judged from each version's facts
//!   (`npm::packument::VersionFacts`); exemption lists (`names`); how a refusal is told
//!   (`block`: the rule and its words; `restrictions`: npm's `policyRestrictions`); the inputs'
//!   states (`status`); npm registry signatures checked against the registry's keys
//!   (`signatures`).
//! - `jobs`: the background work and its one owner, stopped on SIGTERM with its Redis leases
//!   released: the changes follower (`changes`, and the listener that drops what other
//!   replicas report as changed), the malware feed refresher and its kept copy (`feed`, generic
//!   over a `Source`), the OSV advisories from a URL through it or from a directory (`osv`), the
//!   blocklist and token-file reloads (`blocklist`, `tokens`, on `watch`), the registry's
//!   signing keys (`keys`: fetched, shared in the cluster, kept on disk).
//! - `cluster`: the one place that speaks Redis: the connection and its health (`redis`, which
//!   follows a Sentinel failover to the master `sentinel` looks up), leases (`Locker`,
//!   `hold_while`, acted on once a replica has them), shared documents and values, certificate
//!   `Storage`, the TLS session ticket keys (`ticket_keys`), the event bus, the replicas'
//!   announcements (`presence`).
//! - `tls`: rustls, the certificate resolver, ACME (`acme`: orders under a lease, renewal in the
//!   CA's ARI window), the certificate store over `cluster::storage` or disk (`store`), sealed
//!   private keys (`secret`), the TLS-ALPN-01 answer (`challenge`), session tickets any
//!   replica opens (`tickets`: rotated keys shared through `cluster::ticket_keys`).
//! - `auth`: access control: the token table (hashes, names, permissions).
//! - `npm`: npm knowledge, pure: package names, request paths, packument rewriting and
//!   abbreviation, integrity, what a tarball runs at install (`tarball`, read on the stream).
//! - `lockfile`: `npg lockfile check`: lockfiles (npm, pnpm, yarn 1, yarn berry) judged against
//!   the policy through a running npg or offline, and their URLs pointed at npg.
//! - `warm`: `npg warm`: npg's caches filled with what lockfiles name, through the guard
//!   (`client`: asking npg as a client would, tarballs checked as they stream), of a running
//!   npg or of one started in process from the environment's settings (`local`: `--direct`).
//! - `bundle`: `npg export` and `npg import`: a signed `.tar.zst` of what lockfiles name, for
//!   an air-gapped npg (`manifest`, `signing`), checked whole before anything is stored.
//! - `probe`: `npg health`, the probe for container health checks.
//! - `status`: what operators see, one `Report` (built by `http::status`): drawn as HTML
//!   (`page`), printed by `npg status` (`terminal`); the replicas' announcements and the last
//!   hour of traffic kept in process (`history`).
//! - `metrics`: Prometheus counters shared by every part (and their running totals for the
//!   status page's history), and the gauges the alerting rules of
//!   `deploy/prometheus` watch (certificate expiry, last ACME order, malware feeds' age).
//! - `clock`: wall-clock time as npg stores it (unix ms); `files`: files written atomically
//!   (owner-only where they hold secrets); `retry`: backoff with jitter for every job that
//!   retries, and the randomness for it.
//!
//! Visibility: `pub(crate)` by default; `pub` only what the integration tests (`tests/it`) and
//! the fuzz targets (`fuzz/`) reach.

pub(crate) mod app;
pub(crate) mod auth;
pub(crate) mod budget;
pub(crate) mod bundle;
pub mod cli;
pub(crate) mod clock;
pub mod cluster;
pub(crate) mod config;
pub(crate) mod files;
pub mod guard;
pub(crate) mod http;
pub(crate) mod jobs;
pub(crate) mod lockfile;
pub mod metrics;
pub mod npm;
pub(crate) mod preflight;
pub(crate) mod probe;
pub mod proxy;
pub(crate) mod retry;
pub(crate) mod status;
pub(crate) mod tls;
pub mod upstream;
pub(crate) mod warm;
