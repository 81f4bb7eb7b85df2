//! Documents shared by the replicas: a gzip-compressed body with its ETag, when the body was
//! fetched and when a replica last asked upstream about it, as one Redis hash (fields `body`,
//! `etag`, the stamp field of the kind, `checked`). Cached packuments (`meta:<name>`, stamp
//! `fetched`, with an expiry) and the malware feed (`malware:feed`, stamp `updated`) are such
//! documents. Each kind keeps the field name it always had, so replicas of different versions
//! read each other's copies during a rolling update. A failure is reported to the connection
//! (the next calls skip Redis until it answers) and taken as "no document".

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;

use crate::cluster::redis::SharedRedis;

/// Refuses a body over ARGV[1] bytes without reading it (-1): a planted or corrupted entry
/// costs no memory. One atomic round trip.
const BODY_UNLESS_LARGER: &str = "if redis.call('HSTRLEN', KEYS[1], 'body') > tonumber(ARGV[1]) then return -1 end \
     return redis.call('HGET', KEYS[1], 'body')";

/// A kind of shared document.
#[derive(Debug, Clone, Copy)]
pub struct DocKind {
    /// The field holding when the body was fetched (unix ms).
    pub stamp: &'static str,
    /// What the log says failed ("<what> read", "<what> write", "<what> delete").
    pub what: &'static str,
}

/// What a stored document says of itself; every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocStamps {
    /// The upstream ETag (`None` when empty).
    pub etag: Option<String>,
    /// When the body was fetched (unix ms); `None` when there is no body.
    pub stamp_ms: Option<u64>,
    /// When a replica last asked upstream (unix ms).
    pub checked_ms: Option<u64>,
}

/// Why there is no body to use.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("redis is not answering")]
    Unavailable,
    #[error("stored body is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct SharedDocuments {
    redis: Arc<SharedRedis>,
    kind: DocKind,
}

impl SharedDocuments {
    pub fn new(redis: Arc<SharedRedis>, kind: DocKind) -> SharedDocuments {
        SharedDocuments { redis, kind }
    }

    fn failed(&self, op: &str, e: &redis::RedisError) {
        self.redis.report_error(&format!("{} {op}", self.kind.what), e);
    }

    /// The stamps of the document under `<prefix><key>`; `None` when Redis is down or failed
    /// (an absent document has every field `None`).
    pub async fn stamps(&self, key: &str) -> Option<DocStamps> {
        let mut conn = self.redis.conn()?;
        let fields: redis::RedisResult<(Option<String>, Option<u64>, Option<u64>)> = redis::cmd("HMGET")
            .arg(self.redis.key(key))
            .arg(&["etag", self.kind.stamp, "checked"])
            .query_async(&mut conn)
            .await;
        match fields {
            Ok((etag, stamp_ms, checked_ms)) => Some(DocStamps {
                etag: etag.filter(|e| !e.is_empty()),
                stamp_ms,
                checked_ms,
            }),
            Err(e) => {
                self.failed("read", &e);
                None
            }
        }
    }

    /// The gzip-compressed body, unless it is over `max` bytes (then not even read);
    /// `Ok(None)` when there is none.
    pub async fn body_gz(&self, key: &str, max: usize) -> Result<Option<Bytes>, BodyError> {
        let mut conn = self.redis.conn().ok_or(BodyError::Unavailable)?;
        let script = redis::Script::new(BODY_UNLESS_LARGER);
        let body = script.key(self.redis.key(key)).arg(max).invoke_async(&mut conn).await;
        match body {
            Ok(redis::Value::BulkString(v)) => Ok(Some(Bytes::from(v))),
            Ok(redis::Value::Int(-1)) => Err(BodyError::TooLarge { max }),
            Ok(_) => Ok(None),
            Err(e) => {
                self.failed("read", &e);
                Err(e.into())
            }
        }
    }

    /// Replaces the document whole (atomically: no reader sees a body with another's ETag),
    /// expiring after `keep` if given. True when Redis took it.
    pub async fn put(&self, key: &str, gz: &[u8], stamps: &DocStamps, keep: Option<Duration>) -> bool {
        let Some(mut conn) = self.redis.conn() else {
            return false;
        };
        let key = self.redis.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore().hset_multiple(
            &key,
            &[
                ("body", gz.to_vec()),
                ("etag", stamps.etag.clone().unwrap_or_default().into_bytes()),
                (self.kind.stamp, number(stamps.stamp_ms)),
                ("checked", number(stamps.checked_ms)),
            ],
        );
        pipe.ignore();
        if let Some(keep) = keep {
            pipe.pexpire(&key, millis(keep)).ignore();
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => true,
            Err(e) => {
                self.failed("write", &e);
                false
            }
        }
    }

    /// Records that a replica just asked upstream (and it had nothing newer), keeping the
    /// document for `keep` more if given.
    pub async fn touch(&self, key: &str, checked_ms: u64, keep: Option<Duration>) {
        let Some(mut conn) = self.redis.conn() else { return };
        let key = self.redis.key(key);
        let mut pipe = redis::pipe();
        pipe.hset(&key, "checked", checked_ms).ignore();
        if let Some(keep) = keep {
            pipe.pexpire(&key, millis(keep)).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            self.failed("write", &e);
        }
    }

    pub async fn delete(&self, key: &str) {
        let Some(mut conn) = self.redis.conn() else { return };
        if let Err(e) = conn.del::<_, ()>(self.redis.key(key)).await {
            self.failed("delete", &e);
        }
    }
}

fn number(ms: Option<u64>) -> Vec<u8> {
    ms.unwrap_or_default().to_string().into_bytes()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
