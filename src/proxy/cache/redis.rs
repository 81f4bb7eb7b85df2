//! L2: raw upstream packuments in the shared Redis, gzip-compressed (by the caller), with the upstream ETag,
//! when the body was fetched and when it was last validated, so every replica can use what
//! one fetched. Every failure here is a cache miss, never a failed request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;

use crate::cluster::redis::SharedRedis;
use crate::npm::name::PackageName;
use crate::proxy::rendered::DocMeta;

pub struct SharedMeta {
    redis: Arc<SharedRedis>,
}

impl SharedMeta {
    pub fn new(redis: Arc<SharedRedis>) -> SharedMeta {
        SharedMeta { redis }
    }

    fn key(&self, name: &PackageName) -> String {
        self.redis.key(&format!("meta:{name}"))
    }

    pub async fn meta(&self, name: &PackageName) -> Option<DocMeta> {
        let mut conn = self.redis.conn()?;
        let fields: redis::RedisResult<(Option<String>, Option<u64>, Option<u64>)> = redis::cmd("HMGET")
            .arg(self.key(name))
            .arg(&["etag", "fetched", "checked"])
            .query_async(&mut conn)
            .await;
        match fields {
            Ok((etag, Some(fetched_ms), Some(checked_ms))) => Some(DocMeta {
                etag: etag.filter(|e| !e.is_empty()),
                fetched_ms,
                checked_ms,
            }),
            Ok(_) => None,
            Err(e) => {
                self.redis.report_error("metadata read", &e);
                None
            }
        }
    }

    /// The gzip-compressed body stored for `name`, unless it is over `max` bytes (then not
    /// even read: a planted or corrupted entry costs no memory). One atomic round trip.
    pub async fn body_gz(&self, name: &PackageName, max: usize) -> Option<Bytes> {
        let mut conn = self.redis.conn()?;
        let script = redis::Script::new(
            "if redis.call('HSTRLEN', KEYS[1], 'body') > tonumber(ARGV[1]) then return -1 end \
             return redis.call('HGET', KEYS[1], 'body')",
        );
        let body = script.key(self.key(name)).arg(max).invoke_async(&mut conn).await;
        match body {
            Ok(redis::Value::BulkString(v)) => Some(Bytes::from(v)),
            Ok(redis::Value::Int(-1)) => {
                tracing::warn!(package = %name, max, "a document in Redis is larger than MAX_PACKUMENT_MB; ignored");
                None
            }
            Ok(_) => None,
            Err(e) => {
                self.redis.report_error("metadata read", &e);
                None
            }
        }
    }

    /// Stores a gzip-compressed body with what is known of it, for `keep`.
    pub async fn put(&self, name: &PackageName, gz: Bytes, meta: &DocMeta, keep: Duration) {
        let Some(mut conn) = self.redis.conn() else { return };
        let key = self.key(name);
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .del(&key)
            .hset_multiple(
                &key,
                &[
                    ("body", gz.to_vec()),
                    ("etag", meta.etag.clone().unwrap_or_default().into_bytes()),
                    ("fetched", meta.fetched_ms.to_string().into_bytes()),
                    ("checked", meta.checked_ms.to_string().into_bytes()),
                ],
            )
            .pexpire(&key, keep.as_millis() as i64)
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            self.redis.report_error("metadata write", &e);
        }
    }

    /// Records a successful revalidation (upstream said 304) for the other replicas.
    pub async fn touch(&self, name: &PackageName, checked_ms: u64, keep: Duration) {
        let Some(mut conn) = self.redis.conn() else { return };
        let key = self.key(name);
        let result: redis::RedisResult<()> = redis::pipe()
            .hset(&key, "checked", checked_ms)
            .ignore()
            .pexpire(&key, keep.as_millis() as i64)
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            self.redis.report_error("metadata write", &e);
        }
    }

    pub async fn delete(&self, name: &PackageName) {
        let Some(mut conn) = self.redis.conn() else { return };
        if let Err(e) = conn.del::<_, ()>(self.key(name)).await {
            self.redis.report_error("metadata delete", &e);
        }
    }
}
