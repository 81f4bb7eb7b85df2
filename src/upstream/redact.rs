//! URLs as npg prints and logs them: without user info and without query values, where
//! registries and CDNs carry tokens.

use url::Url;

/// Removes the user info and replaces every query value with `redacted`.
pub(crate) fn redact_url(url: &mut Url) {
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(keys.iter().map(|k| (k.as_str(), "redacted")));
    }
}

/// `redact_url` of a string; what does not parse as a URL is not shown at all.
pub(crate) fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            redact_url(&mut parsed);
            parsed.into()
        }
        Err(_) => "<not a URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_are_removed() {
        assert_eq!(
            redact("https://npg:t0ken@registry.test:8443/r/?token=abc&x=1"),
            "https://registry.test:8443/r/?token=redacted&x=redacted"
        );
        assert_eq!(redact("http://user@h/p"), "http://h/p");
        assert_eq!(redact("http://h/p"), "http://h/p");
        assert_eq!(redact("//user:pw@nothing"), "<not a URL>");
    }
}
