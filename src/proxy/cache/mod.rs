//! The caches: rendered packuments in memory (L1), raw upstream documents in the shared
//! Redis (L2), tarballs on disk with the small, hot ones also in memory.

pub mod disk;
pub mod hot;
pub mod memory;
pub mod misses;
pub mod redis;
