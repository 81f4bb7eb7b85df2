//! What the replicas of a cluster share: one Redis connection per replica and its health
//! (`redis`), leases that let one replica do a job (`lock`), and events between replicas (`bus`).

pub mod bus;
pub mod documents;
pub mod lock;
pub mod redis;
pub mod storage;
pub mod values;
