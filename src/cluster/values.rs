//! Single shared values (`<prefix><key>` strings): remembered misses, the changes position,
//! ACME accounts and challenges, counters. A failure is reported to the connection, so the
//! next calls skip Redis until it answers.

use std::time::Duration;

use redis::AsyncCommands;

use crate::cluster::redis::{SharedRedis, expiry_ms};

/// Why Redis could not do it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SharedError {
    #[error("redis is not answering")]
    Unavailable,
    #[error("redis {what}: {source}")]
    Failed {
        what: &'static str,
        source: redis::RedisError,
    },
}

/// How a value is written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Write {
    /// Expires after this long.
    pub(crate) ttl: Option<Duration>,
    /// Only when there is none yet (`NX`).
    pub(crate) only_new: bool,
}

impl SharedRedis {
    /// Reports a failed command (the next calls skip Redis until it answers) as an error.
    pub(crate) fn failed(&self, what: &'static str, source: redis::RedisError) -> SharedError {
        self.report_error(what, &source);
        SharedError::Failed { what, source }
    }

    /// A connection, or `Unavailable` while Redis is down.
    pub(crate) fn connection(&self) -> Result<redis::aio::ConnectionManager, SharedError> {
        self.conn().ok_or(SharedError::Unavailable)
    }

    /// The value under `<prefix><key>`; `what` names it in the log when Redis fails.
    pub(crate) async fn get(&self, key: &str, what: &'static str) -> Result<Option<String>, SharedError> {
        let mut conn = self.connection()?;
        conn.get(self.key(key)).await.map_err(|e| self.failed(what, e))
    }

    pub(crate) async fn set(&self, key: &str, value: &str, how: Write, what: &'static str) -> Result<(), SharedError> {
        let mut conn = self.connection()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = how.ttl {
            cmd.arg("PX").arg(expiry_ms(ttl));
        }
        if how.only_new {
            cmd.arg("NX");
        }
        cmd.exec_async(&mut conn).await.map_err(|e| self.failed(what, e))
    }

    pub(crate) async fn delete(&self, key: &str, what: &'static str) -> Result<(), SharedError> {
        let mut conn = self.connection()?;
        conn.del(self.key(key)).await.map_err(|e| self.failed(what, e))
    }

    /// Adds one to the counter under `<prefix><key>`.
    pub(crate) async fn count(&self, key: &str, what: &'static str) -> Result<(), SharedError> {
        let mut conn = self.connection()?;
        conn.incr(self.key(key), 1).await.map_err(|e| self.failed(what, e))
    }
}
