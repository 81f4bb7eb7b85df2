//! npg's own credentials for upstream (UPSTREAM_AUTH_FILE), by scope. They go only on npg's
//! own reads (packuments, tarballs), never on a client's passthrough request, so no client
//! ever acts upstream as npg. What they unlock is cached and served to every client of npg.
//!
//! The file has one entry a line, `<scope> <Authorization header value>`, where the scope is
//! `@name` (the packages `@name/...`) or `*` (every other package); `#` starts a comment:
//!
//! ```text
//! @corp Bearer npm_xxxxxxxx
//! *     Basic dXNlcjpwYXNz
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::anyhow;
use reqwest::header::HeaderValue;
use url::Url;

#[derive(Clone, Default)]
pub(crate) struct UpstreamAuth {
    /// By scope, `@` included, lowercase.
    scopes: HashMap<String, HeaderValue>,
    /// `*`: every package of no listed scope.
    any: Option<HeaderValue>,
}

// Names the scopes only: the values are secrets.
impl fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut scopes: Vec<&str> = self.scopes.keys().map(String::as_str).collect();
        scopes.sort_unstable();
        if self.any.is_some() {
            scopes.push("*");
        }
        f.debug_struct("UpstreamAuth").field("scopes", &scopes).finish()
    }
}

impl UpstreamAuth {
    pub(crate) fn load(path: &Path) -> anyhow::Result<UpstreamAuth> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("UPSTREAM_AUTH_FILE: cannot read {} ({e})", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow!("UPSTREAM_AUTH_FILE: {e}"))
    }

    /// Errors name the line, never its value.
    pub(crate) fn parse(text: &str) -> anyhow::Result<UpstreamAuth> {
        let mut auth = UpstreamAuth::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (scope, value) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| anyhow!("line {n}: expected `<@scope or *> <Authorization value>`"))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|_| anyhow!("line {n}: the value is not a valid header value"))?;
            // Kept out of HTTP/2 header compression tables and of Debug output.
            value.set_sensitive(true);
            let taken = match scope {
                "*" => auth.any.replace(value).is_some(),
                s if is_scope(s) => auth.scopes.insert(s.to_ascii_lowercase(), value).is_some(),
                _ => return Err(anyhow!("line {n}: `{scope}` is neither `@scope` nor `*`")),
            };
            if taken {
                return Err(anyhow!("line {n}: `{scope}` is given twice"));
            }
        }
        Ok(auth)
    }

    /// The credentials for package `name` (`@scope/name` or `name`).
    pub(crate) fn for_package(&self, name: &str) -> Option<&HeaderValue> {
        let scope = name.split_once('/').map(|(s, _)| s).filter(|s| s.starts_with('@'));
        self.for_scope(scope)
    }

    /// The credentials for a tarball URL: only under the registry `base` (npm's rule: the
    /// registry's token goes to the registry, never to another host), by the scope its path
    /// starts with. A redirect to another origin drops them (reqwest removes `Authorization`).
    pub(crate) fn for_url(&self, base: &Url, url: &Url) -> Option<&HeaderValue> {
        let rest = url.as_str().strip_prefix(base.as_str())?;
        let first = rest.split('/').next().unwrap_or("");
        let decoded = percent_encoding::percent_decode_str(first).decode_utf8_lossy();
        let scope = decoded.split('/').next().filter(|s| s.starts_with('@'));
        self.for_scope(scope)
    }

    fn for_scope(&self, scope: Option<&str>) -> Option<&HeaderValue> {
        scope
            .and_then(|s| self.scopes.get(&s.to_ascii_lowercase()))
            .or(self.any.as_ref())
    }
}

fn is_scope(s: &str) -> bool {
    s.strip_prefix('@').is_some_and(|name| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_scope_then_any() {
        let auth = UpstreamAuth::parse("# npg's reads\n@Corp Bearer c0rp\n\n*\tBasic YW55\n").unwrap();
        assert_eq!(auth.for_package("@corp/lib").unwrap(), "Bearer c0rp");
        assert_eq!(auth.for_package("@other/lib").unwrap(), "Basic YW55");
        assert_eq!(auth.for_package("lodash").unwrap(), "Basic YW55");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("c0rp") && shown.contains("@corp"), "{shown}");
        let only = UpstreamAuth::parse("@corp Bearer c0rp").unwrap();
        assert!(only.for_package("lodash").is_none());
    }

    #[test]
    fn tarball_urls_under_the_registry_only() {
        let auth = UpstreamAuth::parse("@corp Bearer c0rp").unwrap();
        let base = Url::parse("https://registry.test/npm/").unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        let got = auth.for_url(&base, &url("https://registry.test/npm/@corp/lib/-/lib-1.0.0.tgz"));
        assert_eq!(got.unwrap(), "Bearer c0rp");
        let got = auth.for_url(&base, &url("https://registry.test/npm/@corp%2flib/-/lib-1.0.0.tgz"));
        assert_eq!(got.unwrap(), "Bearer c0rp");
        assert!(
            auth.for_url(&base, &url("https://cdn.test/npm/@corp/lib/-/lib-1.0.0.tgz"))
                .is_none()
        );
        assert!(
            auth.for_url(&base, &url("https://registry.test/npm/lib/-/lib-1.0.0.tgz"))
                .is_none()
        );
    }

    #[test]
    fn errors_name_the_line_not_the_secret() {
        let err = UpstreamAuth::parse("corp Bearer s3cret").unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("s3cret"), "{err}");
        assert!(UpstreamAuth::parse("@corp").is_err());
        assert!(UpstreamAuth::parse("@corp Bearer a\n@corp Bearer b").is_err());
        assert!(UpstreamAuth::parse("@corp Bearer a\u{7f}b").is_err());
    }
}
