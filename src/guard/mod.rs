//! The guard: one decision API over the blocklist, the malware feed and the release-age gate.
//!
//! Decision order: blocklist pattern / whole package → malware feed (`*`, then exact
//! version) → version rules of the blocklist → minimum release age. The current rules are one
//! immutable `Policy` behind an `ArcSwap`: a reload or a feed update swaps it and bumps its
//! version, so rendered responses cached under an older version are never served.

pub mod age;
pub(crate) mod block;
pub mod blocklist;
pub(crate) mod malware;
pub(crate) mod restrictions;
pub mod signatures;
pub(crate) mod status;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use age::AgeGate;
pub(crate) use block::{Block, FeedSource, Rule};
use blocklist::{Blocklist, Hit};
use malware::MalwareList;
use signatures::{SigStates, Signatures};
use status::{BlocklistStatus, FeedStatus, KeysStatus, State};

/// The block a blocklist rule makes.
fn from_hit(hit: Hit) -> Block {
    match hit {
        Hit::Package { reason } => Block::new(Rule::Package, reason),
        Hit::Pattern { pattern, reason } => Block {
            pattern: Some(pattern),
            ..Block::new(Rule::Pattern, reason)
        },
        Hit::Version { spec, reason } => Block {
            version_spec: Some(spec),
            ..Block::new(Rule::Version, reason)
        },
    }
}

/// The block a malware feed entry makes.
fn malware(reason: &str, source: &FeedSource) -> Block {
    Block {
        source: Some(source.clone()),
        ..Block::new(Rule::Malware, reason)
    }
}

/// The versions a policy hides in one packument.
#[derive(Debug, Default, Clone)]
pub(crate) struct Verdict {
    pub(crate) hidden: HashMap<String, Block>,
    /// When the age gate will show one of the hidden versions (unix ms): the rendering is
    /// valid until then.
    pub(crate) valid_until_ms: Option<u64>,
}

/// The rules in force, immutable.
pub struct Policy {
    pub version: u64,
    pub blocklist: Arc<Blocklist>,
    pub malware: Arc<MalwareList>,
    pub age: Option<Arc<AgeGate>>,
    /// SIGNATURE_POLICY and the upstream's signing keys.
    pub signatures: Arc<Signatures>,
}

impl Policy {
    /// A block of every version of `name`.
    pub(crate) fn package(&self, name: &str) -> Option<Block> {
        if let Some(hit) = self.blocklist.whole_package(name) {
            return Some(from_hit(hit));
        }
        self.malware
            .whole_package(name)
            .map(|r| malware(r, self.malware.source()))
    }

    /// A block of `name@version` by the feed or a version rule (not by age: that needs the
    /// publication time, see `judge`).
    pub(crate) fn version(&self, name: &str, version: &str) -> Option<Block> {
        if let Some(reason) = self.malware.version(name, version) {
            return Some(malware(reason, self.malware.source()));
        }
        self.blocklist.version(name, version).map(from_hit)
    }

    /// Whether the age gate applies to `name`.
    pub(crate) fn age_gate(&self, name: &str) -> Option<&AgeGate> {
        self.age.as_deref().filter(|g| !g.exempt(name))
    }

    /// Which of `versions` (with their publication times) to hide at `now_ms`.
    pub(crate) fn judge<'a>(
        &self,
        name: &str,
        versions: impl Iterator<Item = (&'a str, Option<u64>)>,
        now_ms: u64,
    ) -> Verdict {
        let gate = self.age_gate(name);
        let mut verdict = Verdict::default();
        for (version, published) in versions {
            if let Some(block) = self.version(name, version) {
                verdict.hidden.insert(version.to_string(), block);
                continue;
            }
            let Some(gate) = gate else { continue };
            // No publication time: npg cannot tell the age, so the version stays hidden.
            let until = match published {
                Some(p) => gate.hidden_until(p, now_ms),
                None => Some(u64::MAX),
            };
            if let Some(until) = until {
                let known = (until != u64::MAX).then_some(until);
                let block = Block::age(published, known, gate.min_age());
                verdict.hidden.insert(version.to_string(), block);
                if let Some(until) = known {
                    verdict.valid_until_ms = Some(verdict.valid_until_ms.map_or(until, |v| v.min(until)));
                }
            }
        }
        verdict
    }

    /// Hides what the signature policy refuses among `states` (after `judge`: a version
    /// another rule hides keeps that rule's block).
    pub(crate) fn judge_signatures(&self, states: &SigStates, verdict: &mut Verdict) {
        for (version, state) in states {
            if let Some(block) = self.signatures.block(state) {
                verdict.hidden.entry(version.clone()).or_insert(block);
            }
        }
    }
}

/// Remembered blocks, so each is logged once (cleared when it grows past this).
const LOGGED_MAX: usize = 100_000;

pub(crate) struct Guard {
    policy: ArcSwap<Policy>,
    next_version: AtomicU64,
    feed_status: Mutex<FeedStatus>,
    blocklist_status: Mutex<BlocklistStatus>,
    logged: Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
    keys_status: Mutex<KeysStatus>,
}

impl Guard {
    pub(crate) fn new(blocklist: Blocklist, age: Option<AgeGate>, metrics: Arc<Metrics>) -> Guard {
        let policy = Policy {
            version: 1,
            blocklist: Arc::new(blocklist),
            malware: Arc::default(),
            age: age.map(Arc::new),
            signatures: Arc::default(),
        };
        Guard {
            policy: ArcSwap::from_pointee(policy),
            next_version: AtomicU64::new(2),
            feed_status: Mutex::new(FeedStatus {
                state: State::Disabled,
                ..FeedStatus::default()
            }),
            blocklist_status: Mutex::new(BlocklistStatus::ok()),
            logged: Mutex::default(),
            metrics,
            keys_status: Mutex::default(),
        }
    }

    /// The rules in force now.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub(crate) fn version(&self) -> u64 {
        self.policy.load().version
    }

    fn swap(&self, change: impl Fn(&Policy) -> Policy) {
        self.policy.rcu(|old| Arc::new(change(old)));
        self.logged.lock().expect("guard log set poisoned").clear();
    }

    pub(crate) fn set_blocklist(&self, blocklist: Blocklist) {
        let blocklist = Arc::new(blocklist);
        self.swap(|old| Policy {
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            blocklist: blocklist.clone(),
            malware: old.malware.clone(),
            age: old.age.clone(),
            signatures: old.signatures.clone(),
        });
    }

    pub(crate) fn set_malware(&self, malware: Arc<MalwareList>) {
        self.swap(|old| Policy {
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            blocklist: old.blocklist.clone(),
            malware: malware.clone(),
            age: old.age.clone(),
            signatures: old.signatures.clone(),
        });
    }

    /// New signature rules (the mode at start, new keys from the keys job).
    pub(crate) fn set_signatures(&self, signatures: Signatures) {
        let signatures = Arc::new(signatures);
        self.swap(|old| Policy {
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            blocklist: old.blocklist.clone(),
            malware: old.malware.clone(),
            age: old.age.clone(),
            signatures: signatures.clone(),
        });
    }

    pub(crate) fn keys_status(&self) -> KeysStatus {
        self.keys_status.lock().expect("keys status poisoned").clone()
    }

    pub(crate) fn update_keys_status(&self, update: impl FnOnce(&mut KeysStatus)) {
        update(&mut self.keys_status.lock().expect("keys status poisoned"));
    }

    pub(crate) fn feed_status(&self) -> FeedStatus {
        self.feed_status.lock().expect("feed status poisoned").clone()
    }

    pub(crate) fn update_feed_status(&self, update: impl FnOnce(&mut FeedStatus)) {
        update(&mut self.feed_status.lock().expect("feed status poisoned"));
    }

    /// Whether the blocklist in force is the file's (see `reload`).
    pub(crate) fn blocklist_status(&self) -> BlocklistStatus {
        self.blocklist_status.lock().expect("blocklist status poisoned").clone()
    }

    pub(crate) fn update_blocklist_status(&self, update: impl FnOnce(&mut BlocklistStatus)) {
        update(&mut self.blocklist_status.lock().expect("blocklist status poisoned"));
    }

    /// Counts a block in the metrics and logs it the first time it is seen under this policy.
    pub(crate) fn record(&self, name: &str, version: Option<&str>, block: &Block) {
        self.metrics.guard_block(block.kind.as_str());
        let key = format!("{name}@{}", version.unwrap_or("*"));
        let mut logged = self.logged.lock().expect("guard log set poisoned");
        if logged.len() >= LOGGED_MAX {
            logged.clear();
        }
        if logged.insert(key) {
            let version = version.unwrap_or("*");
            let rule = block.kind.as_str();
            tracing::warn!(package = name, version, rule, why = ?block.message(), "blocked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard() -> Guard {
        let blocklist =
            Blocklist::parse("packages:\n  - name: p\n    versions: ['>=2.0.0']\n    reason: bad major\n").unwrap();
        let age = AgeGate::new(Duration::from_secs(3600), &["trusted".into()]).unwrap();
        Guard::new(blocklist, Some(age), Arc::new(Metrics::default()))
    }

    #[test]
    fn judges_versions_in_order() {
        let g = guard();
        let malware = MalwareList::parse(
            br#"[{"package_name":"p","version":"1.0.1","reason":"MALWARE"}]"#,
            &["MALWARE".into()],
        )
        .unwrap();
        let before = g.version();
        g.set_malware(Arc::new(malware));
        assert!(g.version() > before);
        let now = 10 * 3_600_000;
        let versions = [
            ("1.0.0", Some(0)),
            ("1.0.1", Some(0)),
            ("2.0.0", Some(0)),
            ("1.1.0", Some(now - 60_000)),
            ("1.2.0", None),
        ];
        let verdict = g.policy().judge("p", versions.into_iter(), now);
        assert_eq!(verdict.hidden.len(), 4);
        assert_eq!(verdict.hidden["1.0.1"].kind, Rule::Malware);
        assert_eq!(verdict.hidden["2.0.0"].kind, Rule::Version);
        assert_eq!(verdict.hidden["2.0.0"].version_spec.as_deref(), Some(">=2.0.0"));
        assert_eq!(verdict.hidden["1.1.0"].kind, Rule::Age);
        assert_eq!(verdict.hidden["1.2.0"].kind, Rule::Age, "unknown age stays hidden");
        assert_eq!(verdict.valid_until_ms, Some(now - 60_000 + 3_600_000));
        let exempt = g.policy().judge("trusted", [("1.0.0", Some(now))].into_iter(), now);
        assert!(exempt.hidden.is_empty());
    }

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_block_is_logged_once_by_its_rule_without_empty_fields() {
        let g = guard();
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let block = g.policy().version("p", "2.0.0").unwrap();
            g.record("p", Some("2.0.0"), &block);
            g.record("p", Some("2.0.0"), &block);
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains(
                r#"blocked package="p" version="2.0.0" rule="version" why="blocked by the blocklist (bad major)""#
            ),
            "{log}"
        );
        assert!(!log.contains(r#""""#), "no empty fields: {log}");
    }

    #[test]
    fn whole_package_blocks() {
        let g = guard();
        g.set_blocklist(Blocklist::parse("patterns:\n  - pattern: '^evil'\n").unwrap());
        assert_eq!(g.policy().package("evil-x").unwrap().kind, Rule::Pattern);
        assert!(g.policy().package("p").is_none(), "the old rules are gone");
        let feed = MalwareList::parse(
            br#"[{"package_name":"m","version":"*","reason":"MALWARE"}]"#,
            &["MALWARE".into()],
        )
        .unwrap();
        g.set_malware(Arc::new(feed));
        assert_eq!(g.policy().package("m").unwrap().kind, Rule::Malware);
    }
}
