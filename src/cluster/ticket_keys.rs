//! The TLS session ticket keys the replicas share: `<prefix>tls:ticket-key:<period>`, one per
//! rotation period, written once by the first replica that offers one (`SET NX`, so two
//! replicas never make different keys for one period) and read by all. They carry no TTL, so
//! Redis's `volatile-lru` never evicts them under memory pressure (only cache entries go);
//! the replicas delete the keys of past periods instead. The values are opaque here:
//! `tls::tickets` makes, seals and opens them.

use redis::AsyncCommands;

use crate::cluster::redis::SharedRedis;
use crate::cluster::values::SharedError;

/// The key (after the prefix) of the ticket key of `period`.
pub(crate) fn name(period: u64) -> String {
    format!("tls:ticket-key:{period}")
}

impl SharedRedis {
    /// Offers `value` as the ticket key of `period` and returns the one stored: this one, or
    /// the one another replica offered first.
    pub(crate) async fn offer_ticket_key(&self, period: u64, value: &str) -> Result<Option<String>, SharedError> {
        let mut conn = self.connection()?;
        let key = self.key(&name(period));
        let (stored,): (Option<String>,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed("offer ticket key", e))?;
        Ok(stored)
    }

    /// The ticket key of `period`, if one was offered.
    pub(crate) async fn ticket_key(&self, period: u64) -> Result<Option<String>, SharedError> {
        self.get(&name(period), "ticket key").await
    }

    /// Deletes the ticket keys of `periods` (past ones no ticket may be opened with any more).
    pub(crate) async fn forget_ticket_keys(&self, periods: &[u64]) -> Result<(), SharedError> {
        let mut conn = self.connection()?;
        let keys: Vec<String> = periods.iter().map(|p| self.key(&name(*p))).collect();
        conn.del(keys).await.map_err(|e| self.failed("forget ticket keys", e))
    }
}
