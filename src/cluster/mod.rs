//! What the replicas of a cluster share: one Redis connection per replica and its health.

pub mod redis;
