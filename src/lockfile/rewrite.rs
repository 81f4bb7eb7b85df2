//! `--rewrite`: every registry tarball URL of a lockfile pointed at
//! `<PROXY_URL>/<name>/-/<file>`, the rest of the file kept byte for byte, written atomically.

use std::collections::HashMap;

use super::{Entry, berry};

/// The npg URL for a registry tarball URL (`.../<name>/-/<file>.tgz`), if it is one and
/// does not already go through npg.
fn through_npg(entry: &Entry, url: &str, proxy: &str) -> Option<String> {
    if url.starts_with(&format!("{proxy}/")) || !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let path = url.split(['?', '#']).next()?;
    let (_, file) = path.rsplit_once("/-/")?;
    let file = file.rsplit('/').next()?;
    file.ends_with(".tgz")
        .then(|| format!("{proxy}/{}/-/{file}", entry.name))
}

/// The entries whose resolved URL is a registry tarball outside npg, with that URL.
pub(crate) fn outside<'a>(entries: &'a [Entry], proxy: &str) -> Vec<(&'a Entry, &'a str)> {
    let resolved = entries.iter().filter_map(|e| Some((e, e.resolved.as_deref()?)));
    resolved
        .filter(|(e, url)| through_npg(e, url, proxy).is_some())
        .collect()
}

/// The text with every such URL replaced, as written or encoded as yarn berry writes them
/// (where it ends: a quote, `#`, `,`, `}`, a space or the line's end, so no longer URL is
/// cut), and how many URLs changed.
pub(crate) fn rewrite(text: &str, entries: &[Entry], proxy: &str) -> (String, usize) {
    let changes: HashMap<&str, String> = outside(entries, proxy)
        .into_iter()
        .filter_map(|(e, url)| Some((url, through_npg(e, url, proxy)?)))
        .collect();
    let mut out = text.to_string();
    let encoded = changes
        .iter()
        .map(|(old, new)| (berry::encode(old), berry::encode(new)));
    let plain = changes.iter().map(|(old, new)| (old.to_string(), new.clone()));
    for (old, new) in plain.chain(encoded) {
        let (old, new) = (old.as_str(), new.as_str());
        let mut at = 0;
        while let Some(found) = out[at..].find(old) {
            let start = at + found;
            let end = start + old.len();
            let ends_url = out[end..]
                .chars()
                .next()
                .is_none_or(|c| matches!(c, '"' | '\'' | '#' | ',' | '}') || c.is_whitespace());
            if ends_url {
                out.replace_range(start..end, new);
                at = start + new.len();
            } else {
                at = end;
            }
        }
    }
    (out, changes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, url: &str) -> Entry {
        Entry::new(name, "1.0.0", Some(url)).unwrap()
    }

    #[test]
    fn points_registry_tarballs_at_npg_and_keeps_the_rest() {
        let proxy = "http://127.0.0.1:3000/npm";
        let entries = [
            entry("@s/a", "http://127.0.0.1:9/r/@s/a/-/a-1.0.0.tgz"),
            entry("b", "http://127.0.0.1:3000/npm/b/-/b-1.0.0.tgz"),
            entry("c", "http://127.0.0.1:9/files/c.tar.gz"),
        ];
        let text = "  resolved \"http://127.0.0.1:9/r/@s/a/-/a-1.0.0.tgz#abc\"\n  x \"http://127.0.0.1:9/r/@s/a/-/a-1.0.0.tgzz\"\n  {\"resolved\": \"http://127.0.0.1:9/r/@s/a/-/a-1.0.0.tgz\"}\n";
        let (out, changed) = rewrite(text, &entries, proxy);
        assert_eq!(changed, 1);
        assert_eq!(
            out,
            "  resolved \"http://127.0.0.1:3000/npm/@s/a/-/a-1.0.0.tgz#abc\"\n  x \"http://127.0.0.1:9/r/@s/a/-/a-1.0.0.tgzz\"\n  {\"resolved\": \"http://127.0.0.1:3000/npm/@s/a/-/a-1.0.0.tgz\"}\n"
        );
        assert_eq!(outside(&entries, proxy).len(), 1);
    }
}
