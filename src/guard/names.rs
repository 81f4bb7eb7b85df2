//! Sets of package names as operators write them in settings: names, or patterns written as
//! `/regex/` (`react,/^@myorg\//`). Used by every rule that exempts packages.

use std::collections::HashSet;

use anyhow::Context;
use regex::RegexSet;

#[derive(Debug, Default)]
pub struct NameSet {
    names: HashSet<String>,
    patterns: Option<RegexSet>,
}

impl NameSet {
    /// `items` as given (blank ones ignored); `setting` names the setting in errors.
    pub fn parse(items: &[String], setting: &str) -> anyhow::Result<NameSet> {
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
            false => Some(RegexSet::new(&patterns).with_context(|| format!("{setting}: bad pattern"))?),
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
        assert!(!NameSet::default().contains("react"));
        let err = NameSet::parse(&["/(/".into()], "MIN_RELEASE_AGE_EXCLUDE").unwrap_err();
        assert!(format!("{err:#}").contains("MIN_RELEASE_AGE_EXCLUDE"), "{err:#}");
    }
}
