//! What the replicas of a cluster share, and the one place that speaks Redis: the connection
//! and its health (`redis`, with `clustered()`: is there a cluster at all; the master a fixed
//! address or the one the sentinels name, `sentinel`, followed across failovers), leases that let
//! one replica do a job and `hold_while` to keep one through long work (`lock`, certmagic's
//! `Locker`), shared documents (`documents`: a gzip body with its ETag and stamps, for L2 and
//! the malware feed), single shared values (`values`: misses, the changes position),
//! certificate storage (`storage`, certmagic's `Storage`, with the disk one in `tls::store`),
//! the TLS session ticket keys (`ticket_keys`, one per rotation period, made once by `SET NX`)
//! and events between replicas (`bus`). Nothing here runs by itself: the Redis monitor and
//! the event subscription are jobs of `jobs::Jobs`.

pub mod bus;
pub mod documents;
pub mod lock;
pub(crate) mod presence;
pub mod redis;
pub mod sentinel;
pub(crate) mod storage;
pub(crate) mod ticket_keys;
pub(crate) mod values;
