//! The three caches: rendered packuments in memory (L1), raw upstream documents in the shared
//! Redis (L2), tarballs on disk.

pub mod disk;
pub mod memory;
pub mod redis;
