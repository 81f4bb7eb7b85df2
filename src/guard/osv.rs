//! The OpenSSF malicious-packages data in OSV format (<https://ossf.github.io/osv-schema/>) as a
//! lookup table: the `MAL-` advisories of the npm ecosystem, each naming packages by exact
//! `versions` or by `SEMVER`/`ECOSYSTEM` ranges of `introduced`/`fixed`/`last_affected`/`limit`
//! events. `introduced: "0"` alone is every version; an entry with neither versions nor ranges
//! is taken as every version too (malicious-packages means the package, and a malware list
//! over-blocks). Withdrawn advisories are ignored. Ranges match like the blocklist's
//! (`blocklist::blocks`, prereleases included).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use nodejs_semver::{Range, Version};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::blocklist::blocks;
use crate::npm::packument::parse_time_ms;

/// Why a record or a list was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OsvError {
    #[error("not an OSV record: {0}")]
    NotARecord(serde_json::Error),
    #[error("not a JSON list of OSV records: {0}")]
    NotAList(serde_json::Error),
    #[error("{id}: `{version}` is not a semver version")]
    BadVersion { id: String, version: String },
}

#[derive(Deserialize)]
struct Record {
    id: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default)]
    affected: Vec<Affected>,
}

#[derive(Deserialize)]
struct Affected {
    #[serde(default)]
    package: Option<Package>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    ranges: Vec<RangeRecord>,
}

#[derive(Deserialize)]
struct Package {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct RangeRecord {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<Event>,
}

/// One event: OSV gives exactly one of these per object.
#[derive(Deserialize)]
struct Event {
    introduced: Option<String>,
    fixed: Option<String>,
    last_affected: Option<String>,
    limit: Option<String>,
}

/// An advisory, as a block names it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Advisory {
    /// `MAL-2025-1234`
    pub(crate) id: String,
    pub(crate) summary: Option<String>,
}

impl Advisory {
    /// `MAL-2025-1234: Malicious code in x (npm)`, or the id alone.
    pub(crate) fn reason(&self) -> String {
        match &self.summary {
            Some(summary) => format!("{}: {summary}", self.id),
            None => self.id.clone(),
        }
    }
}

/// What one advisory says of one package.
#[derive(Debug)]
struct Claim {
    advisory: Arc<Advisory>,
    every: bool,
    versions: HashSet<String>,
    ranges: Vec<Range>,
}

impl Claim {
    fn holds(&self, version: &str, parsed: Option<&Version>) -> bool {
        self.every
            || self.versions.contains(version)
            || parsed.is_some_and(|v| self.ranges.iter().any(|r| blocks(r, v)))
    }
}

/// What a record came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    /// A `MAL-` advisory naming npm packages: in the list.
    Yes,
    /// Withdrawn, not `MAL-`, or about no npm package.
    Ignored,
}

#[derive(Debug, Default)]
pub struct OsvList {
    packages: HashMap<String, Vec<Claim>>,
    advisories: usize,
}

impl OsvList {
    /// A JSON list of records (what `OSV_FEED_URL` serves). A record that is not one is logged
    /// and skipped: one bad advisory must not drop the others.
    pub(crate) fn parse_list(json: &[u8], now_ms: u64) -> Result<OsvList, OsvError> {
        let records: Vec<Box<RawValue>> = serde_json::from_slice(json).map_err(OsvError::NotAList)?;
        let mut list = OsvList::default();
        for record in records {
            if let Err(error) = list.add(record.get().as_bytes(), now_ms) {
                tracing::warn!(%error, "OSV record skipped");
            }
        }
        Ok(list)
    }

    /// Adds one record (a file of `OSV_FEED_DIR`), if it is a live npm `MAL-` advisory.
    pub(crate) fn add(&mut self, json: &[u8], now_ms: u64) -> Result<Kept, OsvError> {
        let record: Record = serde_json::from_slice(json).map_err(OsvError::NotARecord)?;
        // A withdrawal dated in the future has not happened yet.
        let withdrawn = record
            .withdrawn
            .as_deref()
            .is_some_and(|at| parse_time_ms(at).is_none_or(|at| at <= now_ms));
        if withdrawn || !record.id.starts_with("MAL-") {
            return Ok(Kept::Ignored);
        }
        let advisory = Arc::new(Advisory {
            id: record.id,
            summary: record.summary.filter(|s| !s.trim().is_empty()),
        });
        let mut claims = Vec::new();
        for affected in record.affected {
            let Some(package) = affected.package.filter(|p| p.ecosystem == "npm") else {
                continue;
            };
            let claim = claim(&advisory, affected.versions, &affected.ranges)?;
            claims.push((package.name, claim));
        }
        if claims.is_empty() {
            return Ok(Kept::Ignored);
        }
        for (name, claim) in claims {
            self.packages.entry(name).or_default().push(claim);
        }
        self.advisories += 1;
        Ok(Kept::Yes)
    }

    /// The claims on `name`; an empty list (the source off) costs no hashing on the hot path.
    fn claims(&self, name: &str) -> Option<&Vec<Claim>> {
        if self.packages.is_empty() {
            return None;
        }
        self.packages.get(name)
    }

    /// Advisories kept.
    pub(crate) fn len(&self) -> usize {
        self.advisories
    }

    /// The advisory that lists every version of `name`.
    pub(crate) fn whole_package(&self, name: &str) -> Option<&Advisory> {
        let claims = self.claims(name)?;
        claims.iter().find(|c| c.every).map(|c| &*c.advisory)
    }

    /// The advisory that lists `name@version` (exactly, by a range, or as a whole package).
    pub(crate) fn version(&self, name: &str, version: &str) -> Option<&Advisory> {
        let claims = self.claims(name)?;
        let parsed = Version::parse(version).ok();
        claims
            .iter()
            .find(|c| c.holds(version, parsed.as_ref()))
            .map(|c| &*c.advisory)
    }

    /// What this list names by advisories `older` does not have: exact versions, or `None`
    /// for a whole package or a range (its cached tarballs are all dropped; the allowed ones
    /// are fetched again).
    pub(crate) fn added_since(&self, older: &OsvList) -> Vec<(String, Option<String>)> {
        let mut added = Vec::new();
        for (name, claims) in &self.packages {
            let old: HashSet<&str> = older
                .packages
                .get(name)
                .into_iter()
                .flatten()
                .map(|c| c.advisory.id.as_str())
                .collect();
            for claim in claims.iter().filter(|c| !old.contains(c.advisory.id.as_str())) {
                if claim.every || !claim.ranges.is_empty() {
                    added.push((name.clone(), None));
                } else {
                    added.extend(claim.versions.iter().map(|v| (name.clone(), Some(v.clone()))));
                }
            }
        }
        added
    }
}

fn claim(advisory: &Arc<Advisory>, versions: Vec<String>, ranges: &[RangeRecord]) -> Result<Claim, OsvError> {
    let semver = ranges
        .iter()
        .filter(|r| matches!(r.kind.as_str(), "SEMVER" | "ECOSYSTEM"));
    let mut claim = Claim {
        advisory: advisory.clone(),
        every: versions.is_empty() && ranges.is_empty(),
        versions: versions.into_iter().collect(),
        ranges: Vec::new(),
    };
    for range in semver {
        for spec in specs(&advisory.id, &range.events)? {
            match spec {
                // `introduced: "0"` and no end.
                None => claim.every = true,
                Some(spec) => match Range::parse(&spec) {
                    Ok(range) => claim.ranges.push(range),
                    Err(_) => {
                        return Err(OsvError::BadVersion {
                            id: advisory.id.clone(),
                            version: spec,
                        });
                    }
                },
            }
        }
    }
    Ok(claim)
}

/// Where an event sits in semver order; `introduced: "0"` is below every version.
enum Bound {
    Zero,
    At(Version),
}

/// A range's events as node-semver ranges (`>=1.0.0 <1.0.3`); `None` for every version.
fn specs(id: &str, events: &[Event]) -> Result<Vec<Option<String>>, OsvError> {
    let bound = |v: &str| {
        if v == "0" {
            return Ok(Bound::Zero);
        }
        Version::parse(v).map(Bound::At).map_err(|_| OsvError::BadVersion {
            id: id.into(),
            version: v.into(),
        })
    };
    // (bound, the event's text, what it does: 0 opens, 1 closes after, 2 closes at).
    let mut sorted = Vec::new();
    for e in events {
        let (text, kind) = match (&e.introduced, &e.fixed, &e.last_affected, &e.limit) {
            (Some(v), ..) => (v, 0),
            (_, Some(v), ..) => (v, 2),
            (_, _, Some(v), _) => (v, 1),
            (_, _, _, Some(v)) if v != "*" => (v, 2),
            _ => continue,
        };
        sorted.push((bound(text)?, text.as_str(), kind));
    }
    sorted.sort_by(|a, b| match (&a.0, &b.0) {
        (Bound::Zero, Bound::Zero) => std::cmp::Ordering::Equal,
        (Bound::Zero, _) => std::cmp::Ordering::Less,
        (_, Bound::Zero) => std::cmp::Ordering::Greater,
        (Bound::At(x), Bound::At(y)) => x.cmp(y),
    });
    let mut specs = Vec::new();
    // The lower bound of the open interval: `Some("")` from "0".
    let mut open: Option<String> = None;
    for (at, text, kind) in sorted {
        match (kind, &open) {
            (0, None) => {
                open = Some(match at {
                    Bound::Zero => String::new(),
                    Bound::At(_) => format!(">={text}"),
                })
            }
            (0, Some(_)) => {}
            (_, None) => {}
            (end, Some(lower)) => {
                let upper = if end == 1 {
                    format!("<={text}")
                } else {
                    format!("<{text}")
                };
                specs.push(Some(format!("{lower} {upper}").trim().to_string()));
                open = None;
            }
        }
    }
    match open {
        Some(lower) if lower.is_empty() => specs.push(None),
        Some(lower) => specs.push(Some(lower)),
        None => {}
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000_000;

    fn record(id: &str, ecosystem: &str, name: &str, affected: serde_json::Value) -> serde_json::Value {
        let mut entry = serde_json::json!({"package": {"ecosystem": ecosystem, "name": name}});
        entry
            .as_object_mut()
            .unwrap()
            .extend(affected.as_object().unwrap().clone());
        serde_json::json!({
            "schema_version": "1.5.0",
            "id": id,
            "summary": format!("Malicious code in {name} ({ecosystem})"),
            "modified": "2025-01-01T00:00:00Z",
            "affected": [entry],
        })
    }

    fn semver(events: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"ranges": [{"type": "SEMVER", "events": events}]})
    }

    /// One record of each kind the list keeps or ignores.
    fn fixture() -> OsvList {
        let withdrawn = {
            let mut r = record("MAL-2025-5", "npm", "withdrawn-pkg", serde_json::json!({}));
            r["withdrawn"] = "2025-02-01T00:00:00Z".into();
            r
        };
        let records = serde_json::json!([
            record(
                "MAL-2025-1",
                "npm",
                "exact",
                serde_json::json!({"versions": ["1.0.1", "1.0.2"]})
            ),
            record(
                "MAL-2025-2",
                "npm",
                "ranged",
                semver(serde_json::json!([
                    {"introduced": "1.2.0"}, {"fixed": "1.2.5"}, {"introduced": "2.0.0"}, {"last_affected": "2.1.0"}
                ]))
            ),
            record(
                "MAL-2025-3",
                "npm",
                "whole",
                semver(serde_json::json!([{"introduced": "0"}]))
            ),
            record("MAL-2025-4", "npm", "@s/bare", serde_json::json!({})),
            withdrawn,
            record(
                "MAL-2025-6",
                "PyPI",
                "exact-py",
                serde_json::json!({"versions": ["1.0.1"]})
            ),
            record(
                "GHSA-xxxx-yyyy-zzzz",
                "npm",
                "not-mal",
                serde_json::json!({"versions": ["1.0.0"]})
            ),
            record(
                "MAL-2025-7",
                "npm",
                "open",
                semver(serde_json::json!([{"introduced": "3.0.0"}]))
            ),
            record(
                "MAL-2025-8",
                "npm",
                "below",
                semver(serde_json::json!([{"introduced": "0"}, {"fixed": "0.5.0"}]))
            ),
        ]);
        OsvList::parse_list(records.to_string().as_bytes(), NOW).unwrap()
    }

    fn id(list: &OsvList, name: &str, version: &str) -> Option<String> {
        list.version(name, version).map(|a| a.id.clone())
    }

    #[test]
    fn exact_versions() {
        let list = fixture();
        assert_eq!(id(&list, "exact", "1.0.1").as_deref(), Some("MAL-2025-1"));
        assert_eq!(id(&list, "exact", "1.0.2").as_deref(), Some("MAL-2025-1"));
        assert_eq!(id(&list, "exact", "1.0.0"), None);
        assert!(list.whole_package("exact").is_none());
        let advisory = list.version("exact", "1.0.1").unwrap();
        assert_eq!(advisory.reason(), "MAL-2025-1: Malicious code in exact (npm)");
    }

    #[test]
    fn ranges_with_fixed_and_last_affected() {
        let list = fixture();
        let hit = |v| id(&list, "ranged", v).is_some();
        assert!(!hit("1.1.9"));
        assert!(hit("1.2.0") && hit("1.2.4") && hit("1.2.5-beta.1"));
        assert!(!hit("1.2.5"), "fixed is not affected");
        assert!(!hit("1.9.0"));
        assert!(hit("2.0.0") && hit("2.1.0"), "last_affected is affected");
        assert!(!hit("2.1.1"));
        assert!(list.whole_package("ranged").is_none());
        assert!(id(&list, "open", "2.9.9").is_none());
        assert!(id(&list, "open", "3.0.0").is_some() && id(&list, "open", "99.0.0").is_some());
        assert!(id(&list, "below", "0.4.9").is_some() && id(&list, "below", "0.5.0").is_none());
        assert!(list.whole_package("below").is_none());
    }

    #[test]
    fn whole_packages() {
        let list = fixture();
        assert_eq!(list.whole_package("whole").map(|a| a.id.as_str()), Some("MAL-2025-3"));
        assert_eq!(id(&list, "whole", "0.0.1-alpha").as_deref(), Some("MAL-2025-3"));
        assert_eq!(
            list.whole_package("@s/bare").map(|a| a.id.as_str()),
            Some("MAL-2025-4"),
            "no versions nor ranges: the package"
        );
    }

    #[test]
    fn withdrawn_other_ecosystems_and_other_ids_are_ignored() {
        let list = fixture();
        assert_eq!(list.len(), 6);
        assert!(list.whole_package("withdrawn-pkg").is_none());
        assert!(id(&list, "exact-py", "1.0.1").is_none());
        assert!(id(&list, "not-mal", "1.0.0").is_none());
        let mut later = record("MAL-2025-9", "npm", "later", serde_json::json!({}));
        later["withdrawn"] = "2099-01-01T00:00:00Z".into();
        let mut list = OsvList::default();
        assert_eq!(
            list.add(later.to_string().as_bytes(), NOW).unwrap(),
            Kept::Yes,
            "not withdrawn yet"
        );
    }

    #[test]
    fn bad_input() {
        assert!(matches!(OsvList::parse_list(b"{}", NOW), Err(OsvError::NotAList(_))));
        let mut list = OsvList::default();
        assert!(matches!(list.add(b"[1", NOW), Err(OsvError::NotARecord(_))));
        let bad = record("MAL-1", "npm", "x", semver(serde_json::json!([{"introduced": "one"}])));
        let err = list.add(bad.to_string().as_bytes(), NOW).unwrap_err();
        assert_eq!(err.to_string(), "MAL-1: `one` is not a semver version");
        // In a list, a bad record is skipped and the others kept.
        let good = record("MAL-2", "npm", "y", serde_json::json!({}));
        let both = serde_json::json!([bad, good, 7]).to_string();
        let list = OsvList::parse_list(both.as_bytes(), NOW).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list.whole_package("y").is_some());
    }

    #[test]
    fn newly_added() {
        let list = fixture();
        let older = {
            let records = serde_json::json!([record(
                "MAL-2025-1",
                "npm",
                "exact",
                serde_json::json!({"versions": ["1.0.1"]})
            )]);
            OsvList::parse_list(records.to_string().as_bytes(), NOW).unwrap()
        };
        let mut added = list.added_since(&older);
        added.sort();
        let names: Vec<_> = added.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect();
        assert_eq!(
            names,
            [
                ("@s/bare", None),
                ("below", None),
                ("open", None),
                ("ranged", None),
                ("whole", None)
            ],
            "an advisory already known adds nothing"
        );
    }
}
