//! The replicas of a cluster as they announce themselves: one hash, `<prefix>replicas`, a field
//! per instance holding what it last said (opaque here: `status` reads and writes it).

use redis::AsyncCommands;

use crate::cluster::redis::SharedRedis;
use crate::cluster::values::SharedError;

const KEY: &str = "replicas";

impl SharedRedis {
    /// Writes this replica's announcement.
    pub(crate) async fn announce(&self, instance: &str, said: &str) -> Result<(), SharedError> {
        let mut conn = self.connection()?;
        conn.hset(self.key(KEY), instance, said)
            .await
            .map_err(|e| self.failed("announce", e))
    }

    /// Every replica's last announcement, by instance.
    pub(crate) async fn announced(&self) -> Result<Vec<(String, String)>, SharedError> {
        let mut conn = self.connection()?;
        conn.hgetall(self.key(KEY))
            .await
            .map_err(|e| self.failed("replicas", e))
    }

    /// Forgets a replica (long gone, or not readable).
    pub(crate) async fn forget(&self, instance: &str) -> Result<(), SharedError> {
        let mut conn = self.connection()?;
        conn.hdel(self.key(KEY), instance)
            .await
            .map_err(|e| self.failed("forget replica", e))
    }
}
