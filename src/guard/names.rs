//! A set of package names written as settings are (`MIN_RELEASE_AGE_EXCLUDE`,
//! `TYPOSQUAT_ALLOW`): names, or patterns written as `/regex/`.

use std::collections::HashSet;

use anyhow::anyhow;
use regex::RegexSet;

#[derive(Debug, Default)]
pub(crate) struct NameSet {
    names: HashSet<String>,
    patterns: Option<RegexSet>,
}

impl NameSet {
    /// `items` as a setting gives them (blank ones ignored); `setting` names it in errors.
    pub(crate) fn parse(items: &[String], setting: &str) -> anyhow::Result<NameSet> {
        let mut names = HashSet::new();
        let mut patterns = Vec::new();
        for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            match item.strip_prefix('/').and_then(|p| p.strip_suffix('/')) {
                Some(pattern) => patterns.push(pattern.to_string()),
                None => {
                    names.insert(item.to_string());
                }
            }
        }
        let patterns = match patterns.is_empty() {
            true => None,
            false => Some(RegexSet::new(&patterns).map_err(|e| anyhow!("{setting}: {e}"))?),
        };
        Ok(NameSet { names, patterns })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.names.contains(name) || self.patterns.as_ref().is_some_and(|s| s.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        let set = NameSet::parse(&["react".into(), "/^@myorg\\//".into(), " ".into()], "X").unwrap();
        assert!(set.contains("react"));
        assert!(set.contains("@myorg/tool"));
        assert!(!set.contains("react-dom"));
        assert!(!set.contains(""), "a blank item names nothing");
        let err = NameSet::parse(&["/(/".into()], "TYPOSQUAT_ALLOW").unwrap_err();
        assert!(err.to_string().starts_with("TYPOSQUAT_ALLOW: "), "{err}");
    }
}
