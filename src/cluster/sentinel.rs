//! Where the Redis master is: a fixed address (`REDIS_URL`) or whatever Redis Sentinel names
//! (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`). The lookup is the redis crate's: it asks the
//! sentinels in turn and keeps only an address whose node answers `ROLE` as a master, so an
//! old master that came back as a replica is never used.

use std::fmt;
use std::str::FromStr;

use redis::ConnectionAddr;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use tokio::sync::Mutex;

/// `host:port` of a sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<HostPort> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("`{s}` is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            anyhow::bail!("`{s}` is not host:port");
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow::anyhow!("`{s}`: the port must be 1-65535"))?;
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What the settings say about finding the master.
#[derive(Clone)]
pub enum Target {
    /// One fixed node (`REDIS_URL` or REDIS_HOST/PORT/...).
    Url(String),
    Sentinels(SentinelTarget),
}

/// Sentinel mode: where the sentinels are and how to talk to the master they name.
#[derive(Clone)]
pub struct SentinelTarget {
    pub sentinels: Vec<HostPort>,
    pub master_name: String,
    pub sentinel_password: Option<String>,
    pub master_password: Option<String>,
    pub db: i64,
}

/// A node found to be the master: its client and its address, as shown in health.
pub(crate) struct Master {
    pub(crate) client: redis::Client,
    pub(crate) addr: String,
}

/// Asks the sentinels for the master. The crate's client keeps connections to the sentinels
/// between lookups (hence `&mut`, hence the lock; only the monitor looks up).
pub(crate) struct Sentinels {
    client: Mutex<redis::sentinel::SentinelClient>,
}

impl Sentinels {
    pub(crate) fn new(target: &SentinelTarget) -> redis::RedisResult<Sentinels> {
        let addrs = target
            .sentinels
            .iter()
            .map(|s| ConnectionAddr::Tcp(s.host.clone(), s.port));
        let mut builder = SentinelClientBuilder::new(addrs, &target.master_name, SentinelServerType::Master)?
            .set_client_to_redis_db(target.db);
        if let Some(p) = target.master_password.as_deref().filter(|p| !p.is_empty()) {
            builder = builder.set_client_to_redis_password(p);
        }
        if let Some(p) = target.sentinel_password.as_deref().filter(|p| !p.is_empty()) {
            builder = builder.set_client_to_sentinel_password(p);
        }
        Ok(Sentinels {
            client: Mutex::new(builder.build()?),
        })
    }

    /// The master the sentinels name now, checked with `ROLE` by the crate.
    pub(crate) async fn master(&self) -> redis::RedisResult<Master> {
        let client = self.client.lock().await.async_get_client().await?;
        let addr = address(&client);
        Ok(Master { client, addr })
    }
}

/// `host:port` of a client's node (no credentials).
pub(crate) fn address(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => HostPort {
            host: host.clone(),
            port: *port,
        }
        .to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parses_and_refuses() {
        let hp: HostPort = "10.0.0.1:26379".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("10.0.0.1", 26379));
        assert_eq!(hp.to_string(), "10.0.0.1:26379");
        let v6: HostPort = "[::1]:26379".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:26379");
        for bad in ["sentinel", ":26379", "s:0", "s:99999", "redis://s:1", "s:x"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }
}
