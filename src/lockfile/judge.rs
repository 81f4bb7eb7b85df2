//! Judging lockfile entries: through a running npg (`GET /api/guard/<name>`, its whole
//! policy) or offline with the blocklist, the last malware feed on disk and the OSV advisories.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Deserialize;
use url::Url;

use super::{CheckArgs, Entry};
use crate::guard::blocklist::Blocklist;
use crate::guard::malware::MalwareList;
use crate::guard::{Block, Policy};
use crate::jobs::feed::FeedFiles;
use anyhow::anyhow;

/// What the policy does with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    Blocked {
        rule: String,
        reason: String,
    },
    /// The policy could not be asked (npg unreachable, refused, ...).
    Unknown(String),
}

impl From<&Block> for Verdict {
    fn from(block: &Block) -> Verdict {
        Verdict::Blocked {
            rule: block.kind.as_str().to_string(),
            reason: block.reason.clone(),
        }
    }
}

pub(crate) enum Judge {
    Online {
        npg: Url,
        token: Option<String>,
        client: reqwest::Client,
    },
    Offline {
        policy: Policy,
        age_unjudged: bool,
    },
}

/// The part of `/api/guard/<name>`'s answer the check needs.
#[derive(Deserialize)]
struct Report {
    blocked: Option<Rule>,
    #[serde(default)]
    hidden: HashMap<String, Rule>,
}

#[derive(Deserialize, Clone)]
struct Rule {
    #[serde(rename = "type")]
    kind: String,
    reason: String,
}

impl From<&Rule> for Verdict {
    fn from(rule: &Rule) -> Verdict {
        Verdict::Blocked {
            rule: rule.kind.clone(),
            reason: rule.reason.clone(),
        }
    }
}

impl Judge {
    pub(crate) fn new(args: &CheckArgs) -> anyhow::Result<Judge> {
        if let Some(npg) = &args.npg {
            let client = crate::upstream::client::builder(Some("lockfile check"))
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .map_err(|e| anyhow!("HTTP client: {e}"))?;
            return Ok(Judge::Online {
                npg: npg.clone(),
                token: args.token.clone(),
                client,
            });
        }
        let sources = &args.policy;
        let blocklist = Blocklist::load(&sources.blacklist_path).map_err(|e| anyhow!("BLACKLIST_PATH: {e}"))?;
        let feed = FeedFiles::new(&sources.malware_list_dir, &sources.malware_feed_url);
        let malware = match feed.load().map_err(|e| anyhow!("MALWARE_LIST_DIR: {e}"))? {
            Some(kept) => MalwareList::parse(&kept.body, &sources.malware_feed_reasons)
                .map_err(|e| anyhow!("{}: {e}", feed.body.display()))?,
            None => MalwareList::default(),
        };
        let policy = Policy {
            version: 0,
            blocklist: Arc::new(blocklist),
            malware: Arc::new(malware),
            osv: Arc::new(crate::jobs::osv::load_offline(sources)?),
            typosquat: crate::preflight::typosquat(sources)?.map(Arc::new),
            ..Policy::default()
        };
        Ok(Judge::Offline {
            policy,
            age_unjudged: args.min_release_age.is_some(),
        })
    }

    /// npg's usual public npm URL, when asking a running npg.
    pub(crate) fn default_proxy(&self) -> Option<Url> {
        match self {
            Judge::Online { npg, .. } => npg.join("npm").ok(),
            Judge::Offline { .. } => None,
        }
    }

    /// What the summary must add about the rules not judged.
    pub(crate) fn caveat(&self) -> &'static str {
        match self {
            Judge::Offline { age_unjudged: true, .. } => {
                "; offline: MIN_RELEASE_AGE, install scripts and signatures not judged (they need \
                 the packuments: use --npg)"
            }
            Judge::Offline { .. } => {
                "; offline: the blocklist, the malware lists kept on disk and typosquats (install \
                 scripts and signatures need the packuments: use --npg)"
            }
            Judge::Online { .. } => "",
        }
    }

    /// One verdict per entry, in order.
    pub(crate) async fn judge(&self, entries: &[Entry], concurrency: usize) -> Vec<Verdict> {
        match self {
            Judge::Offline { policy, .. } => entries.iter().map(|e| offline(policy, e)).collect(),
            Judge::Online { npg, token, client } => {
                let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                names.dedup();
                let reports: HashMap<&str, anyhow::Result<Report>> = futures_util::stream::iter(names)
                    .map(|name| async move { (name, ask(client, npg, token.as_deref(), name).await) })
                    .buffer_unordered(concurrency)
                    .collect()
                    .await;
                entries
                    .iter()
                    .map(|e| match &reports[e.name.as_str()] {
                        Err(why) => Verdict::Unknown(format!("{why:#}")),
                        Ok(report) => report
                            .blocked
                            .as_ref()
                            .or(report.hidden.get(&e.version))
                            .map_or(Verdict::Allowed, Verdict::from),
                    })
                    .collect()
            }
        }
    }
}

fn offline(policy: &Policy, entry: &Entry) -> Verdict {
    let block = policy
        .package(&entry.name)
        .or_else(|| policy.version(&entry.name, &entry.version));
    block.as_ref().map_or(Verdict::Allowed, Verdict::from)
}

/// `GET <npg>/api/guard/<name>` (a scope's `/` encoded).
async fn ask(client: &reqwest::Client, npg: &Url, token: Option<&str>, name: &str) -> anyhow::Result<Report> {
    let url = format!(
        "{}/api/guard/{}",
        npg.as_str().trim_end_matches('/'),
        name.replace('/', "%2f")
    );
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| anyhow!("npg unreachable ({e})"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| anyhow!("npg's answer broke off ({e})"))?;
    if !status.is_success() {
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
            .unwrap_or_default();
        return Err(anyhow!("{}", format!("npg answered {status} {reason}").trim_end()));
    }
    serde_json::from_slice(&body).map_err(|e| anyhow!("npg's answer is not a guard report ({e})"))
}
