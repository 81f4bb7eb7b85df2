//! Asking a running npg for what a lockfile names, as a client would: the packument (npm's
//! abbreviated form, or the full one for a bundle) and the tarball, whose bytes are checked
//! against the expected integrity as they stream. npg's answers say what it had cached
//! (`X-Cache`) and what its guard refused (the `{error, reason, type}` body).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap};
use serde_json::Value;
use sha2::{Digest, Sha512};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::npm::integrity::Expected;

/// Why npg did not give something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// npg's guard refused it (a 403, or a 404 naming the rule that hides the version).
    #[error("{rule}, {reason}")]
    Blocked { rule: String, reason: String },
    #[error("{0}")]
    Failed(String),
}

fn failed(what: impl std::fmt::Display) -> Refusal {
    Refusal::Failed(what.to_string())
}

/// Which form of a packument to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// What npm asks for when it installs.
    Abbreviated,
    /// The whole document, as npg serves it.
    Full,
}

/// A packument as npg served it.
pub(crate) struct Packument {
    pub(crate) body: Bytes,
    pub(crate) doc: Value,
    /// npg had it cached (`X-Cache: HIT` or `STALE`).
    pub(crate) hit: bool,
}

impl Packument {
    /// A served version's `dist`, or `None` when npg does not serve that version.
    pub(crate) fn dist(&self, version: &str) -> Option<&Value> {
        self.doc.get("versions")?.get(version)?.get("dist")
    }
}

/// A tarball as it streamed by.
pub(crate) struct Tarball {
    /// Its file name, as npg's packument gives it.
    pub(crate) file: String,
    pub(crate) hit: bool,
    pub(crate) size: u64,
    /// `sha512-<base64>` of the bytes.
    pub(crate) sha512: String,
}

pub(crate) struct Npg {
    /// npg's npm API, e.g. `http://127.0.0.1:3000/npm`, no trailing slash.
    proxy: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Npg {
    /// npg at `base` (its npm API under `<base>/npm`), with the client's token if any.
    pub(crate) fn new(base: &Url, token: Option<String>, role: &str) -> anyhow::Result<Npg> {
        let client = crate::upstream::client::builder(Some(role))
            .read_timeout(std::time::Duration::from_secs(120))
            .build()?;
        let proxy = format!("{}/npm", base.as_str().trim_end_matches('/'));
        Ok(Npg { proxy, token, client })
    }

    async fn get(&self, url: &str, accept: &str) -> Result<reqwest::Response, Refusal> {
        let mut request = self.client.get(url).header(ACCEPT, accept);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| failed(format!("npg unreachable ({e})")))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(refusal(status, &body))
    }

    /// `GET <npg>/npm/<name>` in the given form.
    pub(crate) async fn packument(&self, name: &str, form: Form) -> Result<Packument, Refusal> {
        let accept = match form {
            Form::Abbreviated => "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
            Form::Full => "application/json",
        };
        let url = format!("{}/{}", self.proxy, name.replace('/', "%2f"));
        let response = self.get(&url, accept).await?;
        let hit = cache_hit(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| failed(format!("npg's answer broke off ({e})")))?;
        let doc = serde_json::from_slice(&body).map_err(|e| failed(format!("npg's packument is not JSON ({e})")))?;
        Ok(Packument { body, doc, hit })
    }

    /// Why npg does not serve `name@version`: its version route names the rule that hides
    /// it, if one does.
    pub(crate) async fn why_missing(&self, name: &str, version: &str) -> Refusal {
        let url = format!("{}/{}/{version}", self.proxy, name.replace('/', "%2f"));
        match self.get(&url, "application/json").await {
            Ok(_) => failed("npg serves the version but not in the packument"),
            Err(Refusal::Failed(why)) => failed(format!("not served: {why}")),
            Err(blocked) => blocked,
        }
    }

    /// The tarball of `name@version` as `dist` (from npg's packument) names it, checked
    /// against `expected` as it streams, written to `sink` if given.
    pub(crate) async fn tarball(
        &self,
        name: &str,
        dist: &Value,
        expected: &Expected,
        mut sink: Option<&mut tokio::fs::File>,
    ) -> Result<Tarball, Refusal> {
        let url = dist.get("tarball").and_then(Value::as_str).unwrap_or_default();
        // npg wrote its public URL (PROXY_URL), maybe not reachable from here: the file name
        // is what matters.
        let file = url.rsplit('/').next().filter(|f| !f.is_empty());
        let file = file.ok_or_else(|| failed("npg's packument names no tarball"))?;
        let response = self
            .get(&format!("{}/{name}/-/{file}", self.proxy), "application/octet-stream")
            .await?;
        let hit = cache_hit(response.headers());
        let (mut verifier, mut sha512, mut size) = (expected.verifier(), Sha512::new(), 0u64);
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(format!("download broke off ({e})")))?;
            verifier.update(&chunk);
            sha512.update(&chunk);
            size += chunk.len() as u64;
            if let Some(sink) = sink.as_mut() {
                sink.write_all(&chunk)
                    .await
                    .map_err(|e| failed(format!("cannot write it ({e})")))?;
            }
        }
        if !verifier.matches() {
            return Err(failed("the tarball does not match the lockfile's integrity"));
        }
        let sha512 = format!("sha512-{}", STANDARD.encode(sha512.finalize()));
        let file = file.to_string();
        Ok(Tarball {
            file,
            hit,
            size,
            sha512,
        })
    }
}

fn cache_hit(headers: &HeaderMap) -> bool {
    headers
        .get("x-cache")
        .is_some_and(|v| v.as_bytes() == b"HIT" || v.as_bytes() == b"STALE")
}

/// An error answer: blocked when npg's body names the guard's rule (`type`), else failed.
fn refusal(status: StatusCode, body: &[u8]) -> Refusal {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (field("type"), field("reason")) {
        (Some(rule), Some(reason)) if matches!(status.as_u16(), 403 | 404) => Refusal::Blocked { rule, reason },
        (_, reason) => failed(format!("npg answered {status} {}", reason.unwrap_or_default()).trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_refusals_are_blocks_other_errors_failures() {
        let body = br#"{"error": "x is blocked", "reason": "compromised", "type": "version", "package": "x"}"#;
        assert_eq!(
            refusal(StatusCode::FORBIDDEN, body),
            Refusal::Blocked {
                rule: "version".into(),
                reason: "compromised".into()
            }
        );
        assert!(matches!(refusal(StatusCode::NOT_FOUND, body), Refusal::Blocked { .. }));
        let plain = br#"{"error": "Not found", "reason": "version not found: x@1"}"#;
        assert_eq!(
            refusal(StatusCode::NOT_FOUND, plain),
            failed("npg answered 404 Not Found version not found: x@1")
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, b"<html>"),
            failed("npg answered 502 Bad Gateway")
        );
        assert!(matches!(refusal(StatusCode::BAD_GATEWAY, body), Refusal::Failed(_)));
    }
}
