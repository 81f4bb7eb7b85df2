//! The proxy: what answers a metadata or tarball request. `packuments` (stale-while-revalidate,
//! stale-if-error, misses remembered) renders through `rendered` (the policy applied, both
//! forms, what is known of the upstream document); `tarballs` downloads each file once while
//! concurrent misses join, verified on the stream; `singleflight` gives many concurrent misses
//! one upstream fetch; `cache` holds what was fetched (L1 rendered responses in process, L2
//! raw documents in Redis, tarballs on disk, remembered misses).

pub(crate) mod cache;
pub(crate) mod packuments;
pub mod rendered;
pub(crate) mod singleflight;
pub(crate) mod tarballs;
