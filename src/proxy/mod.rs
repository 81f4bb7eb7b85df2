//! The proxy: what answers a metadata or tarball request. `packuments` (stale-while-revalidate,
//! stale-if-error, misses remembered) renders through `rendered` (the policy applied, both
//! forms, what is known of the upstream document); `tarballs` downloads each file once while
//! concurrent misses join, verified on the stream; `singleflight` gives many concurrent misses
//! one upstream fetch; `budget` bounds the memory documents hold while read and rendered.

pub mod budget;
pub mod packuments;
pub mod rendered;
pub mod singleflight;
pub mod tarballs;
