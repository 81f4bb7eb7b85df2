//! What operators see of a cluster: one `Report` a replica builds for its caller
//! (`http::status`), drawn as the status page (`page`) and printed by `npg status`
//! (`terminal`); the replicas as they announce themselves in Redis (`Replica`) and the last
//! hour of this replica's traffic (`history`).

pub(crate) mod history;
pub(crate) mod page;
pub(crate) mod terminal;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::guard::LastBlock;
use crate::jobs::changes::ChangesStatus;
use crate::tls::TlsStatus;
use history::Series;

/// A replica's health in one word: `/api/health`'s `status`, what `npg health` reads and what
/// the replicas announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    /// It serves, but not as it should (`problems` says why).
    Degraded,
    /// SIGTERM received: balancers should stop sending it work.
    Draining,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Draining => "draining",
        }
    }
}

/// A replica unheard of for longer is shown as gone.
pub(crate) const GONE_AFTER_MS: u64 = 60_000;
/// A replica unheard of for longer is forgotten.
pub(crate) const FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;

/// What each replica announces in Redis every `history::STEP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Replica {
    pub(crate) instance: String,
    pub(crate) version: String,
    pub(crate) started_ms: u64,
    pub(crate) seen_ms: u64,
    pub(crate) status: Status,
    pub(crate) problems: Vec<String>,
    /// Over the last minute.
    pub(crate) requests_per_second: f64,
    pub(crate) requests: u64,
    /// Set by the reader: unheard of for `GONE_AFTER_MS`.
    #[serde(default)]
    pub(crate) gone: bool,
}

impl Replica {
    /// Up until now, or until last heard of when gone.
    pub(crate) fn uptime_seconds(&self, now_ms: u64) -> u64 {
        let until = if self.gone { self.seen_ms } else { now_ms };
        until.saturating_sub(self.started_ms) / 1000
    }
}

/// Everything the page and `npg status` show, as one replica sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) generated_ms: u64,
    /// The replica that answered.
    pub(crate) instance: String,
    pub(crate) version: String,
    pub(crate) uptime_seconds: u64,
    pub(crate) status: Status,
    pub(crate) problems: Vec<String>,
    /// `redis`'s state as `/api/health` says it (`disabled` for a single replica).
    pub(crate) redis: String,
    /// Every replica that announced itself, by name; without Redis, this one.
    pub(crate) replicas: Vec<Replica>,
    pub(crate) traffic: Traffic,
    pub(crate) upstream: Upstream,
    pub(crate) guard: Guard,
    /// Its certificates; npg renews ACME's (`next_renewal` is `-` for static files).
    pub(crate) tls: TlsStatus,
    pub(crate) changes: ChangesStatus,
}

/// This replica's traffic since it started, and over the last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Traffic {
    pub(crate) requests: u64,
    /// Tarballs on `disk`, or in an S3 bucket (`s3`).
    pub(crate) store: String,
    /// Per tier that saw a lookup, in the order a request meets them.
    pub(crate) tiers: Vec<Tier>,
    pub(crate) series: Series,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tier {
    pub(crate) tier: String,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

impl Tier {
    pub(crate) fn ratio(&self) -> Option<f64> {
        history::ratio(self.hits, self.hits + self.misses)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Upstream {
    /// The breaker: `closed` (healthy), `open` or `half_open`.
    pub(crate) breaker: String,
    pub(crate) last_error: Option<String>,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) mean_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Guard {
    pub(crate) policy_version: u64,
    pub(crate) blocklist_rules: usize,
    pub(crate) blocklist_error: Option<String>,
    pub(crate) malware_entries: usize,
    pub(crate) osv_entries: usize,
    pub(crate) min_release_age: Option<String>,
    pub(crate) install_scripts: String,
    pub(crate) typosquat: String,
    pub(crate) signatures: String,
    pub(crate) feeds: Vec<Feed>,
    /// Refusals by rule since this replica started.
    pub(crate) blocks: BTreeMap<String, u64>,
    pub(crate) last_block: Option<LastBlock>,
}

/// A malware list npg keeps current.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Feed {
    pub(crate) name: String,
    /// `disabled`, `loading`, `ok` or `error`.
    pub(crate) state: String,
    pub(crate) entries: usize,
    pub(crate) updated_ms: Option<u64>,
    pub(crate) last_error: Option<String>,
}

impl Report {
    /// The package named by the last block, as this viewer may see it: a private package's
    /// name only for admins.
    pub(crate) fn hide_private_names(&mut self) {
        if let Some(block) = self.guard.last_block.as_mut().filter(|b| b.private) {
            block.package = match block.package.split_once('/') {
                Some((scope, _)) if scope.starts_with('@') => format!("{scope}/(private)"),
                _ => "(private)".to_string(),
            };
            block.version = None;
            block.reason = "(shown to admins)".to_string();
        }
    }
}

/// `seconds` as "3d 4h", "5h 2m", "4m 10s" or "12s".
pub(crate) fn human_age(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(human_age(12), "12s");
        assert_eq!(human_age(250), "4m 10s");
        assert_eq!(human_age(5 * 3600 + 120), "5h 2m");
        assert_eq!(human_age(3 * 86400 + 4 * 3600 + 5), "3d 4h");
    }
}
