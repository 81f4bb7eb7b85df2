//! Where ACME keeps what it issues (certmagic's `Storage`): certificates, accounts, pending
//! challenges and an order counter, as records whose secrets the caller has sealed already.
//! Two implementations, chosen once: `RedisStorage` here, shared by every replica (keys
//! `acme:cert:<domain>` (hash: chain, key, not_after, serial, renew_at),
//! `acme:account:<id>`, `acme:<kind>:<id>` with a TTL, the counter `acme:orders`), and the
//! single node's disk in `tls::store`. Leases (certmagic's `Locker`) are `cluster::lock`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::cluster::lock::RedisLock;
use crate::cluster::redis::SharedRedis;
use crate::cluster::values::{SharedError, Write};

/// How long a published challenge answer lives (an order takes seconds).
const CHALLENGE_TTL: Duration = Duration::from_secs(10 * 60);

/// Stores the certificate only while the lock is ours (fencing: a holder whose lease ran
/// out cannot overwrite its successor's certificate).
const STORE_IF_HELD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'chain', ARGV[2], 'key', ARGV[3], 'not_after', ARGV[4], 'serial', ARGV[5])
return 1
"#;

/// Writes back a certificate Redis lost (a restart without persistence), unless one is there.
const RESTORE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'chain', ARGV[1], 'key', ARGV[2], 'not_after', ARGV[3], 'serial', ARGV[4])
return 1
"#;

/// Records the renewal time only for the certificate it was computed for (a newer one may
/// have replaced it).
const SET_RENEW_AT: &str = "if redis.call('HGET', KEYS[1], 'serial') == ARGV[1] then redis.call('HSET', KEYS[1], 'renew_at', ARGV[2]) end return 1";

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("redis is not answering")]
    Unavailable,
    #[error("redis {what}: {source}")]
    Redis {
        what: &'static str,
        source: redis::RedisError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A record that cannot be used (incomplete, not JSON, not a certificate, not openable).
    #[error("{0}")]
    Corrupt(String),
}

impl From<SharedError> for StoreError {
    fn from(e: SharedError) -> StoreError {
        match e {
            SharedError::Unavailable => StoreError::Unavailable,
            SharedError::Failed { what, source } => StoreError::Redis { what, source },
        }
    }
}

/// A certificate as stored: the chain and its sealed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertRecord {
    pub(crate) chain: String,
    pub(crate) sealed_key: String,
    pub(crate) not_after: i64,
    pub(crate) serial: String,
    /// The renewal time picked in the CA's ARI window, when one was shared.
    pub(crate) renew_at: Option<i64>,
}

impl CertRecord {
    fn fields(&self) -> [String; 4] {
        [
            self.chain.clone(),
            self.sealed_key.clone(),
            self.not_after.to_string(),
            self.serial.clone(),
        ]
    }
}

/// A certificate read back: what the chain and key need to become a bundle again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredCert {
    pub(crate) chain: String,
    pub(crate) sealed_key: String,
    pub(crate) renew_at: Option<i64>,
}

type Answer<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The storage contract. `id`s are what follows `acme:account:`, `kind` and `id` of a
/// challenge what follows `acme:`.
pub(crate) trait Storage: Send + Sync {
    fn load_cert<'a>(&'a self, name: &'a str) -> Answer<'a, Option<StoredCert>>;
    /// Stores a new certificate, in a cluster only while `lock` is ours; true when stored.
    fn save_cert<'a>(&'a self, name: &'a str, cert: &'a CertRecord, lock: &'a RedisLock) -> Answer<'a, bool>;
    /// Puts back a certificate the storage lost, unless one is there; true when written.
    fn restore_cert<'a>(&'a self, name: &'a str, cert: &'a CertRecord) -> Answer<'a, bool>;
    /// Shares the renewal time picked for the certificate `serial`.
    fn set_renew_at<'a>(&'a self, name: &'a str, serial: &'a str, at: i64) -> Answer<'a, ()>;
    fn load_account<'a>(&'a self, id: &'a str) -> Answer<'a, Option<String>>;
    /// `only_new` keeps an existing account (a write-back).
    fn save_account<'a>(&'a self, id: &'a str, sealed: &'a str, only_new: bool) -> Answer<'a, ()>;
    fn put_challenge<'a>(&'a self, kind: &'a str, id: &'a str, value: &'a str) -> Answer<'a, ()>;
    /// The published answer, if any (a failure is no answer).
    fn challenge<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Option<String>>;
    fn remove_challenge<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, ()>;
    /// Counts an order placed (for operators and tests; best effort).
    fn count_order(&self) -> BoxFuture<'_, ()>;
}

/// The cluster's storage in Redis.
pub(crate) struct RedisStorage {
    redis: Arc<SharedRedis>,
}

impl RedisStorage {
    pub(crate) fn new(redis: Arc<SharedRedis>) -> RedisStorage {
        RedisStorage { redis }
    }

    fn cert_key(&self, name: &str) -> String {
        self.redis.key(&format!("acme:cert:{name}"))
    }

    /// Runs a certificate-writing script with `keys`, then `token` (if any) and the record's
    /// fields as arguments; true when it wrote.
    async fn cert_script(
        &self,
        script: &str,
        keys: &[&str],
        token: Option<&str>,
        cert: &CertRecord,
        what: &'static str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.redis.connection()?;
        let script = redis::Script::new(script);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        if let Some(token) = token {
            invocation.arg(token);
        }
        for field in cert.fields() {
            invocation.arg(field);
        }
        let written: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.failed(what, e))?;
        if written == 1 {
            // A certificate a failover loses would be ordered again: see it on a replica.
            self.redis.replicated(&mut conn, what).await;
        }
        Ok(written == 1)
    }
}

impl Storage for RedisStorage {
    fn load_cert<'a>(&'a self, name: &'a str) -> Answer<'a, Option<StoredCert>> {
        Box::pin(async move {
            let mut conn = self.redis.connection()?;
            let (chain, key, renew_at): (Option<String>, Option<String>, Option<i64>) = redis::cmd("HMGET")
                .arg(self.cert_key(name))
                .arg(&["chain", "key", "renew_at"])
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis.failed("certificate read", e))?;
            let Some(chain) = chain else { return Ok(None) };
            let sealed_key = key.ok_or_else(|| StoreError::Corrupt("incomplete certificate record".into()))?;
            Ok(Some(StoredCert {
                chain,
                sealed_key,
                renew_at,
            }))
        })
    }

    fn save_cert<'a>(&'a self, name: &'a str, cert: &'a CertRecord, lock: &'a RedisLock) -> Answer<'a, bool> {
        Box::pin(async move {
            let cert_key = self.cert_key(name);
            let keys = [lock.key(), cert_key.as_str()];
            self.cert_script(STORE_IF_HELD, &keys, Some(lock.token()), cert, "certificate write")
                .await
        })
    }

    fn restore_cert<'a>(&'a self, name: &'a str, cert: &'a CertRecord) -> Answer<'a, bool> {
        Box::pin(async move {
            let cert_key = self.cert_key(name);
            self.cert_script(RESTORE, &[&cert_key], None, cert, "certificate write-back")
                .await
        })
    }

    fn set_renew_at<'a>(&'a self, name: &'a str, serial: &'a str, at: i64) -> Answer<'a, ()> {
        Box::pin(async move {
            let mut conn = self.redis.connection()?;
            redis::Script::new(SET_RENEW_AT)
                .key(self.cert_key(name))
                .arg(serial)
                .arg(at)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| StoreError::from(self.redis.failed("renewal time write", e)))
        })
    }

    fn load_account<'a>(&'a self, id: &'a str) -> Answer<'a, Option<String>> {
        Box::pin(async move { Ok(self.redis.get(&format!("acme:account:{id}"), "account read").await?) })
    }

    fn save_account<'a>(&'a self, id: &'a str, sealed: &'a str, only_new: bool) -> Answer<'a, ()> {
        Box::pin(async move {
            let how = Write { ttl: None, only_new };
            let key = format!("acme:account:{id}");
            Ok(self.redis.set(&key, sealed, how, "account write").await?)
        })
    }

    fn put_challenge<'a>(&'a self, kind: &'a str, id: &'a str, value: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let how = Write {
                ttl: Some(CHALLENGE_TTL),
                only_new: false,
            };
            let key = format!("acme:{kind}:{id}");
            Ok(self.redis.set(&key, value, how, "challenge write").await?)
        })
    }

    fn challenge<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let key = format!("acme:{kind}:{id}");
            self.redis.get(&key, "challenge read").await.ok().flatten()
        })
    }

    fn remove_challenge<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Best effort: the answer expires by itself.
            let _ = self
                .redis
                .delete(&format!("acme:{kind}:{id}"), "challenge delete")
                .await;
        })
    }

    fn count_order(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.redis.count("acme:orders", "order count").await;
        })
    }
}
