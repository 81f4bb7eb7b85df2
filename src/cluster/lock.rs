//! A lease in Redis that lets one replica of the cluster do a job (follow the changes feed,
//! refresh the malware feed, order a certificate).
//!
//! Taken with `SET key token NX PX ttl`; extended and released by Lua scripts that first check
//! the token, so a replica whose lease expired can never extend or delete its successor's. The
//! holder must extend well within the TTL (`hold_while` does, around long work); if it dies
//! the lease expires and another replica takes over. Without Redis there is no cluster: the
//! single node always holds the lock.
//!
//! What a lease guarantees across a failover (Sentinel). Replication is asynchronous: a lease
//! granted by the old master and not yet on a replica is unknown to the replica promoted in
//! its place, which may grant it again, and then two replicas act as holder. So a new lease is
//! acted on only once a replica has it (`WAIT 1`, when the master has replicas; else it is
//! given back and `try_acquire` says no): the promoted replica then has it too and refuses it
//! to others until it expires, and the holder, following the failover, extends it there;
//! `hold_while` keeps the work going while the extension gets no answer for up to half a TTL
//! (a failover takes seconds, the leases' TTLs are 15 s to 3 min).
//! This is not a proof: with several replicas the one promoted may not be the one that
//! acknowledged, and a master cut off with its holder keeps granting until the sentinels'
//! view reaches it (writes there are dropped when it rejoins as a replica).
//!
//! Fencing. The holder's writes that matter (the changes position, `set_if_held`; the ACME
//! certificate, `storage`) are scripts that check the lease token on the node they write to,
//! atomically: a holder whose lease ran out or was granted to another is refused. Replication
//! is in order, so no node ever has a successor's write without that successor's lease: the
//! token is the fencing token for data kept in the same Redis, and a separate counter would
//! add nothing. What a write cannot undo is an action outside Redis (an ACME order): that is
//! what the replicated lease above limits. After a fenced write npg also waits for a replica
//! (`WAIT 1`), so a failover right after it does not lose the certificate (and order again)
//! or move the position back; a write no replica acknowledged stays written and is counted
//! (`redis_unreplicated`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use redis::{ExistenceCheck, SetExpiry, SetOptions};

use crate::cluster::redis::{SharedRedis, expiry_ms};
use crate::retry::random_u64;

const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Fencing for the holder's writes: the write happens only while the token is still ours.
const SET_IF_HELD: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0";

/// How often `hold_while` asks again after an extension got no answer (Redis down, a failover).
const RETRY: Duration = Duration::from_millis(500);

/// What an extension attempt learnt.
enum Extension {
    Extended,
    /// The lease is someone else's, or gone.
    Lost,
    /// Redis did not answer: the lease may well still be ours.
    Unanswered,
}

pub struct RedisLock {
    redis: Arc<SharedRedis>,
    key: String,
    token: String,
    ttl: Duration,
    held: AtomicBool,
    /// When the last acquisition or extension that succeeded was sent: the lease is valid
    /// until a TTL after it on the master.
    confirmed: Mutex<Option<Instant>>,
}

impl RedisLock {
    /// The lock `<prefix>lock:<purpose>`, held under a token unique to this process and lock.
    pub fn new(redis: Arc<SharedRedis>, purpose: &str, ttl: Duration) -> RedisLock {
        let key = redis.key(&format!("lock:{purpose}"));
        let token = format!("{}:{:016x}", redis.instance(), random_u64());
        RedisLock {
            redis,
            key,
            token,
            ttl,
            held: AtomicBool::new(false),
            confirmed: Mutex::new(None),
        }
    }

    /// The Redis key of the lock, for callers writing their own fenced scripts.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The value this holder stores under the key (`<instance>:<random>`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// True if we hold the lock now: newly taken, or already ours and extended. Always true
    /// without Redis (a single node runs its jobs itself); false while Redis is down.
    pub async fn try_acquire(&self) -> bool {
        let Some(mut conn) = self.conn() else {
            return self.set_held(!self.redis.clustered());
        };
        let opts = SetOptions::default()
            .conditional_set(ExistenceCheck::NX)
            .with_expiration(SetExpiry::PX(expiry_ms(self.ttl)));
        let sent = Instant::now();
        match conn
            .set_options::<_, _, Option<String>>(&self.key, &self.token, opts)
            .await
        {
            // Acted on only once a replica has it: a lease only on the master would be
            // granted again by the replica promoted in a failover.
            Ok(Some(_)) if self.redis.replicated(&mut conn, "lease").await => {
                self.confirm(sent);
                self.set_held(true)
            }
            Ok(Some(_)) => {
                self.release().await;
                false
            }
            // Taken: by us (then extend it) or by someone else (then extend fails).
            Ok(None) => self.extend().await,
            Err(e) => {
                self.redis.report_error("lock acquire", &e);
                self.set_held(false)
            }
        }
    }

    /// Pushes the expiry out by the TTL; false if the lock is no longer ours (or Redis did
    /// not answer).
    pub async fn extend(&self) -> bool {
        matches!(self.extension().await, Extension::Extended)
    }

    async fn extension(&self) -> Extension {
        let Some(mut conn) = self.conn() else {
            if !self.redis.clustered() {
                self.set_held(true);
                return Extension::Extended;
            }
            self.set_held(false);
            return Extension::Unanswered;
        };
        let sent = Instant::now();
        let result = Script::new(EXTEND)
            .key(&self.key)
            .arg(&self.token)
            .arg(expiry_ms(self.ttl))
            .invoke_async::<i64>(&mut conn)
            .await;
        match result {
            Ok(1) => {
                self.confirm(sent);
                self.set_held(true);
                Extension::Extended
            }
            Ok(_) => {
                self.set_held(false);
                Extension::Lost
            }
            Err(e) => {
                self.redis.report_error("lock extend", &e);
                self.set_held(false);
                Extension::Unanswered
            }
        }
    }

    /// Gives the lock up if it is still ours (others need not wait for the TTL).
    pub async fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
        let Some(mut conn) = self.conn() else { return };
        let script = Script::new(RELEASE);
        if let Err(e) = script
            .key(&self.key)
            .arg(&self.token)
            .invoke_async::<i64>(&mut conn)
            .await
        {
            self.redis.report_error("lock release", &e);
        }
    }

    /// `SET <prefix><key_suffix> value` only while the lock is ours, atomically: a holder whose
    /// lease ran out cannot overwrite its successor's progress. True when written. Without
    /// Redis there is nothing to write to: false.
    pub async fn set_if_held(&self, key_suffix: &str, value: &str) -> bool {
        let Some(mut conn) = self.conn() else { return false };
        let script = Script::new(SET_IF_HELD);
        let result = script
            .key(&self.key)
            .key(self.redis.key(key_suffix))
            .arg(&self.token)
            .arg(value)
            .invoke_async::<i64>(&mut conn)
            .await;
        match result {
            Ok(1) => {
                // Written either way; a write no replica has may be lost by a failover.
                self.redis.replicated(&mut conn, "fenced write").await;
                true
            }
            Ok(_) => {
                self.held.store(false, Ordering::Relaxed);
                false
            }
            Err(e) => {
                self.redis.report_error("lock fenced write", &e);
                false
            }
        }
    }

    /// Runs `work` while extending the lease every third of its TTL. `None` when the lease
    /// is lost: `work` is dropped at its next await, before it can act as the holder any
    /// longer. An extension Redis does not answer (down, or a failover under way) is asked
    /// again every half second for up to half a TTL after the last confirmed one: the lease
    /// is valid until a TTL after it on the master, and two thirds of a TTL on a replica that
    /// missed that extension but has the one before, so a failover does not cut the work off.
    pub async fn hold_while<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let every = (self.ttl / 3).max(Duration::from_millis(1));
        let mut next = Instant::now() + every;
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = tokio::time::sleep_until(next.into()) => match self.extension().await {
                    Extension::Extended => next = Instant::now() + every,
                    Extension::Lost => return None,
                    Extension::Unanswered => {
                        let since = self.confirmed().unwrap_or_else(Instant::now);
                        if Instant::now() + RETRY >= since + self.ttl / 2 {
                            tracing::warn!(lease = %self.key, "redis did not answer in time to extend the lease: giving it up");
                            return None;
                        }
                        next = Instant::now() + RETRY;
                    }
                },
            }
        }
    }

    fn confirm(&self, at: Instant) {
        *self.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    fn confirmed(&self) -> Option<Instant> {
        *self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state seen by the last acquire, extend or release.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    fn conn(&self) -> Option<ConnectionManager> {
        self.redis.conn()
    }

    fn set_held(&self, held: bool) -> bool {
        self.held.store(held, Ordering::Relaxed);
        held
    }
}
