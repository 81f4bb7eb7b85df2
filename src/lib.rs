//! npg: a security gateway and caching proxy for the npm registry.
//!
//! Layout (no module imports one that imports it back; `app` and `http` sit on top):
//! - `config`: settings from flags and env, validated once at start.
//! - `preflight`: the files the settings name (blocklist, tokens, TLS...) loaded and checked
//!   before serving; `npg check-config` runs the same.
//! - `clock`: wall-clock time as npg stores it (unix ms); `files`: files written atomically;
//!   `retry`: backoff with jitter for every job that retries, and the randomness for it.
//! - `npm`: npm knowledge, pure: package names, packument rewriting/abbreviation, integrity.
//! - `guard`: the rules, pure: the blocklist, the malware list and the release-age gate as one
//!   policy, and how a refusal is told (which rule, in words; hidden versions as npm's
//!   `policyRestrictions`). Keeping it current is `jobs`' work.
//! - `auth`: access control: the token table (hashes, names, permissions).
//! - `upstream`: the HTTP client to the registry (and the one builder of every HTTP client
//!   npg makes): deadlines, allowed origins, npg's own credentials (by scope), URL redaction
//!   for logs, and the breaker that takes a sick upstream as down for the whole cluster.
//! - `budget`: the memory budget that documents being read and rendered hold.
//! - `cluster`: the one place that speaks Redis: the connection and its health, leases
//!   (`Locker`, `hold_while`), shared documents and values, certificate `Storage`, the event bus.
//! - `proxy`: the services that answer metadata and tarball requests: `packuments`
//!   (stale-while-revalidate, stale-if-error, misses remembered) rendering through `rendered`
//!   (a packument filtered by the policy in both forms, and `DocMeta`, what is known of its
//!   upstream document); `tarballs` (one download per file in flight, joined by concurrent
//!   misses, verified on the stream whether or not the disk takes it); `singleflight` (one
//!   upstream fetch for many concurrent misses); `cache` (L1: rendered responses in process,
//!   L2: raw documents in Redis, tarballs on disk, remembered misses).
//! - `jobs`: the background work and its one owner (stopped on SIGTERM, Redis leases
//!   released): the changes follower (`changes`), the malware feed refresher and its kept
//!   copy (`feed`), the blocklist and token-file reloads (`blocklist`, `tokens`, on `watch`),
//!   and the listener that drops what other replicas report as changed.
//! - `metrics`: Prometheus counters shared by every part.
//! - `tls`: rustls, the certificate resolver, the ACME manager sharing through Redis, and the
//!   TLS-ALPN-01 answer.
//! - `http`: routing, access checks, error bodies and status lines (a refusal's reason phrase),
//!   client caching (`CLIENT_MAX_AGE`), health, metrics, the HTTP-01 answer, the listener and
//!   graceful shutdown.
//! - `lockfile`: `npg lockfile check`, lockfiles (npm, pnpm, yarn 1, yarn berry) judged
//!   against the policy through a running npg or offline, and their URLs pointed at npg.
//! - `probe`: `npg health`, the probe for container health checks.
//! - `app`: the handler state that ties the services together, and the start of the jobs.
//! - `cli`: the one subcommand dispatcher and `serve`'s life (listeners, jobs, the drain on
//!   SIGTERM); `main.rs` only picks the allocator and calls it.

pub(crate) mod app;
pub(crate) mod auth;
pub(crate) mod budget;
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
pub(crate) mod tls;
pub mod upstream;
