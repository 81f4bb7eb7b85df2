//! Package names by npm's rules (those that even old packages follow: legacy names with
//! capitals stay readable), and their forms in URLs and on disk.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageName(String);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("package name is empty")]
    Empty,
    #[error("package name is longer than 214 characters")]
    TooLong,
    #[error("package name must not start with a dot or an underscore")]
    LeadingDotOrUnderscore,
    #[error("package name must not contain `..`")]
    DotDot,
    #[error("package name contains a character that is not URL-safe")]
    NotUrlSafe,
    #[error("scoped package name must look like @scope/name")]
    BadScope,
    #[error("`{0}` is a reserved name")]
    Reserved(String),
}

/// Characters JavaScript's `encodeURIComponent` leaves alone: npm's "URL-safe".
fn url_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c)
}

fn check_part(part: &str) -> Result<(), NameError> {
    if part.is_empty() {
        return Err(NameError::BadScope);
    }
    if part.starts_with('.') || part.starts_with('_') {
        return Err(NameError::LeadingDotOrUnderscore);
    }
    if part.contains("..") {
        return Err(NameError::DotDot);
    }
    if !part.chars().all(url_safe) {
        return Err(NameError::NotUrlSafe);
    }
    Ok(())
}

impl PackageName {
    /// Validates a decoded name such as `left-pad` or `@babel/core`.
    pub fn parse(name: &str) -> Result<PackageName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > 214 {
            return Err(NameError::TooLong);
        }
        if let Some(scoped) = name.strip_prefix('@') {
            let (scope, rest) = scoped.split_once('/').ok_or(NameError::BadScope)?;
            check_part(scope)?;
            check_part(rest)?;
        } else {
            check_part(name)?;
            if matches!(name.to_ascii_lowercase().as_str(), "node_modules" | "favicon.ico") {
                return Err(NameError::Reserved(name.into()));
            }
        }
        Ok(PackageName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the scope: `core` for `@babel/core`; tarballs are named after it.
    pub fn unscoped(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The name as one URL path segment, as npm sends it: `@babel%2fcore`.
    pub fn url_segment(&self) -> String {
        self.0.replacen('/', "%2f", 1)
    }

    /// The cache shard of the Node NPG layout: the first two characters, lowercased.
    pub fn shard(&self) -> String {
        self.0.chars().take(2).collect::<String>().to_lowercase()
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for n in [
            "left-pad",
            "@babel/core",
            "JSONStream",
            "lodash.merge",
            "a",
            "@s/n-1.x",
            "ab~c!",
        ] {
            assert!(PackageName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn invalid_names() {
        let cases = [
            ("", NameError::Empty),
            (".hidden", NameError::LeadingDotOrUnderscore),
            ("_private", NameError::LeadingDotOrUnderscore),
            ("..", NameError::LeadingDotOrUnderscore),
            ("a..b", NameError::DotDot),
            ("a/b", NameError::NotUrlSafe),
            ("a b", NameError::NotUrlSafe),
            ("a%2e", NameError::NotUrlSafe),
            ("a\\b", NameError::NotUrlSafe),
            ("@scope", NameError::BadScope),
            ("@/x", NameError::BadScope),
            ("@s/", NameError::BadScope),
            ("@s/../x", NameError::LeadingDotOrUnderscore),
            ("@s/a/b", NameError::NotUrlSafe),
            ("@../x", NameError::LeadingDotOrUnderscore),
            ("node_modules", NameError::Reserved("node_modules".into())),
            ("naïve", NameError::NotUrlSafe),
        ];
        for (n, e) in cases {
            assert_eq!(PackageName::parse(n), Err(e), "{n}");
        }
        assert_eq!(PackageName::parse(&"a".repeat(215)), Err(NameError::TooLong));
    }

    #[test]
    fn forms() {
        let n = PackageName::parse("@Babel/core").unwrap();
        assert_eq!(n.unscoped(), "core");
        assert_eq!(n.url_segment(), "@Babel%2fcore");
        assert_eq!(n.shard(), "@b");
        assert_eq!(PackageName::parse("x").unwrap().shard(), "x");
        assert_eq!(PackageName::parse("React").unwrap().shard(), "re");
    }
}
