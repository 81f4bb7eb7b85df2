//! The guard: one decision API over the blocklist, the malware sources (the feed and the OSV
//! advisories) and the release-age gate.
//!
//! Decision order: blocklist pattern / whole package → malware feed (`*`, then exact
//! version) → OSV advisories → typosquat (whole package, when set to block) → version rules
//! of the blocklist → install-script policy → minimum release age. The current rules are one
//! immutable `Policy` behind an `ArcSwap`: a reload or a feed update swaps it and bumps its
//! version, so rendered responses cached under an older version are never served.

pub mod age;
pub(crate) mod block;
pub mod blocklist;
pub(crate) mod malware;
pub mod names;
pub(crate) mod osv;
pub(crate) mod restrictions;
pub mod scripts;
pub mod signatures;
pub(crate) mod status;
pub mod typosquat;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::metrics::{Feed, Metrics};
use crate::npm::packument::VersionFacts;
use age::AgeGate;
pub(crate) use block::{Block, FeedSource, Rule};
use blocklist::{Blocklist, Hit};
use malware::MalwareList;
use osv::{Advisory, OsvList};
use scripts::ScriptGate;
use signatures::{SigStates, Signatures};
use status::{BlocklistStatus, FeedStatus, KeysStatus, State};
use typosquat::{Action, Suspect, TyposquatRule};

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

/// The block an OSV advisory makes.
fn advisory(advisory: &Advisory) -> Block {
    Block {
        source: Some(FeedSource::osv()),
        advisory: Some(advisory.id.clone()),
        ..Block::new(Rule::Malware, advisory.reason())
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
#[derive(Clone, Default)]
pub struct Policy {
    pub version: u64,
    pub blocklist: Arc<Blocklist>,
    pub malware: Arc<MalwareList>,
    /// The OSV advisories (OSV_FEED_URL / OSV_FEED_DIR), consulted after the feed.
    pub osv: Arc<OsvList>,
    pub age: Option<Arc<AgeGate>>,
    pub scripts: Option<Arc<ScriptGate>>,
    /// `None` when TYPOSQUAT_POLICY is off.
    pub typosquat: Option<Arc<TyposquatRule>>,
    /// SIGNATURE_POLICY and the upstream's signing keys.
    pub signatures: Arc<Signatures>,
}

impl Policy {
    /// A block of every version of `name`.
    pub(crate) fn package(&self, name: &str) -> Option<Block> {
        if let Some(hit) = self.blocklist.whole_package(name) {
            return Some(from_hit(hit));
        }
        if let Some(reason) = self.malware.whole_package(name) {
            return Some(malware(reason, self.malware.source()));
        }
        if let Some(found) = self.osv.whole_package(name) {
            return Some(advisory(found));
        }
        // Only looked up when it blocks: with `warn` the routes ask `typosquat` themselves.
        let rule = self.typosquat.as_deref().filter(|r| r.action == Action::Block)?;
        rule.suspect(name).map(|suspect| Block::typosquat(&suspect))
    }

    /// The popular name `name` looks like, and what the policy does about it.
    pub(crate) fn typosquat(&self, name: &str) -> Option<(Suspect, Action)> {
        let rule = self.typosquat.as_deref()?;
        Some((rule.suspect(name)?, rule.action))
    }

    /// A block of `name@version` by the feed or a version rule (not by age: that needs the
    /// publication time, see `judge`).
    pub(crate) fn version(&self, name: &str, version: &str) -> Option<Block> {
        if let Some(reason) = self.malware.version(name, version) {
            return Some(malware(reason, self.malware.source()));
        }
        if let Some(found) = self.osv.version(name, version) {
            return Some(advisory(found));
        }
        self.blocklist.version(name, version).map(from_hit)
    }

    /// Whether the age gate applies to `name`.
    pub(crate) fn age_gate(&self, name: &str) -> Option<&AgeGate> {
        self.age.as_deref().filter(|g| !g.exempt(name))
    }

    /// Whether the install-script rule applies to `name`.
    pub(crate) fn script_gate(&self, name: &str) -> Option<&ScriptGate> {
        self.scripts.as_deref().filter(|g| !g.exempt(name))
    }

    /// Whether a version of `name` can only be judged with its packument (publication time,
    /// install scripts, registry signature), not by its name and number alone.
    pub(crate) fn needs_document(&self, name: &str) -> bool {
        self.age_gate(name).is_some() || self.script_gate(name).is_some() || self.signatures.hides()
    }

    /// Which of `versions` to hide at `now_ms`: the lists first, then the install-script rule,
    /// then the release-age gate.
    pub(crate) fn judge(&self, name: &str, versions: &[VersionFacts], now_ms: u64) -> Verdict {
        let mut verdict = Verdict::default();
        // The first rule to hide a version tells why; only its end of hold bounds the rendering.
        let mut hold = |version: &str, block: Block| {
            if verdict.hidden.contains_key(version) {
                return;
            }
            if let Some(until) = block.until {
                verdict.valid_until_ms = Some(verdict.valid_until_ms.map_or(until, |v| v.min(until)));
            }
            verdict.hidden.insert(version.to_string(), block);
        };
        for facts in versions {
            if let Some(block) = self.version(name, &facts.version) {
                hold(&facts.version, block);
            }
        }
        if let Some(gate) = self.script_gate(name) {
            for (version, block) in gate.held(versions, now_ms) {
                hold(version, block);
            }
        }
        if let Some(gate) = self.age_gate(name) {
            for facts in versions {
                // No publication time: npg cannot tell the age, so the version stays hidden.
                let until = match facts.published {
                    Some(p) => gate.hidden_until(p, now_ms),
                    None => Some(u64::MAX),
                };
                if let Some(until) = until {
                    let known = (until != u64::MAX).then_some(until);
                    hold(&facts.version, Block::age(facts.published, known, gate.min_age()));
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
    osv_status: Mutex<FeedStatus>,
    blocklist_status: Mutex<BlocklistStatus>,
    logged: Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
    keys_status: Mutex<KeysStatus>,
    last_block: Mutex<Option<LastBlock>>,
}

/// The last refusal this replica sent, for the status page.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LastBlock {
    pub(crate) package: String,
    pub(crate) version: Option<String>,
    pub(crate) rule: String,
    /// The refusal's words, as the client read them.
    pub(crate) reason: String,
    pub(crate) at_ms: u64,
    /// Fetched with credentials (the client's or npg's own for its scope): its name is not
    /// shown to viewers without the admin token.
    pub(crate) private: bool,
}

impl Guard {
    pub(crate) fn new(
        blocklist: Blocklist,
        age: Option<AgeGate>,
        scripts: Option<ScriptGate>,
        typosquat: Option<TyposquatRule>,
        metrics: Arc<Metrics>,
    ) -> Guard {
        let policy = Policy {
            version: 1,
            blocklist: Arc::new(blocklist),
            malware: Arc::default(),
            osv: Arc::default(),
            age: age.map(Arc::new),
            scripts: scripts.map(Arc::new),
            typosquat: typosquat.map(Arc::new),
            signatures: Arc::default(),
        };
        Guard {
            policy: ArcSwap::from_pointee(policy),
            next_version: AtomicU64::new(2),
            feed_status: Mutex::new(FeedStatus {
                state: State::Disabled,
                ..FeedStatus::default()
            }),
            osv_status: Mutex::new(FeedStatus {
                state: State::Disabled,
                ..FeedStatus::default()
            }),
            blocklist_status: Mutex::new(BlocklistStatus::ok()),
            logged: Mutex::default(),
            last_block: Mutex::default(),
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
            ..old.clone()
        });
    }

    pub(crate) fn set_malware(&self, malware: Arc<MalwareList>) {
        self.swap(|old| Policy {
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            malware: malware.clone(),
            ..old.clone()
        });
    }

    pub(crate) fn set_osv(&self, osv: Arc<OsvList>) {
        self.swap(|old| Policy {
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            osv: osv.clone(),
            ..old.clone()
        });
    }

    /// New signature rules (the mode at start, new keys from the keys job).
    pub(crate) fn set_signatures(&self, signatures: Signatures) {
        let signatures = Arc::new(signatures);
        self.swap(|old| Policy {
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            signatures: signatures.clone(),
            ..old.clone()
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
        let mut status = self.feed_status.lock().expect("feed status poisoned");
        update(&mut status);
        self.metrics.feed_updated(Feed::Malware, status.updated_at_ms);
    }

    pub(crate) fn osv_status(&self) -> FeedStatus {
        self.osv_status.lock().expect("OSV status poisoned").clone()
    }

    pub(crate) fn update_osv_status(&self, update: impl FnOnce(&mut FeedStatus)) {
        let mut status = self.osv_status.lock().expect("OSV status poisoned");
        update(&mut status);
        self.metrics.feed_updated(Feed::Osv, status.updated_at_ms);
    }

    /// Whether the blocklist in force is the file's (see `reload`).
    pub(crate) fn blocklist_status(&self) -> BlocklistStatus {
        self.blocklist_status.lock().expect("blocklist status poisoned").clone()
    }

    pub(crate) fn update_blocklist_status(&self, update: impl FnOnce(&mut BlocklistStatus)) {
        update(&mut self.blocklist_status.lock().expect("blocklist status poisoned"));
    }

    pub(crate) fn last_block(&self) -> Option<LastBlock> {
        self.last_block.lock().expect("last block poisoned").clone()
    }

    /// Whether `key` is logged for the first time under this policy.
    fn first_time(&self, key: String) -> bool {
        let mut logged = self.logged.lock().expect("guard log set poisoned");
        if logged.len() >= LOGGED_MAX {
            logged.clear();
        }
        logged.insert(key)
    }

    /// Counts each of `blocks` (a version, or `None` for the whole package, and why) in the
    /// metrics and logs it the first time it is seen under this policy; keeps the last as the
    /// last block (`private`: a package fetched with credentials), built once however many.
    pub(crate) fn record<'a>(
        &self,
        name: &str,
        blocks: impl IntoIterator<Item = (Option<&'a str>, &'a Block)>,
        private: bool,
    ) {
        let mut last = None;
        for (version, block) in blocks {
            self.metrics.guard_block(block.kind.as_str());
            if block.kind == Rule::Typosquat {
                self.metrics.typosquat_suspect(Action::Block.as_str());
            }
            let shown = version.unwrap_or("*");
            if self.first_time(format!("{name}@{shown}")) {
                let rule = block.kind.as_str();
                tracing::warn!(package = name, version = shown, rule, why = ?block.message(), "blocked");
            }
            last = Some((version, block));
        }
        if let Some((version, block)) = last {
            *self.last_block.lock().expect("last block poisoned") = Some(LastBlock {
                package: name.to_string(),
                version: version.map(str::to_string),
                rule: block.kind.as_str().to_string(),
                reason: block.message(),
                at_ms: crate::clock::now_ms(),
                private,
            });
        }
    }

    /// Counts a suspected typosquat served with a warning, and logs it once under this policy.
    pub(crate) fn warn_typosquat(&self, name: &str, suspect: &Suspect) {
        self.metrics.typosquat_suspect(Action::Warn.as_str());
        if self.first_time(format!("{name} typosquat")) {
            tracing::warn!(package = name, like = %suspect.like, how = suspect.how.words(), "possible typosquat served");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn facts(list: &[(&str, Option<u64>)]) -> Vec<VersionFacts> {
        let facts = |&(version, published): &(&str, Option<u64>)| VersionFacts {
            version: version.to_string(),
            published,
            install_script: false,
        };
        list.iter().map(facts).collect()
    }

    fn guard() -> Guard {
        let blocklist =
            Blocklist::parse("packages:\n  - name: p\n    versions: ['>=2.0.0']\n    reason: bad major\n").unwrap();
        let age = AgeGate::new(Duration::from_secs(3600), &["trusted".into()]).unwrap();
        Guard::new(blocklist, Some(age), None, None, Arc::new(Metrics::default()))
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
        let versions = facts(&[
            ("1.0.0", Some(0)),
            ("1.0.1", Some(0)),
            ("2.0.0", Some(0)),
            ("1.1.0", Some(now - 60_000)),
            ("1.2.0", None),
        ]);
        let verdict = g.policy().judge("p", &versions, now);
        assert_eq!(verdict.hidden.len(), 4);
        assert_eq!(verdict.hidden["1.0.1"].kind, Rule::Malware);
        assert_eq!(verdict.hidden["2.0.0"].kind, Rule::Version);
        assert_eq!(verdict.hidden["2.0.0"].version_spec.as_deref(), Some(">=2.0.0"));
        assert_eq!(verdict.hidden["1.1.0"].kind, Rule::Age);
        assert_eq!(verdict.hidden["1.2.0"].kind, Rule::Age, "unknown age stays hidden");
        assert_eq!(verdict.valid_until_ms, Some(now - 60_000 + 3_600_000));
        let exempt = g.policy().judge("trusted", &facts(&[("1.0.0", Some(now))]), now);
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
            g.record("p", [(Some("2.0.0"), &block)], false);
            g.record("p", [(Some("2.0.0"), &block)], false);
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
    fn every_block_is_counted_and_the_last_one_kept() {
        let g = guard();
        let (two, three) = (
            g.policy().version("p", "2.0.0").unwrap(),
            g.policy().version("p", "3.0.0").unwrap(),
        );
        assert_eq!(g.last_block(), None);
        g.record("p", [(Some("2.0.0"), &two), (Some("3.0.0"), &three)], true);
        let last = g.last_block().expect("kept");
        assert_eq!((last.package.as_str(), last.version.as_deref()), ("p", Some("3.0.0")));
        assert_eq!((last.rule.as_str(), last.private), ("version", true));
        assert_eq!(last.reason, "blocked by the blocklist (bad major)");
        assert_eq!(g.metrics.totals().blocks.get("version"), Some(&2));
        g.record("p", [], false);
        assert_eq!(g.last_block(), Some(last), "nothing recorded, nothing replaced");
    }

    fn with_typosquats(action: Action) -> Guard {
        let list = typosquat::Typosquats::parse("react\nlodash\n", "test").unwrap();
        let rule = TyposquatRule::new(action, list, &["lodahs".into()]).unwrap();
        Guard::new(
            Blocklist::default(),
            None,
            None,
            Some(rule),
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn typosquats_block_as_a_whole_package_only_when_set_to_block() {
        let blocking = with_typosquats(Action::Block);
        let block = blocking.policy().package("reactt").unwrap();
        assert_eq!(block.kind, Rule::Typosquat);
        assert_eq!(block.like.as_deref(), Some("react"));
        assert!(blocking.policy().package("react").is_none(), "the popular name itself");
        assert!(blocking.policy().package("lodahs").is_none(), "exempt");
        blocking.set_blocklist(Blocklist::default());
        assert!(blocking.policy().package("reactt").is_some(), "kept across a reload");
        let warning = with_typosquats(Action::Warn);
        assert!(warning.policy().package("reactt").is_none());
        let (suspect, action) = warning.policy().typosquat("reactt").unwrap();
        assert_eq!((suspect.like.as_str(), action), ("react", Action::Warn));
        let off = Guard::new(Blocklist::default(), None, None, None, Arc::new(Metrics::default()));
        assert!(off.policy().typosquat("reactt").is_none());
    }

    #[test]
    fn a_warned_typosquat_is_counted_each_time_and_logged_once() {
        let g = with_typosquats(Action::Warn);
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let (suspect, _) = g.policy().typosquat("reactt").unwrap();
        tracing::subscriber::with_default(subscriber, || {
            g.warn_typosquat("reactt", &suspect);
            g.warn_typosquat("reactt", &suspect);
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains(r#"possible typosquat served package="reactt" like=react how="one edit away""#),
            "{log}"
        );
        assert!(
            g.metrics
                .render()
                .contains(r#"npg_typosquat_suspects_total{action="warn"} 2"#),
            "{}",
            g.metrics.render()
        );
    }

    #[test]
    fn a_version_hidden_by_a_list_does_not_bound_the_rendering_by_its_age() {
        let g = guard();
        let now = 10 * 3_600_000;
        // 2.0.0 is blocked by the blocklist and young: the rendering holds, whatever its age.
        let verdict = g.policy().judge("p", &facts(&[("2.0.0", Some(now - 60_000))]), now);
        assert_eq!(verdict.hidden["2.0.0"].kind, Rule::Version);
        assert_eq!(verdict.valid_until_ms, None);
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

    #[test]
    fn osv_advisories_block_after_the_feed_and_name_themselves() {
        let g = guard();
        let feed = MalwareList::parse(
            br#"[{"package_name":"p","version":"1.0.1","reason":"MALWARE"}]"#,
            &["MALWARE".into()],
        )
        .unwrap();
        g.set_malware(Arc::new(feed));
        let records = br#"[
            {"id":"MAL-2025-1","summary":"Malicious code in p (npm)","affected":[{"package":{"ecosystem":"npm","name":"p"},"versions":["1.0.1","1.0.2"]}]},
            {"id":"MAL-2025-2","affected":[{"package":{"ecosystem":"npm","name":"q"}}]}
        ]"#;
        let before = g.version();
        g.set_osv(Arc::new(OsvList::parse_list(records, 0).unwrap()));
        assert!(g.version() > before);
        let policy = g.policy();
        let by_feed = policy.version("p", "1.0.1").unwrap();
        assert_eq!((by_feed.kind, by_feed.advisory.as_deref()), (Rule::Malware, None));
        let by_osv = policy.version("p", "1.0.2").unwrap();
        assert_eq!(by_osv.kind, Rule::Malware);
        assert_eq!(by_osv.advisory.as_deref(), Some("MAL-2025-1"));
        assert_eq!(
            by_osv.message(),
            "listed as malware by OpenSSF malicious-packages (OSV) (MAL-2025-1: Malicious code in p (npm))"
        );
        let json = serde_json::to_value(&by_osv).unwrap();
        assert_eq!(json["advisory"], "MAL-2025-1");
        assert_eq!(json["source"], "OpenSSF malicious-packages (OSV)");
        assert!(policy.version("p", "1.0.0").is_none());
        assert_eq!(policy.package("q").unwrap().reason, "MAL-2025-2");
        g.set_malware(Arc::default());
        assert!(
            g.policy().version("p", "1.0.2").is_some(),
            "a feed update keeps the advisories"
        );
    }
}
