//! Remembered misses: packages upstream does not have, and packuments just asked again for
//! a version or file they lack, for `METADATA_MISS_TTL`, in this replica and in Redis for the
//! cluster. So made-up names and versions cost one upstream fetch per interval, not one per
//! request. A change to the package (changes feed, a publish through npg) forgets it.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::redis::SharedRedis;
use crate::cluster::values::Write;
use crate::npm::name::PackageName;

/// What is remembered of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Upstream said 404 for the package.
    Package,
    /// Upstream was just asked for the package because a version or file was missing.
    Refreshed,
}

impl Miss {
    fn as_str(self) -> &'static str {
        match self {
            Miss::Package => "package",
            Miss::Refreshed => "refreshed",
        }
    }
}

pub(crate) struct Misses {
    local: moka::future::Cache<PackageName, Miss>,
    redis: Arc<SharedRedis>,
    ttl: Duration,
}

impl Misses {
    pub(crate) fn new(redis: Arc<SharedRedis>, ttl: Duration) -> Misses {
        let local = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(ttl.max(Duration::from_millis(1)))
            .build();
        Misses { local, redis, ttl }
    }

    fn key(name: &PackageName) -> String {
        format!("miss:{name}")
    }

    /// What this replica or another one remembers of `name`.
    pub(crate) async fn get(&self, name: &PackageName) -> Option<Miss> {
        if self.ttl.is_zero() {
            return None;
        }
        if let Some(miss) = self.local.get(name).await {
            return Some(miss);
        }
        let value = self.redis.get(&Self::key(name), "miss read").await.ok()??;
        let miss = [Miss::Package, Miss::Refreshed]
            .into_iter()
            .find(|m| m.as_str() == value)?;
        self.local.insert(name.clone(), miss).await;
        Some(miss)
    }

    pub(crate) async fn insert(&self, name: &PackageName, miss: Miss) {
        if self.ttl.is_zero() {
            return;
        }
        self.local.insert(name.clone(), miss).await;
        let how = Write {
            ttl: Some(self.ttl),
            only_new: false,
        };
        // A failure is reported to the connection; the miss is remembered here anyway.
        let _ = self.redis.set(&Self::key(name), miss.as_str(), how, "miss write").await;
    }

    pub(crate) async fn remove(&self, name: &PackageName, shared: bool) {
        self.local.invalidate(name).await;
        if !shared {
            return;
        }
        let _ = self.redis.delete(&Self::key(name), "miss delete").await;
    }
}
