//! The reason phrase of a refusal's status line (`403 Blocked: chalk@5.6.2 (compromised
//! release)`): pnpm, yarn and npm print it. HTTP/1 only (HTTP/2 has no reason phrase).
//!
//! Names and reasons come from outside (a blocklist, a feed, a request path): the phrase
//! keeps visible ASCII, space and tab only, so nothing can end the line and inject a header,
//! and is bounded.

use hyper::ext::ReasonPhrase;

/// Longest phrase sent, in bytes.
pub(crate) const MAX_PHRASE: usize = 200;

/// `text` made fit for a status line: other bytes become `?`, cut at `MAX_PHRASE` with `...`.
pub(crate) fn reason_phrase(text: &str) -> ReasonPhrase {
    let mut clean: String = text
        .chars()
        .map(|c| if c == '\t' || (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    if clean.len() > MAX_PHRASE {
        clean.truncate(MAX_PHRASE - 3);
        clean.push_str("...");
    }
    ReasonPhrase::try_from(clean).expect("visible ASCII, space and tab make a valid reason phrase")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_cannot_break_the_line() {
        let p = reason_phrase("Blocked: x (a\r\nSet-Cookie: y=1\u{7f}é)");
        assert_eq!(p.as_bytes(), b"Blocked: x (a??Set-Cookie: y=1??)");
        let long = reason_phrase(&"a".repeat(1000));
        assert_eq!(long.as_bytes().len(), MAX_PHRASE);
        assert!(long.as_bytes().ends_with(b"..."));
    }
}
