//! The caches: rendered packuments in memory (L1), raw upstream documents in the shared
//! Redis (L2), tarballs (`store`: on disk, or in an S3 bucket (`bucket`) behind a bounded
//! local disk cache (`local`)) with the small, hot ones also in memory (`hot`) and large ones
//! shared while they are sent (`large`), packuments imported from a bundle on disk (the last
//! resort).

pub(crate) mod bucket;
pub(crate) mod disk;
pub(crate) mod hot;
pub(crate) mod imported;
pub(crate) mod large;
pub(crate) mod local;
pub(crate) mod memory;
pub(crate) mod misses;
pub(crate) mod redis;
pub(crate) mod store;
