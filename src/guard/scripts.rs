//! Install-script quarantine: the worm pattern is a trusted package whose new version suddenly
//! runs code at install time (published with a stolen token). Such a version is hidden as the
//! age gate hides young ones.
//!
//! - `quarantine`: a version with install scripts is held unless the release before it (by
//!   semver, not by publication order) had them and was itself served. A chain of new
//!   versions that all add the script is thus held as a whole, not from its second member on.
//!   A package's first release has nothing to compare with and is not held (the malware feed,
//!   typosquat check and age gate are for new packages).
//! - `block-all`: every version with install scripts is held.
//! - `INSTALL_SCRIPT_ALLOW` exempts packages; `INSTALL_SCRIPT_QUARANTINE` lifts a hold once
//!   the version is that old (by its publication time; unknown time: held).

use std::time::Duration;

use nodejs_semver::Version;

use super::block::{Block, Rule};
use super::names::NameSet;
use crate::npm::packument::VersionFacts;

/// `INSTALL_SCRIPT_POLICY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScriptPolicy {
    Off,
    Quarantine,
    BlockAll,
}

#[derive(Debug)]
pub struct ScriptGate {
    policy: ScriptPolicy,
    allow: NameSet,
    lift_after_ms: Option<u64>,
}

impl ScriptGate {
    /// `None` when the policy is off.
    pub fn new(policy: ScriptPolicy, allow: NameSet, lift_after: Option<Duration>) -> Option<ScriptGate> {
        (policy != ScriptPolicy::Off).then(|| ScriptGate {
            policy,
            allow,
            lift_after_ms: lift_after.map(|d| d.as_millis() as u64),
        })
    }

    pub(crate) fn policy(&self) -> ScriptPolicy {
        self.policy
    }

    pub(crate) fn exempt(&self, name: &str) -> bool {
        self.allow.contains(name)
    }

    /// The versions held at `now_ms`, each with its block (and when it is lifted, if known).
    pub(crate) fn held<'a>(&self, versions: &'a [VersionFacts], now_ms: u64) -> Vec<(&'a str, Block)> {
        let mut ordered: Vec<(Version, &VersionFacts)> = versions
            .iter()
            .filter_map(|f| Some((Version::parse(&f.version).ok()?, f)))
            .collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        let mut held = Vec::new();
        // The previous release, and whether it ran install scripts while served.
        let mut previous: Option<(&str, bool)> = None;
        for (_, facts) in ordered {
            let reason = match (self.policy, previous) {
                (_, _) if !facts.install_script => None,
                (ScriptPolicy::BlockAll, _) => Some("has install scripts".to_string()),
                (_, Some((prev, false))) => Some(format!("adds install scripts that {prev} did not run")),
                _ => None,
            };
            let hold = reason.and_then(|reason| {
                let until = self
                    .lift_after_ms
                    .zip(facts.published)
                    .map(|(d, p)| p.saturating_add(d));
                let lifted = until.is_some_and(|until| until <= now_ms);
                (!lifted).then(|| Block {
                    until,
                    ..Block::new(Rule::InstallScript, reason)
                })
            });
            previous = Some((&facts.version, facts.install_script && hold.is_none()));
            if let Some(block) = hold {
                held.push((facts.version.as_str(), block));
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn facts(list: &[(&str, bool, u64)]) -> Vec<VersionFacts> {
        let facts = |&(v, script, day): &(&str, bool, u64)| VersionFacts {
            version: v.to_string(),
            published: Some(day * DAY),
            install_script: script,
        };
        list.iter().map(facts).collect()
    }

    fn held(gate: &ScriptGate, versions: &[VersionFacts], now: u64) -> Vec<String> {
        let mut v: Vec<String> = gate
            .held(versions, now)
            .into_iter()
            .map(|(v, _)| v.to_string())
            .collect();
        v.sort();
        v
    }

    fn gate(policy: ScriptPolicy, lift: Option<u64>) -> ScriptGate {
        let allow = NameSet::parse(&["esbuild".into()], "INSTALL_SCRIPT_ALLOW").unwrap();
        ScriptGate::new(policy, allow, lift.map(|d| Duration::from_millis(d * DAY))).unwrap()
    }

    #[test]
    fn quarantine_holds_script_adders_by_semver_order_and_their_followers() {
        let g = gate(ScriptPolicy::Quarantine, None);
        // 1.0.2 was published before 1.1.0 but follows 1.0.1 by semver; 2.0.0 keeps the
        // script 1.1.0 added, so it is held too; 0.9.0, the first release, is not held.
        let versions = facts(&[
            ("0.9.0", true, 1),
            ("1.0.0", false, 2),
            ("1.1.0", true, 5),
            ("1.0.1", false, 3),
            ("1.0.2", true, 4),
            ("2.0.0", true, 6),
            ("2.0.1", false, 7),
        ]);
        assert_eq!(held(&g, &versions, 10 * DAY), ["1.0.2", "1.1.0", "2.0.0"]);
        let blocks = g.held(&versions, 10 * DAY);
        let b = &blocks.iter().find(|(v, _)| *v == "1.0.2").unwrap().1;
        assert_eq!(b.kind, Rule::InstallScript);
        assert_eq!(b.reason, "adds install scripts that 1.0.1 did not run");
        assert_eq!(b.until, None);
    }

    #[test]
    fn a_package_that_always_ran_scripts_is_not_held() {
        let g = gate(ScriptPolicy::Quarantine, None);
        let versions = facts(&[("1.0.0", true, 1), ("1.0.1", true, 2), ("2.0.0-rc.1", true, 3)]);
        assert!(held(&g, &versions, 10 * DAY).is_empty());
    }

    #[test]
    fn block_all_holds_every_script_version() {
        let g = gate(ScriptPolicy::BlockAll, None);
        let versions = facts(&[("1.0.0", true, 1), ("1.0.1", false, 2), ("1.0.2", true, 3)]);
        assert_eq!(held(&g, &versions, 10 * DAY), ["1.0.0", "1.0.2"]);
        assert!(g.exempt("esbuild"));
        assert!(!g.exempt("esbuild-wasm"));
        assert!(ScriptGate::new(ScriptPolicy::Off, NameSet::default(), None).is_none());
    }

    #[test]
    fn holds_lift_with_age_and_the_chain_resumes() {
        let g = gate(ScriptPolicy::Quarantine, Some(14));
        let versions = facts(&[("1.0.0", false, 1), ("1.1.0", true, 2), ("1.2.0", true, 20)]);
        // Day 10: both held; 1.1.0 until day 16.
        let blocks = g.held(&versions, 10 * DAY);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].1.until, Some(16 * DAY));
        // Day 17: 1.1.0 is lifted and 1.2.0 follows a served script version.
        assert!(held(&g, &versions, 17 * DAY).is_empty());
        let unknown = [VersionFacts {
            published: None,
            ..versions[1].clone()
        }];
        let with_prev = [versions[0].clone(), unknown[0].clone()];
        assert_eq!(held(&g, &with_prev, 1000 * DAY), ["1.1.0"], "unknown age stays held");
    }
}
