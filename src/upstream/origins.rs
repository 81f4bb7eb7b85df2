//! Where npg fetches from: REGISTRY_URL's origin and the hosts of UPSTREAM_TARBALL_HOSTS, so
//! a hostile or compromised upstream cannot send npg anywhere else, neither with a
//! `dist.tarball` nor with a redirect.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::anyhow;
use url::Url;

/// Redirects followed at most, per request.
const MAX_REDIRECTS: usize = 5;

/// One origin (scheme, host, port) of UPSTREAM_TARBALL_HOSTS: `host`, `host:port` (https) or
/// `http://host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origin(url::Origin);

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Origin {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Origin> {
        let s = s.trim();
        let full = if s.contains("://") {
            s.to_string()
        } else {
            format!("https://{s}")
        };
        let url = Url::parse(&full).map_err(|e| anyhow!("`{s}` is not a host or host:port ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(anyhow!("`{s}`: only http:// and https:// hosts"));
        }
        let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
        if !bare || !url.username().is_empty() || url.password().is_some() {
            return Err(anyhow!("`{s}`: a host, host:port or scheme://host:port, nothing more"));
        }
        Ok(Origin(url.origin()))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.ascii_serialization())
    }
}

/// A URL npg will not fetch; the message names its origin.
#[derive(Debug, thiserror::Error)]
#[error("{0} is neither the registry's origin nor in UPSTREAM_TARBALL_HOSTS")]
pub(crate) struct OriginRefused(pub String);

/// The origins npg fetches from.
#[derive(Clone, Debug)]
pub(crate) struct Origins {
    allowed: Vec<url::Origin>,
}

impl Origins {
    pub(crate) fn new(registry: &Url, extra: &[Origin]) -> Origins {
        let mut allowed = vec![registry.origin()];
        allowed.extend(extra.iter().map(|o| o.0.clone()));
        Origins { allowed }
    }

    /// `url` parsed, when npg may fetch it.
    pub(crate) fn check(&self, url: &str) -> Result<Url, OriginRefused> {
        let parsed = Url::parse(url).map_err(|_| OriginRefused("a URL that does not parse".into()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(OriginRefused(format!("the scheme `{}:`", parsed.scheme())));
        }
        let origin = parsed.origin();
        if self.allowed.contains(&origin) {
            Ok(parsed)
        } else {
            Err(OriginRefused(origin.ascii_serialization()))
        }
    }

    /// Follows redirects only to allowed origins, at most `MAX_REDIRECTS` of them.
    pub(crate) fn redirect_policy(self: Arc<Self>) -> reqwest::redirect::Policy {
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match self.check(attempt.url().as_str()) {
                Ok(_) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(extra: &[&str]) -> Origins {
        let extra: Vec<Origin> = extra.iter().map(|s| s.parse().unwrap()).collect();
        Origins::new(&Url::parse("https://registry.test/npm/").unwrap(), &extra)
    }

    #[test]
    fn only_allowed_origins() {
        let o = origins(&["cdn.test", "http://files.test:8080"]);
        assert!(o.check("https://registry.test/a/-/a-1.0.0.tgz").is_ok());
        assert!(o.check("https://registry.test:443/a").is_ok());
        assert!(o.check("https://cdn.test/x.tgz").is_ok());
        assert!(o.check("http://files.test:8080/x.tgz").is_ok());
        let refused = o.check("http://registry.test/a").unwrap_err().to_string();
        assert!(refused.contains("http://registry.test"), "{refused}");
        assert!(o.check("https://registry.test:8443/a").is_err());
        assert!(o.check("https://files.test:8080/x.tgz").is_err());
        assert!(o.check("file:///etc/passwd").unwrap_err().to_string().contains("file:"));
        assert!(o.check("gopher://registry.test/").is_err());
    }

    #[test]
    fn setting_syntax() {
        assert_eq!(
            "cdn.test:8443".parse::<Origin>().unwrap().to_string(),
            "https://cdn.test:8443"
        );
        assert_eq!(
            "http://cdn.test".parse::<Origin>().unwrap().to_string(),
            "http://cdn.test"
        );
        assert!("cdn.test/path".parse::<Origin>().is_err());
        assert!("ftp://cdn.test".parse::<Origin>().is_err());
        assert!("u:p@cdn.test".parse::<Origin>().is_err());
    }
}
