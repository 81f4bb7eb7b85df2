//! One upstream fetch per tarball file for the whole cluster, when replicas share a bucket and
//! Redis: a miss takes the lease `fill:<name>/<file>` and fills the bucket; the other replicas'
//! misses of that file wait for the object (polling the bucket, within FOLLOW_MAX), and lead
//! themselves when the lease goes without an object (the leader failed or died). Without
//! Redis, or with the bucket down, every replica fills on its own as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::lock::RedisLock;
use crate::cluster::redis::{RedisState, SharedRedis};
use crate::npm::integrity::Expected;
use crate::npm::name::PackageName;
use crate::proxy::cache::store::{Found, Store};

/// The lease's lifetime, extended while the leader's download runs.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a follower looks for the object.
const POLL: Duration = Duration::from_millis(150);
/// How long a follower waits at most before fetching the file itself.
const FOLLOW_MAX: Duration = Duration::from_secs(60);

pub(crate) enum Fill {
    /// Fetch it from upstream, holding the lease when there is one.
    Lead(Option<Arc<RedisLock>>),
    /// Another replica stored it meanwhile.
    Stored(Found),
}

/// Leads the fill of `file` for the cluster, or waits for the replica that does.
pub(crate) async fn lead_or_follow(
    redis: &Arc<SharedRedis>,
    store: &Store,
    name: &PackageName,
    file: &str,
    expected: &Expected,
) -> Fill {
    let shared = store.bucket().is_some_and(|b| b.is_up()) && redis.clustered();
    if !shared {
        return Fill::Lead(None);
    }
    let lease = Arc::new(RedisLock::new(redis.clone(), &format!("fill:{name}/{file}"), LEASE_TTL));
    let deadline = Instant::now() + FOLLOW_MAX;
    loop {
        if lease.try_acquire().await {
            // The leader may have stored it just before it let go.
            return match store.open(name, file, expected).await {
                Some(found) => {
                    lease.release().await;
                    Fill::Stored(found)
                }
                None => Fill::Lead(Some(lease)),
            };
        }
        let bucket_up = store.bucket().is_some_and(|b| b.is_up());
        if Instant::now() >= deadline || redis.state() == RedisState::Disconnected || !bucket_up {
            tracing::warn!(package = %name, file, "no object from the replica filling it; fetching it here");
            return Fill::Lead(None);
        }
        tokio::time::sleep(POLL).await;
        if let Some(found) = store.open(name, file, expected).await {
            return Fill::Stored(found);
        }
    }
}

/// Runs the leader's download while extending its lease (a failed extension does not stop
/// the download: clients are reading it), then lets the lease go.
pub(crate) async fn holding(lease: Option<Arc<RedisLock>>, work: impl Future<Output = ()>) {
    let Some(lease) = lease else { return work.await };
    let mut extend = tokio::time::interval(LEASE_TTL / 3);
    extend.reset();
    tokio::pin!(work);
    loop {
        tokio::select! {
            () = &mut work => break,
            _ = extend.tick() => {
                lease.extend().await;
            }
        }
    }
    lease.release().await;
}
