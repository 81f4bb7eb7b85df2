//! The replica's connection to the shared Redis. Redis is optional and may fail: callers
//! skip it while it is known to be down (so a dead Redis costs requests nothing), and a
//! monitor pings it every second to notice when it is back. The connection reconnects by
//! itself and is named `npg-<instance>` so `CLIENT LIST` shows the cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisState {
    Disabled,
    Connected,
    Disconnected,
}

impl RedisState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RedisState::Disabled => "disabled",
            RedisState::Connected => "connected",
            RedisState::Disconnected => "disconnected",
        }
    }
}

/// A Redis expiry (`PX`, `PEXPIRE`): whole milliseconds, at least one (zero is an error for
/// `SET PX` and deletes at once for `PEXPIRE`).
pub(crate) fn expiry_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub struct SharedRedis {
    conn: Option<ConnectionManager>,
    /// Kept for the connections a manager cannot multiplex (pub/sub, in `cluster::bus`).
    client: Option<redis::Client>,
    prefix: String,
    instance: String,
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl SharedRedis {
    pub fn disabled(metrics: Arc<Metrics>) -> Arc<SharedRedis> {
        Arc::new(SharedRedis {
            conn: None,
            client: None,
            prefix: String::new(),
            instance: String::new(),
            up: AtomicBool::new(false),
            metrics,
        })
    }

    /// Prepares the connection (lazily: npg starts without Redis). Nothing runs until the
    /// owner of the background jobs runs `monitor`: until then Redis counts as down.
    pub fn connect(url: &str, prefix: &str, instance: &str, metrics: Arc<Metrics>) -> anyhow::Result<Arc<SharedRedis>> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(Arc::new(SharedRedis {
            conn: Some(conn),
            client: Some(client),
            prefix: prefix.to_string(),
            instance: instance.to_string(),
            up: AtomicBool::new(false),
            metrics,
        }))
    }

    /// The health monitor, a job for the caller to run: pings every second, names the
    /// connection, and tells when Redis goes away and comes back. Ends with the connection
    /// (or at once without Redis).
    pub fn monitor(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        monitor(Arc::downgrade(self), format!("npg-{}", self.instance))
    }

    /// Whether there is a cluster at all (`REDIS_URL` set), whether or not Redis answers now.
    /// Without one a single node does every job itself and keeps its state locally.
    pub(crate) fn clustered(&self) -> bool {
        self.conn.is_some()
    }

    pub fn state(&self) -> RedisState {
        match (&self.conn, self.up.load(Ordering::Relaxed)) {
            (None, _) => RedisState::Disabled,
            (Some(_), true) => RedisState::Connected,
            (Some(_), false) => RedisState::Disconnected,
        }
    }

    /// The key `<prefix><suffix>`.
    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The replica's name (empty when Redis is disabled).
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The client behind the shared connection, for dedicated connections (pub/sub); `None`
    /// when Redis is disabled.
    pub(crate) fn client(&self) -> Option<&redis::Client> {
        self.client.as_ref()
    }

    /// A connection handle when Redis is believed up; `None` means "do without Redis".
    pub(crate) fn conn(&self) -> Option<ConnectionManager> {
        self.conn.clone().filter(|_| self.up.load(Ordering::Relaxed))
    }

    /// Callers report failed commands here, so the next requests skip Redis until the
    /// monitor sees it answer again.
    pub(crate) fn report_error(&self, what: &str, err: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %err, "redis failed during {what}; serving without it until it answers again");
            self.metrics.set_redis_up(false);
        }
    }
}

async fn monitor(shared: std::sync::Weak<SharedRedis>, client_name: String) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(redis) = shared.upgrade() else { return };
        let Some(mut conn) = redis.conn.clone() else { return };
        // Naming on every tick is cheap and survives the silent reconnects of the manager.
        let ping = async {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&client_name)
                .exec_async(&mut conn)
                .await?;
            redis::cmd("PING").exec_async(&mut conn).await
        };
        let ok = matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(())));
        let was_up = redis.up.swap(ok, Ordering::Relaxed);
        if ok != was_up {
            redis.metrics.set_redis_up(ok);
            if ok {
                tracing::info!("redis connected");
            } else {
                tracing::warn!("redis is not answering; serving from memory, disk and upstream");
            }
        }
    }
}
