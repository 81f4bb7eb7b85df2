//! Remembered misses: packages upstream does not have, and packuments just asked again for
//! a version or file they lack, for `METADATA_MISS_TTL`, in this replica and in Redis for the
//! cluster. So made-up names and versions cost one upstream fetch per interval, not one per
//! request. A change to the package (changes feed, a publish through npg) forgets it.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;

use crate::cluster::redis::SharedRedis;
use crate::npm::name::PackageName;

/// What is remembered of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
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

pub struct Misses {
    local: moka::future::Cache<PackageName, Miss>,
    redis: Arc<SharedRedis>,
    ttl: Duration,
}

impl Misses {
    pub fn new(redis: Arc<SharedRedis>, ttl: Duration) -> Misses {
        let local = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(ttl.max(Duration::from_millis(1)))
            .build();
        Misses { local, redis, ttl }
    }

    fn key(&self, name: &PackageName) -> String {
        self.redis.key(&format!("miss:{name}"))
    }

    /// What this replica or another one remembers of `name`.
    pub async fn get(&self, name: &PackageName) -> Option<Miss> {
        if self.ttl.is_zero() {
            return None;
        }
        if let Some(miss) = self.local.get(name).await {
            return Some(miss);
        }
        let mut conn = self.redis.conn()?;
        let value: redis::RedisResult<Option<String>> = conn.get(self.key(name)).await;
        let miss = match value {
            Ok(Some(v)) if v == Miss::Package.as_str() => Miss::Package,
            Ok(Some(v)) if v == Miss::Refreshed.as_str() => Miss::Refreshed,
            Ok(_) => return None,
            Err(e) => {
                self.redis.report_error("miss read", &e);
                return None;
            }
        };
        self.local.insert(name.clone(), miss).await;
        Some(miss)
    }

    pub async fn insert(&self, name: &PackageName, miss: Miss) {
        if self.ttl.is_zero() {
            return;
        }
        self.local.insert(name.clone(), miss).await;
        let Some(mut conn) = self.redis.conn() else { return };
        let ttl_ms = self.ttl.as_millis() as u64;
        if let Err(e) = conn.pset_ex::<_, _, ()>(self.key(name), miss.as_str(), ttl_ms).await {
            self.redis.report_error("miss write", &e);
        }
    }

    pub async fn remove(&self, name: &PackageName, shared: bool) {
        self.local.invalidate(name).await;
        if !shared {
            return;
        }
        let Some(mut conn) = self.redis.conn() else { return };
        if let Err(e) = conn.del::<_, ()>(self.key(name)).await {
            self.redis.report_error("miss delete", &e);
        }
    }
}
