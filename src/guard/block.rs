//! Why the guard refuses or hides something, and how that is told to people: one sentence
//! naming the rule ("blocked by the blocklist (reason)", "listed as malware by <feed>",
//! "held by the release-age gate until <date>", "a possible typosquat (looks like react, one
//! edit away)") and a short form for the HTTP status line.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use super::typosquat::Suspect;

/// The rule that hid a version; serialized as the Node NPG's `type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Rule {
    /// The blocklist names the whole package.
    Package,
    /// A blocklist pattern matches the name.
    Pattern,
    /// The malware feed lists the package or version.
    Malware,
    /// A blocklist version rule matches.
    Version,
    /// The release-age gate holds the version.
    Age,
    /// The install-script policy holds the version.
    #[serde(rename = "install-script")]
    InstallScript,
    /// The name looks like a popular one (TYPOSQUAT_POLICY=block).
    Typosquat,
    /// SIGNATURE_POLICY refuses its registry signature.
    Signature,
}

impl Rule {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rule::Package => "package",
            Rule::Pattern => "pattern",
            Rule::Malware => "malware",
            Rule::Version => "version",
            Rule::Age => "age",
            Rule::InstallScript => "install-script",
            Rule::Typosquat => "typosquat",
            Rule::Signature => "signature",
        }
    }
}

/// Where the malware list came from: the feed's host, as people know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct FeedSource(String);

impl FeedSource {
    pub(crate) fn of(url: &url::Url) -> FeedSource {
        FeedSource(url.host_str().unwrap_or("the malware feed").to_string())
    }
}

impl FeedSource {
    /// The OSV source (`OSV_FEED_URL` / `OSV_FEED_DIR`), named for its publisher whatever the
    /// mirror it is read from.
    pub(crate) fn osv() -> FeedSource {
        FeedSource("OpenSSF malicious-packages (OSV)".into())
    }
}

impl Default for FeedSource {
    fn default() -> FeedSource {
        FeedSource("the malware feed".into())
    }
}

impl std::fmt::Display for FeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a package or version is refused or hidden (the Node NPG's fields, plus the feed that
/// listed it and the end of an age hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub(crate) kind: Rule,
    pub(crate) reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pattern: Option<String>,
    #[serde(rename = "versionSpec", skip_serializing_if = "Option::is_none")]
    pub(crate) version_spec: Option<String>,
    /// The malware feed that lists it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<FeedSource>,
    /// The advisory that lists it (`MAL-2025-1234`), when the source has ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) advisory: Option<String>,
    /// When the release-age gate lets it through (unix ms; RFC 3339 on the wire); none when
    /// its publication time is unknown.
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub(crate) until: Option<u64>,
    /// The popular name a suspected typosquat looks like.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) like: Option<String>,
}

impl Block {
    pub(crate) fn new(kind: Rule, reason: impl Into<String>) -> Block {
        Block {
            kind,
            reason: reason.into(),
            pattern: None,
            version_spec: None,
            source: None,
            advisory: None,
            until: None,
            like: None,
        }
    }

    /// A version the release-age gate holds: published at `published` (unix ms, if known),
    /// visible from `until`.
    pub(crate) fn age(published: Option<u64>, until: Option<u64>, min_age: Duration) -> Block {
        let published = match published {
            Some(p) => format!("published {}", format_ms(p)),
            None => "publication time unknown".into(),
        };
        Block {
            until,
            ..Block::new(
                Rule::Age,
                format!("{published}, minimum age {}", human_duration(min_age)),
            )
        }
    }

    /// A name refused as a suspected typosquat of `suspect.like`.
    pub(crate) fn typosquat(suspect: &Suspect) -> Block {
        Block {
            like: Some(suspect.like.clone()),
            ..Block::new(Rule::Typosquat, suspect.reason())
        }
    }

    /// The rule in one sentence: "blocked by the blocklist (unmaintained)".
    pub(crate) fn message(&self) -> String {
        let reason = &self.reason;
        match self.kind {
            Rule::Package | Rule::Version => format!("blocked by the blocklist ({reason})"),
            Rule::Pattern => {
                let pattern = self.pattern.as_deref().unwrap_or_default();
                format!("blocked by the blocklist pattern {pattern} ({reason})")
            }
            Rule::Malware => {
                let source = self.source.clone().unwrap_or_default();
                format!("listed as malware by {source} ({reason})")
            }
            Rule::Age => match self.until {
                Some(until) => format!("held by the release-age gate until {} ({reason})", format_ms(until)),
                None => format!("held by the release-age gate ({reason})"),
            },
            Rule::InstallScript => match self.until {
                Some(until) => format!(
                    "held by the install-script policy until {} ({reason})",
                    format_ms(until)
                ),
                None => format!("held by the install-script policy ({reason})"),
            },
            Rule::Typosquat => format!("a possible typosquat ({reason})"),
            Rule::Signature => format!("refused by the signature policy ({reason})"),
        }
    }

    /// The status line's short form: `Blocked: chalk@5.6.2 (compromised release)`.
    pub(crate) fn phrase(&self, subject: &str) -> String {
        let reason = &self.reason;
        match self.kind {
            Rule::Package | Rule::Version => format!("Blocked: {subject} ({reason})"),
            Rule::Pattern => {
                let pattern = self.pattern.as_deref().unwrap_or_default();
                format!("Blocked: {subject} (pattern {pattern}: {reason})")
            }
            Rule::Malware => {
                let source = self.source.clone().unwrap_or_default();
                format!("Blocked: {subject} (malware per {source}: {reason})")
            }
            Rule::Age => match self.until {
                Some(until) => format!("Held: {subject} (release-age gate until {})", format_ms(until)),
                None => format!("Held: {subject} (release-age gate, publication time unknown)"),
            },
            Rule::InstallScript => format!("Held: {subject} (install-script policy: {reason})"),
            Rule::Typosquat => format!("Blocked: {subject} (possible typosquat: {reason})"),
            Rule::Signature => format!("Blocked: {subject} ({reason})"),
        }
    }
}

/// Unix ms as RFC 3339 to the second (`2025-09-08T13:00:00Z`).
pub(crate) fn format_ms(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn rfc3339<S: Serializer>(until: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match until {
        Some(ms) => s.serialize_str(&format_ms(*ms)),
        None => s.serialize_none(),
    }
}

/// A duration as people write it: the largest whole unit ("3650 days", "12 hours",
/// "90 minutes"), never humantime's "9years 11months 27days 21h 50m 24s".
pub(crate) fn human_duration(d: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")];
    let secs = d.as_secs();
    if secs == 0 && d.subsec_millis() > 0 {
        return format!("{} ms", d.subsec_millis());
    }
    let (size, unit) = UNITS
        .into_iter()
        .find(|(size, _)| secs.is_multiple_of(*size) && secs >= *size)
        .unwrap_or((1, "second"));
    let n = secs / size;
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::typosquat::Similarity;

    #[test]
    fn durations_as_people_write_them() {
        let d = |s: &str| human_duration(humantime::parse_duration(s).unwrap());
        assert_eq!(d("3650d"), "3650 days");
        assert_eq!(d("3d"), "3 days");
        assert_eq!(d("1d"), "1 day");
        assert_eq!(d("2w"), "14 days");
        assert_eq!(d("36h"), "36 hours");
        assert_eq!(d("12h"), "12 hours");
        assert_eq!(d("90m"), "90 minutes");
        assert_eq!(d("1h 30m"), "90 minutes");
        assert_eq!(d("61s"), "61 seconds");
        assert_eq!(d("0s"), "0 seconds");
        assert_eq!(d("250ms"), "250 ms");
    }

    #[test]
    fn each_rule_says_its_name() {
        let mut b = Block::new(Rule::Version, "compromised release");
        assert_eq!(b.message(), "blocked by the blocklist (compromised release)");
        assert_eq!(b.phrase("chalk@5.6.2"), "Blocked: chalk@5.6.2 (compromised release)");
        b.kind = Rule::Pattern;
        b.pattern = Some("^evil-".into());
        assert_eq!(
            b.message(),
            "blocked by the blocklist pattern ^evil- (compromised release)"
        );
        let mut m = Block::new(Rule::Malware, "MALWARE");
        m.source = Some(FeedSource::of(&"https://feed.example/list.json".parse().unwrap()));
        assert_eq!(m.message(), "listed as malware by feed.example (MALWARE)");
        let age = Block::age(Some(0), Some(3 * 86_400_000), Duration::from_secs(3 * 86_400));
        assert_eq!(
            age.message(),
            "held by the release-age gate until 1970-01-04T00:00:00Z \
             (published 1970-01-01T00:00:00Z, minimum age 3 days)"
        );
        let json = serde_json::to_value(&age).unwrap();
        assert_eq!(json["type"], "age");
        assert_eq!(json["until"], "1970-01-04T00:00:00Z");
        let script = Block::new(Rule::InstallScript, "adds install scripts that 1.0.0 did not run");
        assert_eq!(
            script.message(),
            "held by the install-script policy (adds install scripts that 1.0.0 did not run)"
        );
        assert_eq!(
            script.phrase("p@1.0.1"),
            "Held: p@1.0.1 (install-script policy: adds install scripts that 1.0.0 did not run)"
        );
        assert_eq!(serde_json::to_value(&script).unwrap()["type"], "install-script");
        let signature = Block::new(Rule::Signature, "no registry signature");
        assert_eq!(
            signature.message(),
            "refused by the signature policy (no registry signature)"
        );
        assert_eq!(signature.phrase("p@1.0.0"), "Blocked: p@1.0.0 (no registry signature)");
        let unknown = Block::age(None, None, Duration::from_secs(3600));
        assert_eq!(
            unknown.message(),
            "held by the release-age gate (publication time unknown, minimum age 1 hour)"
        );
        let squat = Block::typosquat(&Suspect {
            like: "react".into(),
            how: Similarity::Edit,
        });
        assert_eq!(
            squat.message(),
            "a possible typosquat (looks like react, one edit away)"
        );
        assert_eq!(
            squat.phrase("reactt"),
            "Blocked: reactt (possible typosquat: looks like react, one edit away)"
        );
        let json = serde_json::to_value(&squat).unwrap();
        assert_eq!(json["type"], "typosquat");
        assert_eq!(json["like"], "react");
    }
}
