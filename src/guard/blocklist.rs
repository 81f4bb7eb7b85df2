//! The blocklist file, in the Node NPG's `blacklist.yml` format:
//!
//! ```yaml
//! packages:
//!   - name: event-stream
//!     versions: ["3.3.6"]           # exact versions or node-semver ranges; none = every version
//!     reason: flatmap-stream backdoor
//! patterns:
//!   - pattern: "^evil-"             # a regex on the name (linear time: no ReDoS)
//!     reason: typosquats
//! ```
//!
//! Ranges match prereleases too (see `blocks`): node-semver skips them unless asked, so
//! `versions: ["*"]` would let a hijacked `9.9.9-0` through. A blocklist over-blocks.

use std::collections::HashMap;
use std::path::Path;

use anyhow::anyhow;
use nodejs_semver::{Range, Version};
use regex::{Regex, RegexSet};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    packages: Vec<PackageRule>,
    #[serde(default)]
    patterns: Vec<PatternRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageRule {
    name: String,
    #[serde(default)]
    versions: Option<OneOrMany>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternRule {
    pattern: String,
    #[serde(default)]
    reason: Option<String>,
}

/// One version rule: an exact version or a range, with the text it was written as.
#[derive(Debug)]
struct VersionRule {
    spec: String,
    range: Option<Range>,
}

#[derive(Debug)]
enum PackageBlock {
    All(String),
    Versions(Vec<VersionRule>, String),
}

/// A matched rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hit {
    /// The whole package, by name.
    Package { reason: String },
    /// The name matched a pattern.
    Pattern { pattern: String, reason: String },
    /// A version matched a version rule.
    Version { spec: String, reason: String },
}

#[derive(Debug, Default)]
pub struct Blocklist {
    packages: HashMap<String, Vec<PackageBlock>>,
    patterns: Option<RegexSet>,
    pattern_rules: Vec<(String, String)>,
    rules: usize,
}

impl Blocklist {
    /// Reads the file; a missing file is an empty blocklist, a bad one an error with its line.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Blocklist> {
        Blocklist::read(path).map(Option::unwrap_or_default)
    }

    /// Reads the file: `None` when there is none (a reload tells that from an empty list).
    pub(crate) fn read(path: &Path) -> anyhow::Result<Option<Blocklist>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Blocklist::parse(&text)
                .map(Some)
                .map_err(|e| anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("{}: {e}", path.display())),
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Blocklist> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str::<Option<File>>(text)
                .map_err(|e| match e.location() {
                    Some(l) => anyhow!("line {}: {e}", l.line()),
                    None => anyhow!(e),
                })?
                .unwrap_or_default()
        };
        let mut list = Blocklist::default();
        for rule in file.packages {
            let default_reason = if rule.versions.is_some() {
                "Package version is blacklisted"
            } else {
                "Package is blacklisted"
            };
            let reason = rule.reason.unwrap_or_else(|| default_reason.into());
            let block = match rule.versions {
                None => PackageBlock::All(reason),
                Some(versions) => {
                    let specs = match versions {
                        OneOrMany::One(s) => vec![s],
                        OneOrMany::Many(v) => v,
                    };
                    let rules = specs
                        .into_iter()
                        .map(|spec| version_rule(&rule.name, spec))
                        .collect::<Result<_, _>>()?;
                    PackageBlock::Versions(rules, reason)
                }
            };
            list.packages.entry(rule.name).or_default().push(block);
            list.rules += 1;
        }
        for rule in file.patterns {
            Regex::new(&rule.pattern).map_err(|e| anyhow!("pattern `{}`: {e}", rule.pattern))?;
            let reason = rule
                .reason
                .unwrap_or_else(|| "Package name matches blacklisted pattern".into());
            list.pattern_rules.push((rule.pattern, reason));
            list.rules += 1;
        }
        if !list.pattern_rules.is_empty() {
            let set = RegexSet::new(list.pattern_rules.iter().map(|(p, _)| p)).map_err(|e| anyhow!("patterns: {e}"))?;
            list.patterns = Some(set);
        }
        Ok(list)
    }

    /// Rules in the file.
    pub(crate) fn len(&self) -> usize {
        self.rules
    }

    /// A rule that blocks every version of `name`.
    pub fn whole_package(&self, name: &str) -> Option<Hit> {
        let by_name = self.packages.get(name).into_iter().flatten().find_map(|b| match b {
            PackageBlock::All(reason) => Some(Hit::Package { reason: reason.clone() }),
            PackageBlock::Versions(..) => None,
        });
        by_name.or_else(|| {
            // `is_match` first: it allocates nothing, and almost every name matches no pattern.
            let set = self.patterns.as_ref().filter(|set| set.is_match(name))?;
            let first = set.matches(name).into_iter().next()?;
            let (pattern, reason) = &self.pattern_rules[first];
            Some(Hit::Pattern {
                pattern: pattern.clone(),
                reason: reason.clone(),
            })
        })
    }

    /// A version rule that blocks `name@version` (whole-package rules are `whole_package`'s).
    pub fn version(&self, name: &str, version: &str) -> Option<Hit> {
        let entries = self.packages.get(name)?;
        let parsed = Version::parse(version).ok();
        entries.iter().find_map(|b| match b {
            PackageBlock::All(_) => None,
            PackageBlock::Versions(rules, reason) => rules
                .iter()
                .find(|r| {
                    r.spec == version || matches!((&r.range, &parsed), (Some(range), Some(v)) if blocks(range, v))
                })
                .map(|r| Hit::Version {
                    spec: r.spec.clone(),
                    reason: reason.clone(),
                }),
        })
    }
}

/// Whether `range` blocks `version`, prereleases included: one is blocked when the range holds
/// it in semver order (node-semver's `includePrerelease`, so `*` and `>=1.0.0` hold `2.0.0-beta`)
/// or holds its release (`2.x` holds `2.0.0-alpha`, `1.2.3` holds `1.2.3-rc.1`, where node-semver
/// would lower the bound to `2.0.0-0` or hold no prerelease at all).
pub(crate) fn blocks(range: &Range, version: &Version) -> bool {
    if range.satisfies_with_prerelease(version, true) {
        return true;
    }
    let release = Version::new(version.major(), version.minor(), version.patch(), vec![], vec![]);
    version.is_prerelease() && range.satisfies(&release)
}

fn version_rule(name: &str, spec: String) -> anyhow::Result<VersionRule> {
    let range = Range::parse(&spec).ok();
    if range.is_none() && Version::parse(&spec).is_err() {
        return Err(anyhow!(
            "package `{name}`: `{spec}` is neither a version nor a node-semver range"
        ));
    }
    Ok(VersionRule { spec, range })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
packages:
  - name: event-stream
    versions: ["3.3.6"]
    reason: flatmap-stream backdoor
  - name: ua-parser-js
    versions: [">=0.7.29 <0.7.30", "^0.8.0 || ^1.0.0"]
    reason: hijacked
  - name: colors
    versions: ["1.4.44 - 1.4.46", "2.x"]
  - name: node-ipc
    versions: "*"
  - name: left-pad
    reason: gone
  - name: pre
    versions: [">=2.0.0-beta.1 <2.0.0"]
patterns:
  - pattern: "^evil-"
    reason: typosquats
  - pattern: "crypto-?miner"
"#;

    fn list() -> Blocklist {
        Blocklist::parse(FILE).unwrap()
    }

    fn blocked(name: &str, version: &str) -> bool {
        list().version(name, version).is_some()
    }

    #[test]
    fn exact_versions_and_ranges() {
        assert!(blocked("event-stream", "3.3.6"));
        assert!(!blocked("event-stream", "3.3.5"));
        assert!(blocked("ua-parser-js", "0.7.29"));
        assert!(!blocked("ua-parser-js", "0.7.30"));
        assert!(blocked("ua-parser-js", "0.8.3"));
        assert!(blocked("ua-parser-js", "1.9.0"));
        assert!(!blocked("ua-parser-js", "2.0.0"));
        assert!(blocked("colors", "1.4.45"));
        assert!(blocked("colors", "1.4.46"));
        assert!(!blocked("colors", "1.4.47"));
        assert!(blocked("colors", "2.7.1"));
        assert!(!blocked("colors", "3.0.0"));
        assert!(blocked("node-ipc", "10.1.1"));
    }

    #[test]
    fn ranges_match_prereleases() {
        // Held in semver order: node-semver's includePrerelease.
        assert!(blocked("pre", "2.0.0-beta.2"));
        assert!(!blocked("pre", "2.0.0-alpha"), "before the range's lower bound");
        assert!(blocked("node-ipc", "9.9.9-0"), "* holds every prerelease");
        assert!(blocked("node-ipc", "0.0.0-0"));
        assert!(blocked("ua-parser-js", "1.0.1-rc.1"), "^1.0.0 holds 1.0.1-rc.1");
        assert!(blocked("ua-parser-js", "0.7.29-1"), "below 0.7.30");
        // Held through its release: a prerelease of a blocked version is blocked.
        assert!(blocked("colors", "2.0.0-alpha"), "2.x holds 2.0.0, so 2.0.0-alpha");
        assert!(blocked("event-stream", "3.3.6-0"));
        assert!(blocked("colors", "1.4.44-rc.1"));
        // Neither: the range's upper bound excludes the release and the prerelease.
        assert!(!blocked("ua-parser-js", "2.0.0-beta"), "^1.0.0 stops below 2.0.0-0");
        assert!(!blocked("colors", "3.0.0-0"));
        assert!(!blocked("colors", "1.4.47-0"));
        assert!(!blocked("event-stream", "3.3.7-0"));
    }

    #[test]
    fn lower_bounds_match_later_prereleases() {
        let l = Blocklist::parse("packages:\n  - name: p\n    versions: [\">=1.0.0\", \">3\"]\n").unwrap();
        for v in ["2.0.0-beta", "1.0.0-beta", "4.0.0-0", "1.0.0"] {
            assert!(l.version("p", v).is_some(), "{v}");
        }
        let only_above_3 = Blocklist::parse("packages:\n  - name: p\n    versions: \">3\"\n").unwrap();
        for v in ["3.0.1-0", "3.9.9", "0.9.9-0"] {
            assert!(only_above_3.version("p", v).is_none(), "{v}");
        }
    }

    #[test]
    fn whole_packages_and_patterns() {
        let l = list();
        assert_eq!(
            l.whole_package("left-pad"),
            Some(Hit::Package { reason: "gone".into() })
        );
        assert_eq!(
            l.whole_package("evil-lodash"),
            Some(Hit::Pattern {
                pattern: "^evil-".into(),
                reason: "typosquats".into()
            })
        );
        assert!(matches!(l.whole_package("my-cryptominer"), Some(Hit::Pattern { .. })));
        assert_eq!(l.whole_package("lodash-evil"), None);
        assert_eq!(
            l.whole_package("event-stream"),
            None,
            "version rules do not block the package"
        );
        assert_eq!(l.len(), 8);
    }

    #[test]
    fn errors_name_the_line() {
        let err = Blocklist::parse("packages:\n  - name: x\n    versions: [\"not a range!\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a range!"), "{err}");
        let err = Blocklist::parse("packages:\n  - nme: x\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Blocklist::parse("patterns:\n  - pattern: \"(\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pattern"), "{err}");
        assert_eq!(Blocklist::parse("").unwrap().len(), 0);
        assert_eq!(Blocklist::parse("# nothing\n").unwrap().len(), 0);
    }

    #[test]
    fn missing_file_is_empty() {
        let l = Blocklist::load(Path::new("/nonexistent/blacklist.yml")).unwrap();
        assert_eq!(l.len(), 0);
    }
}
