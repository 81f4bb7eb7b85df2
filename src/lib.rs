//! npg: a security gateway and caching proxy for the npm registry.
//!
//! Layout:
//! - `config`: settings from flags and env, validated once at start.
//! - `clock`: wall-clock time as npg stores it (unix ms).
//! - `preflight`: the files the settings name (blocklist, tokens, TLS...) loaded and checked
//!   before serving; `npg check-config` runs the same.
//! - `npm`: npm knowledge, pure: package names, packument rewriting/abbreviation, integrity.
//! - `guard`: the blocklist, the malware feed and the release-age gate, as one policy, and
//!   how a refusal is told (which rule, in words; hidden versions as npm's `policyRestrictions`).
//! - `auth`: access control: the token table (hashes, names, permissions) and its reload.
//! - `watch`: reloads a config file on SIGHUP and when it changes.
//! - `upstream`: the HTTP client to the registry: deadlines, allowed origins, npg's own
//!   credentials (by scope), URL redaction for logs, and the breaker that takes a sick
//!   upstream as down for the whole cluster.
//! - `singleflight`: one upstream fetch for many concurrent misses.
//! - `budget`: the memory budget that documents being read and rendered hold.
//! - `cache`: L1 (in-process rendered responses), L2 (Redis, raw documents), disk (tarballs),
//!   and remembered misses (in process and in Redis).
//! - `cluster`: the shared Redis connection and its health.
//! - `rendered`: a packument filtered by the policy and rendered in both forms.
//! - `changes`: follows the registry's changes feed and invalidates changed packages.
//! - `packuments`, `tarballs`: the services that answer metadata and tarball requests
//!   (`packuments`: stale-while-revalidate, stale-if-error, misses remembered; `tarballs`:
//!   one download per file in flight, joined by concurrent misses, verified on
//!   the stream whether or not the disk takes it).
//! - `metrics`: Prometheus counters shared by every part.
//! - `tls`: rustls, the certificate resolver, and the ACME manager sharing through Redis.
//! - `http`: routing, access checks, error bodies and status lines (a refusal's reason phrase),
//!   client caching (`CLIENT_MAX_AGE`), health, metrics, the listener and graceful shutdown.
//! - `lockfile`: `npg lockfile check`, lockfiles (npm, pnpm, yarn 1, yarn berry) judged
//!   against the policy through a running npg or offline, and their URLs pointed at npg.
//! - `probe`: `npg health`, the probe for container health checks.
//! - `jobs`: the one owner of the background jobs: stops them on SIGTERM, releasing their
//!   Redis leases.
//! - `app`: the shared state that ties them together.

pub mod app;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod changes;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod guard;
pub mod http;
pub mod jobs;
pub mod lockfile;
pub mod metrics;
pub mod npm;
pub mod packuments;
pub mod preflight;
pub mod probe;
pub mod rendered;
pub mod singleflight;
pub mod tarballs;
pub mod tls;
pub mod upstream;
pub mod watch;
