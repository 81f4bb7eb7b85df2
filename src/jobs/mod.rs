//! The background jobs and their one owner. Every job is spawned here; on SIGTERM `main`
//! stops them all (a stopped job's future is dropped at its next await) and waits for them,
//! bounded, after the listeners drained. A job that holds a Redis lease is spawned with it
//! (`spawn_leased`): the lease is released when the job stops, so another replica takes the
//! work over at once instead of after the lease's TTL (a rolling restart must not hold up the
//! cluster's certificate renewal or changes feed).

pub(crate) mod blocklist;
pub(crate) mod changes;
pub(crate) mod feed;
pub(crate) mod keys;
pub(crate) mod osv;
pub(crate) mod tokens;
pub(crate) mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::lock::RedisLock;

#[derive(Clone, Default)]
pub(crate) struct Jobs {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Jobs {
    /// Runs `job` until it ends or the jobs are stopped.
    pub(crate) fn spawn(&self, name: &'static str, job: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = job => tracing::debug!(job = name, "job ended"),
                () = stop.cancelled() => tracing::debug!(job = name, "job stopped"),
            }
        });
    }

    /// Like `spawn`, releasing `lease` once the job is over (if it is still this job's).
    pub(crate) fn spawn_leased(
        &self,
        name: &'static str,
        lease: Arc<RedisLock>,
        job: impl Future<Output = ()> + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = job => {}
                () = stop.cancelled() => {}
            }
            // Released even when this replica believes it lost it: the release checks the
            // token, and Redis may still hold it for us.
            let held = lease.held();
            lease.release().await;
            if held {
                tracing::info!(job = name, "job over; lease released");
            }
        });
    }

    /// Stops every job (they stop at their next await; leases are released meanwhile).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Waits for the stopped jobs, at most `bound`; false if some did not finish in time.
    pub(crate) async fn stopped(&self, bound: Duration) -> bool {
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_ends_every_job() {
        let jobs = Jobs::default();
        jobs.spawn("forever", std::future::pending());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        jobs.spawn("holds a value", async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        jobs.stop();
        assert!(jobs.stopped(Duration::from_secs(1)).await);
        assert!(rx.await.is_err(), "the job's future, and what it held, were dropped");
    }
}
