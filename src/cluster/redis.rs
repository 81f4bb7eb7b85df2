//! The replica's connection to the shared Redis. Redis is optional and may fail: callers
//! skip it while it is known to be down (so a dead Redis costs requests nothing), and a
//! monitor checks it every second to notice when it is back. The connection reconnects by
//! itself and is named `npg-<instance>` so `CLIENT LIST` shows the cluster.
//!
//! With Sentinel the node behind the connection can change. At every check the monitor asks
//! the sentinels for the master (`cluster::sentinel`): a node that stopped answering, answers
//! `ROLE` as a replica (an old master that came back, or demoted by a manual failover) or is
//! no longer the one the sentinels name is left, and a connection to the new master swapped
//! in. A command refused with `READONLY` (or failing otherwise) marks Redis down at once, so
//! nothing more is written to the old node until that check. Callers take the connection
//! per command (`conn()`), so they follow; the bus resubscribes on `node_changes()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::cluster::sentinel::{self, Master, Sentinels, Target};
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

/// How long a lookup or a check may take before the node counts as not answering.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a lease or a fenced write waits for a replica to acknowledge it.
const REPLICATION_WAIT: Duration = Duration::from_millis(500);

/// The node in use and its connection.
struct Node {
    conn: ConnectionManager,
    /// Kept for the connections a manager cannot multiplex (pub/sub, in `cluster::bus`).
    client: redis::Client,
    addr: String,
}

impl Node {
    fn open(client: redis::Client, addr: String) -> redis::RedisResult<Node> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(Node { conn, client, addr })
    }
}

/// How the master is found: `None` in `SharedRedis::finder` means no Redis at all.
enum Finder {
    Fixed,
    Sentinels(Box<Sentinels>),
}

pub struct SharedRedis {
    node: ArcSwapOption<Node>,
    finder: Option<Finder>,
    prefix: String,
    instance: String,
    up: AtomicBool,
    /// Replicas the master reported at the last check (`ROLE`): whether `WAIT` means anything.
    replicas: AtomicUsize,
    /// Bumped when another node is swapped in.
    generation: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl SharedRedis {
    fn build(
        node: Option<Node>,
        finder: Option<Finder>,
        prefix: &str,
        instance: &str,
        metrics: Arc<Metrics>,
    ) -> Arc<SharedRedis> {
        Arc::new(SharedRedis {
            node: ArcSwapOption::from(node.map(Arc::new)),
            finder,
            prefix: prefix.to_string(),
            instance: instance.to_string(),
            up: AtomicBool::new(false),
            replicas: AtomicUsize::new(0),
            generation: watch::Sender::new(0),
            metrics,
        })
    }

    pub fn disabled(metrics: Arc<Metrics>) -> Arc<SharedRedis> {
        SharedRedis::build(None, None, "", "", metrics)
    }

    /// Prepares the connection (lazily: npg starts without Redis). Nothing runs until the
    /// owner of the background jobs runs `monitor`: until then Redis counts as down, and with
    /// Sentinel no master is known yet.
    pub fn connect(
        target: &Target,
        prefix: &str,
        instance: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<SharedRedis>> {
        Ok(match target {
            Target::Url(url) => {
                let client = redis::Client::open(url.as_str())?;
                let addr = sentinel::address(&client);
                SharedRedis::build(
                    Some(Node::open(client, addr)?),
                    Some(Finder::Fixed),
                    prefix,
                    instance,
                    metrics,
                )
            }
            Target::Sentinels(s) => SharedRedis::build(
                None,
                Some(Finder::Sentinels(Box::new(Sentinels::new(s)?))),
                prefix,
                instance,
                metrics,
            ),
        })
    }

    /// The health monitor, a job for the caller to run: checks the node every second, names
    /// the connection, follows the master with Sentinel, and tells when Redis goes away and
    /// comes back. Ends with the connection (or at once without Redis).
    pub fn monitor(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        monitor(Arc::downgrade(self), format!("npg-{}", self.instance))
    }

    /// Whether there is a cluster at all (Redis configured), whether or not Redis answers now.
    /// Without one a single node does every job itself and keeps its state locally.
    pub(crate) fn clustered(&self) -> bool {
        self.finder.is_some()
    }

    pub fn state(&self) -> RedisState {
        match (&self.finder, self.up.load(Ordering::Relaxed)) {
            (None, _) => RedisState::Disabled,
            (Some(_), true) => RedisState::Connected,
            (Some(_), false) => RedisState::Disconnected,
        }
    }

    /// `host:port` of the node in use (with Sentinel: the master last found).
    pub fn master(&self) -> Option<String> {
        self.node.load().as_ref().map(|n| n.addr.clone())
    }

    /// Replicas the master reported at the last check.
    pub(crate) fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Changes whenever another node is swapped in (a failover followed).
    pub(crate) fn node_changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The key `<prefix><suffix>`.
    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The replica's name (empty when Redis is disabled).
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The client of the node in use, for dedicated connections (pub/sub); `None` when Redis
    /// is disabled or no master is known yet.
    pub(crate) fn client(&self) -> Option<redis::Client> {
        self.node.load().as_ref().map(|n| n.client.clone())
    }

    /// A connection handle when Redis is believed up; `None` means "do without Redis".
    pub(crate) fn conn(&self) -> Option<ConnectionManager> {
        if !self.up.load(Ordering::Relaxed) {
            return None;
        }
        self.node.load().as_ref().map(|n| n.conn.clone())
    }

    /// Callers report failed commands here, so the next requests skip Redis until the
    /// monitor sees it answer again.
    pub(crate) fn report_error(&self, what: &str, err: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %err, "redis failed during {what}; serving without it until it answers again");
            self.metrics.set_redis_up(false);
        }
    }

    /// After a lease or a fenced write: true once a replica has it (`WAIT 1`), or at once when
    /// the master reported no replica. A failover promotes a replica, so only what one has
    /// survives it; false (logged, counted) when none acknowledged in time or WAIT failed.
    /// `conn` must be the connection that wrote: WAIT covers that connection's writes.
    pub(crate) async fn replicated(&self, conn: &mut ConnectionManager, what: &str) -> bool {
        if self.replicas() == 0 {
            return true;
        }
        let acked = redis::cmd("WAIT")
            .arg(1)
            .arg(expiry_ms(REPLICATION_WAIT))
            .query_async::<i64>(conn)
            .await;
        match acked {
            Ok(n) if n >= 1 => true,
            Ok(_) => {
                tracing::warn!("redis: no replica acknowledged the {what} within {REPLICATION_WAIT:?}");
                self.metrics.redis_unreplicated();
                false
            }
            Err(e) => {
                self.report_error(what, &e);
                self.metrics.redis_unreplicated();
                false
            }
        }
    }

    /// One check: true when the node in use answers as it should (with Sentinel: as the
    /// master the sentinels name), after swapping in another node if needed.
    async fn check(&self, client_name: &str) -> bool {
        let Some(finder) = &self.finder else { return false };
        let current = self.node.load_full();
        let answer = match &current {
            Some(node) => probe(node, client_name).await,
            None => None,
        };
        match finder {
            Finder::Fixed => {
                let replicas = match answer {
                    Some(Answer::Master(n)) => n,
                    _ => 0,
                };
                self.replicas.store(replicas, Ordering::Relaxed);
                answer.is_some()
            }
            Finder::Sentinels(sentinels) => {
                let answers = matches!(answer, Some(Answer::Master(_)));
                if let Some(Answer::Master(n)) = answer {
                    self.replicas.store(n, Ordering::Relaxed);
                }
                self.follow(sentinels, current.as_deref(), answers, client_name).await
            }
        }
    }

    /// Asks the sentinels for the master and swaps it in when it is not the node in use.
    /// `answers`: the node in use answered as a master at this check. Sentinels that cannot
    /// be asked leave such a node in use (availability first: sentinels down or restarting
    /// are no reason to stop sharing state).
    async fn follow(&self, sentinels: &Sentinels, current: Option<&Node>, answers: bool, client_name: &str) -> bool {
        let found = match tokio::time::timeout(CHECK_TIMEOUT, sentinels.master()).await {
            Ok(Ok(master)) => master,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no redis master from the sentinels");
                return answers;
            }
            Err(_) => {
                tracing::debug!("the sentinels did not name a master in time");
                return answers;
            }
        };
        if let Some(node) = current.filter(|n| n.addr == found.addr) {
            // The same master: up if it answered as one, now or on a second try.
            return answers || self.is_master(node, client_name).await;
        }
        self.swap_to(found, current, client_name).await
    }

    /// Whether `node` answers as a master now (recording its replicas).
    async fn is_master(&self, node: &Node, client_name: &str) -> bool {
        let Some(Answer::Master(n)) = probe(node, client_name).await else {
            return false;
        };
        self.replicas.store(n, Ordering::Relaxed);
        true
    }

    async fn swap_to(&self, master: Master, old: Option<&Node>, client_name: &str) -> bool {
        let node = match Node::open(master.client, master.addr) {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a connection to the redis master");
                return false;
            }
        };
        // The lookup checked its role; check again on the connection we will use.
        if !self.is_master(&node, client_name).await {
            return false;
        }
        match old {
            Some(old) => {
                tracing::warn!(from = %old.addr, to = %node.addr, "redis master changed: following the failover");
                self.metrics.redis_failover();
            }
            None => tracing::info!(master = %node.addr, "redis master found through the sentinels"),
        }
        self.node.store(Some(Arc::new(node)));
        self.generation.send_modify(|g| *g += 1);
        true
    }
}

/// What a node said at a check.
enum Answer {
    /// A master with this many replicas.
    Master(usize),
    /// A replica (writes would fail with `READONLY`).
    Replica,
    /// It answers `PING` but refuses `ROLE` (an ACL may): fine for a fixed node.
    Unknown,
}

/// Names the connection (cheap, and survives the manager's silent reconnects), pings and asks
/// the node's role; `None` when it does not answer in time.
async fn probe(node: &Node, client_name: &str) -> Option<Answer> {
    let mut conn = node.conn.clone();
    let ask = async {
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(client_name)
            .exec_async(&mut conn)
            .await?;
        redis::cmd("PING").exec_async(&mut conn).await?;
        Ok::<_, redis::RedisError>(match redis::cmd("ROLE").query_async::<redis::Role>(&mut conn).await {
            Ok(redis::Role::Primary { replicas, .. }) => Answer::Master(replicas.len()),
            Ok(_) => Answer::Replica,
            Err(e) if e.kind() == redis::ErrorKind::Io => return Err(e),
            Err(_) => Answer::Unknown,
        })
    };
    match tokio::time::timeout(CHECK_TIMEOUT, ask).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            tracing::debug!(node = %node.addr, error = %e, "redis check failed");
            None
        }
        Err(_) => None,
    }
}

async fn monitor(shared: std::sync::Weak<SharedRedis>, client_name: String) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(redis) = shared.upgrade() else { return };
        if !redis.clustered() {
            return;
        }
        let ok = redis.check(&client_name).await;
        let was_up = redis.up.swap(ok, Ordering::Relaxed);
        if ok != was_up {
            redis.metrics.set_redis_up(ok);
            if ok {
                tracing::info!(master = redis.master().as_deref().unwrap_or("?"), "redis connected");
            } else {
                tracing::warn!("redis is not answering; serving from memory, disk and upstream");
            }
        }
    }
}
