//! A packument as npg serves it: the upstream document checked, filtered by the guard's
//! policy (the hidden versions told to npm in `policyRestrictions`), tarball URLs rewritten,
//! rendered in both forms (full and abbreviated), each gzip-compressed once with its strong
//! ETag. Rendering is CPU work on documents of up to
//! tens of MB: callers run it on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use flate2::Compression;
use sha2::{Digest, Sha256};

use crate::budget::BudgetError;
use crate::guard::signatures::{SigState, SigStates, Signatures};
use crate::guard::{Block, Policy, restrictions};
use crate::npm::name::PackageName;
use crate::npm::packument::{Dists, DocError, Document, Index, Manifests, VersionFacts};

/// One rendered form, identity and gzip, with its strong ETags.
#[derive(Clone)]
pub struct Variant {
    pub body: Bytes,
    pub(crate) gzip: Bytes,
    /// Strong ETag of `body`.
    pub(crate) etag: String,
    /// Strong ETag of `gzip` (another representation, so another tag).
    pub(crate) gzip_etag: String,
}

impl Variant {
    fn new(body: Vec<u8>) -> Variant {
        let digest = Sha256::digest(&body);
        let hash = hex::encode(&digest[..16]);
        let (etag, gzip_etag) = (format!("\"{hash}\""), format!("\"{hash}-gz\""));
        let gzip = gzip(&body, Compression::default());
        Variant {
            body: body.into(),
            gzip: gzip.into(),
            etag,
            gzip_etag,
        }
    }
}

pub(crate) fn gzip(data: &[u8], level: Compression) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 5), level);
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// What is known of an upstream document besides its body: its ETag, when upstream sent it
/// (identifies the body across replicas) and when upstream last confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    pub etag: Option<String>,
    pub fetched_ms: u64,
    pub checked_ms: u64,
}

/// The upstream document as bytes: gzip-compressed (as kept in memory and in Redis), and
/// plain when it just arrived.
pub struct Raw {
    pub gz: Option<Bytes>,
    pub plain: Option<Bytes>,
}

/// A packument as served, plus what tarball and version requests need to know.
#[derive(Clone)]
pub struct Package {
    pub(crate) name: PackageName,
    pub full: Variant,
    /// Where each served version's manifest lies in `full.body`.
    pub manifests: Arc<Manifests>,
    pub abbreviated: Variant,
    /// Tarballs of every version; tags and versions as served (filtered).
    pub index: Arc<Index>,
    /// Versions the policy hides, and why.
    pub hidden: Arc<HashMap<String, Block>>,
    /// What the guard judges every upstream version by: enough to judge a new policy
    /// without parsing the document again.
    pub(crate) facts: Arc<Vec<VersionFacts>>,
    /// Each upstream version's registry signature (none when SIGNATURE_POLICY is off), and
    /// the rules and keys they were checked under.
    pub(crate) signatures: Arc<SigStates>,
    pub(crate) signed_under: Arc<Signatures>,
    /// Told to npm users in an `npm-notice` header when versions are hidden.
    pub(crate) notice: Option<String>,
    /// The upstream document, gzip-compressed: re-rendered from here when the policy changes.
    pub(crate) raw_gz: Bytes,
    pub(crate) upstream_etag: Option<String>,
    /// When upstream sent this body (unix ms): identifies the body across replicas.
    pub(crate) fetched_ms: u64,
    /// When upstream last confirmed it (unix ms): freshness counts from here.
    pub(crate) checked_ms: u64,
    /// Served because upstream failed.
    pub(crate) stale: bool,
    /// The policy it was rendered under, and until when that rendering holds (the age gate
    /// lets a version through at a known time).
    pub(crate) policy_version: u64,
    pub(crate) valid_until_ms: Option<u64>,
}

impl Package {
    pub(crate) fn approx_bytes(&self) -> usize {
        let v = |v: &Variant| v.body.len() + v.gzip.len();
        let manifests = self.manifests.keys().map(|k| k.len() + 40).sum::<usize>();
        v(&self.full) + v(&self.abbreviated) + self.raw_gz.len() + self.index.approx_bytes() + manifests + 256
    }

    /// Whether this rendering still reflects the policy in force.
    pub(crate) fn current(&self, policy_version: u64, now_ms: u64) -> bool {
        self.policy_version == policy_version && self.valid_until_ms.is_none_or(|t| now_ms < t)
    }

    /// Every version is hidden: nothing to serve.
    pub(crate) fn all_hidden(&self) -> bool {
        self.index.versions.is_empty() && !self.hidden.is_empty()
    }

    /// Under a new policy: the same rendering when the policy hides the same versions for the
    /// same reasons (most policy changes concern other packages), else `None`. New signature
    /// rules (new keys) need the document again.
    pub(crate) fn rejudged(&self, policy: &Policy, now_ms: u64) -> Option<Arc<Package>> {
        if !Arc::ptr_eq(&policy.signatures, &self.signed_under) {
            return None;
        }
        let mut verdict = policy.judge(self.name.as_str(), &self.facts, now_ms);
        policy.judge_signatures(&self.signatures, &mut verdict);
        (verdict.hidden == *self.hidden).then(|| {
            Arc::new(Package {
                policy_version: policy.version,
                valid_until_ms: verdict.valid_until_ms,
                ..self.clone()
            })
        })
    }

    pub(crate) fn checked_at(&self, checked_ms: u64, stale: bool) -> Arc<Package> {
        Arc::new(Package {
            checked_ms,
            stale,
            ..self.clone()
        })
    }
}

/// Why a document was not rendered: its own fault (`Document`, `NotGzip`, `TooLarge`: from
/// upstream, or a copy in Redis), or npg's (the memory budget, a rendering task that died).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Document(#[from] DocError),
    #[error("document is not valid gzip: {0}")]
    NotGzip(std::io::Error),
    #[error("document decodes to more than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("no decoded document to render")]
    NotDecoded,
    #[error("rendering stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The size a gzip stream says it decodes to: its trailer (mod 4 GiB).
pub(crate) fn gzip_size(gz: &[u8]) -> Option<usize> {
    let trailer = gz.get(gz.len().checked_sub(4)?..)?;
    Some(u32::from_le_bytes(trailer.try_into().ok()?) as usize)
}

/// A gzip'd document decoded (from upstream or Redis: neither is trusted to be small),
/// refused beyond `max` bytes. The decoder checks the trailer's size, so it is the size
/// exactly: the buffer is sized once (a 40 MB document is not grown by doubling, with a copy
/// each time), and no more than the trailer says is ever decoded.
pub(crate) fn gunzip(gz: &[u8], max: usize) -> Result<Bytes, RenderError> {
    let bad = |why: &str| RenderError::NotGzip(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    let size = gzip_size(gz).ok_or_else(|| bad("too short for gzip"))?;
    if size > max {
        return Err(RenderError::TooLarge(max));
    }
    let mut out = Vec::with_capacity(size);
    let mut decoder = flate2::read::GzDecoder::new(gz).take(size as u64);
    decoder.read_to_end(&mut out).map_err(RenderError::NotGzip)?;
    // The read that finds the end is the one that checks the trailer (length and CRC).
    match decoder.into_inner().read(&mut [0u8]).map_err(RenderError::NotGzip)? {
        0 => Ok(Bytes::from(out)),
        _ => Err(bad("longer than its trailer says")),
    }
}

/// Renders a raw document under `policy` at `now_ms`.
pub fn render(
    name: &PackageName,
    raw: Raw,
    meta: &DocMeta,
    policy: &Policy,
    public_base: &str,
    now_ms: u64,
) -> Result<Package, RenderError> {
    let (plain, raw_gz) = match (raw.plain, raw.gz) {
        (Some(plain), Some(gz)) => (plain, gz),
        (Some(plain), None) => {
            let gz = Bytes::from(gzip(&plain, Compression::fast()));
            (plain, gz)
        }
        // Callers decode within the memory budget first.
        (None, _) => return Err(RenderError::NotDecoded),
    };
    let mut doc = Document::parse(&plain, name)?;
    let (mut index, facts, dists) = doc.index(name);
    let mut verdict = policy.judge(name.as_str(), &facts, now_ms);
    let signatures = check_signatures(name, &facts, dists, policy);
    policy.judge_signatures(&signatures, &mut verdict);
    if !verdict.hidden.is_empty() {
        doc.hide(|v| verdict.hidden.contains_key(v));
        index.versions.retain(|v| !verdict.hidden.contains_key(v));
        index.dist_tags = doc.index_tags();
    }
    doc.rewrite_tarballs(name, public_base);
    let notice = notice(name, &verdict.hidden, facts.len());
    let full = doc.to_full();
    let full_body = restrictions::append(full.body, name.as_str(), &verdict.hidden);
    // The abbreviated form is written from the full one (filtered and rewritten alike), so
    // the upstream document can go first: a 40 MB one and both renderings are never held at
    // once. Reading the rendering again costs a fraction of writing it.
    drop(doc);
    drop(plain);
    let abbreviated = Document::parse(&full_body, name)?.to_abbreviated(meta.fetched_ms);
    let abbreviated = restrictions::append(abbreviated, name.as_str(), &verdict.hidden);
    Ok(Package {
        name: name.clone(),
        full: Variant::new(full_body),
        manifests: Arc::new(full.manifests),
        abbreviated: Variant::new(abbreviated),
        index: Arc::new(index),
        hidden: Arc::new(verdict.hidden),
        facts: Arc::new(facts),
        signatures: Arc::new(signatures),
        signed_under: policy.signatures.clone(),
        notice,
        raw_gz,
        upstream_etag: meta.etag.clone(),
        fetched_ms: meta.fetched_ms,
        checked_ms: meta.checked_ms,
        stale: false,
        policy_version: policy.version,
        valid_until_ms: verdict.valid_until_ms,
    })
}

/// Each version's registry signature state, when the signature policy is on; the bad ones
/// logged (once per rendering, which follows a new document or new rules).
fn check_signatures(name: &PackageName, facts: &[VersionFacts], dists: Dists, policy: &Policy) -> SigStates {
    let rules = &policy.signatures;
    if !rules.on() {
        return SigStates::new();
    }
    let mut states = SigStates::with_capacity(facts.len());
    for (facts, dist) in facts.iter().zip(dists) {
        let version = facts.version.as_str();
        // One at a time: all of them parsed at once would outweigh the index.
        let dist = dist.and_then(|d| serde_json::from_str::<serde_json::Value>(d.get()).ok());
        let state = rules.keys.check(name.as_str(), version, dist.as_ref(), facts.published);
        if matches!(state, SigState::Invalid { .. } | SigState::UnknownKey { .. }) && !rules.keys.is_empty() {
            tracing::warn!(package = %name, version, signature = ?state, "registry signature not valid");
        }
        states.insert(version.to_string(), state);
    }
    states
}

/// `npg: 2 of 9 versions of foo hidden (malware: 1, age: 1)`; ASCII, fit for a header.
fn notice(name: &PackageName, hidden: &HashMap<String, Block>, total: usize) -> Option<String> {
    if hidden.is_empty() {
        return None;
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for block in hidden.values() {
        *kinds.entry(block.kind.as_str()).or_default() += 1;
    }
    let why: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let text = format!(
        "npg: {} of {total} versions of {name} hidden by policy ({})",
        hidden.len(),
        why.join(", ")
    );
    Some(text.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::blocklist::Blocklist;

    static SIGNATURES: std::sync::LazyLock<Arc<Signatures>> = std::sync::LazyLock::new(Arc::default);

    fn policy(version: u64, rules: &str) -> Policy {
        Policy {
            version,
            blocklist: Arc::new(Blocklist::parse(rules).unwrap()),
            // One set of signature rules for every policy, as a running npg carries it over.
            signatures: SIGNATURES.clone(),
            ..Policy::default()
        }
    }

    fn package(policy: &Policy) -> Package {
        let doc = serde_json::json!({
            "name": "a", "dist-tags": {"latest": "2.0.0"},
            "time": {"1.0.0": "2024-01-01T00:00:00.000Z", "2.0.0": "2024-02-01T00:00:00.000Z"},
            "versions": {"1.0.0": {"version": "1.0.0", "dist": {"tarball": "http://up/a/-/a-1.0.0.tgz"}},
                         "2.0.0": {"version": "2.0.0", "dist": {"tarball": "http://up/a/-/a-2.0.0.tgz"}}}
        });
        let raw = Raw {
            plain: Some(serde_json::to_vec(&doc).unwrap().into()),
            gz: None,
        };
        let meta = DocMeta {
            etag: None,
            fetched_ms: 1,
            checked_ms: 1,
        };
        render(
            &PackageName::parse("a").unwrap(),
            raw,
            &meta,
            policy,
            "http://npg/npm",
            0,
        )
        .unwrap()
    }

    #[test]
    fn renders_filtered_with_a_notice() {
        let p = package(&policy(1, "packages:\n  - name: a\n    versions: ['2.0.0']\n"));
        assert_eq!(p.index.versions, ["1.0.0"]);
        assert_eq!(p.index.dist_tags["latest"], "1.0.0");
        assert_eq!(
            p.index.files.len(),
            2,
            "tarballs of hidden versions stay known, to refuse them"
        );
        assert_eq!(
            p.notice.as_deref(),
            Some("npg: 1 of 2 versions of a hidden by policy (version: 1)")
        );
        assert!(!p.all_hidden());
        let full: serde_json::Value = serde_json::from_slice(&p.full.body).unwrap();
        assert_eq!(
            full["versions"]["1.0.0"]["dist"]["tarball"],
            "http://npg/npm/a/-/a-1.0.0.tgz"
        );
    }

    #[test]
    fn the_abbreviated_form_read_from_the_full_one_is_the_upstream_documents() {
        let doc = serde_json::json!({
            "_id": "a", "name": "a", "readme": "big", "dist-tags": {"latest": "2.0.0", "beta": "3.0.0-b"},
            "time": {"created": "2023-01-01T00:00:00.000Z", "1.0.0": "2024-01-01T00:00:00.000Z",
                     "2.0.0": "2024-02-01T00:00:00.000Z", "3.0.0-b": "2024-03-01T00:00:00.000Z"},
            "versions": {
                "1.0.0": {"name": "a", "version": "1.0.0", "description": "x", "scripts": {"install": "node x"},
                          "dependencies": {"b": "^1.2"}, "dist": {"tarball": "http://up/a/-/a-1.0.0.tgz",
                          "integrity": "sha512-AA==", "signatures": [{"keyid": "k", "sig": "s"}]}},
                "2.0.0": {"name": "a", "version": "2.0.0", "engines": {"node": ">=18"}, "n": 1.5e300,
                          "dist": {"tarball": "http://up/a/-/a-2.0.0.tgz", "shasum": "ab"}},
                "3.0.0-b": {"name": "a", "version": "3.0.0-b", "dist": {"tarball": "http://up/a/-/a-3.0.0-b.tgz"}}
            }
        });
        let plain = serde_json::to_vec(&doc).unwrap();
        let name = PackageName::parse("a").unwrap();
        let policy = policy(1, "packages:\n  - name: a\n    versions: ['2.0.0']\n");
        let meta = DocMeta {
            etag: None,
            fetched_ms: 1,
            checked_ms: 1,
        };
        let raw = Raw {
            plain: Some(plain.clone().into()),
            gz: None,
        };
        let p = render(&name, raw, &meta, &policy, "http://npg/npm", 0).unwrap();
        // What writing it straight from the upstream document gives.
        let mut upstream = Document::parse(&plain, &name).unwrap();
        upstream.hide(|v| p.hidden.contains_key(v));
        upstream.rewrite_tarballs(&name, "http://npg/npm");
        let direct = restrictions::append(upstream.to_abbreviated(1), "a", &p.hidden);
        assert_eq!(
            String::from_utf8_lossy(&p.abbreviated.body),
            String::from_utf8_lossy(&direct)
        );
        let abbreviated: serde_json::Value = serde_json::from_slice(&p.abbreviated.body).unwrap();
        assert_eq!(abbreviated["dist-tags"]["latest"], "1.0.0");
        assert_eq!(abbreviated["versions"]["1.0.0"]["hasInstallScript"], true);
        assert_eq!(
            abbreviated["versions"]["1.0.0"]["dist"]["tarball"],
            "http://npg/npm/a/-/a-1.0.0.tgz"
        );
        assert!(abbreviated["policyRestrictions"]["versions"]["2.0.0"].is_object());
        assert!(abbreviated.get("readme").is_none());
    }

    #[test]
    fn gunzip_decodes_what_the_trailer_says_and_no_more() {
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_string().into_bytes()).collect();
        let gz = gzip(&plain, Compression::fast());
        assert_eq!(gzip_size(&gz), Some(plain.len()));
        let out = gunzip(&gz, 10 << 20).unwrap();
        assert_eq!(out, plain);
        let mut lying = gz.clone();
        let at = lying.len() - 4;
        for (size, why) in [(plain.len() + 1, "more than it holds"), (1, "less"), (0, "nothing")] {
            lying[at..].copy_from_slice(&(size as u32).to_le_bytes());
            assert!(
                matches!(gunzip(&lying, 10 << 20), Err(RenderError::NotGzip(_))),
                "a trailer that says {why} is refused"
            );
        }
        lying[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            matches!(gunzip(&lying, 10 << 20), Err(RenderError::TooLarge(_))),
            "refused before decoding anything"
        );
        assert!(matches!(gunzip(&gz, plain.len() - 1), Err(RenderError::TooLarge(_))));
        assert!(matches!(gunzip(b"\x1f", 100), Err(RenderError::NotGzip(_))));
        assert_eq!(gunzip(&gzip(b"", Compression::fast()), 100).unwrap(), b""[..]);
    }

    #[test]
    fn a_policy_change_elsewhere_keeps_the_rendering() {
        let p = package(&policy(1, ""));
        let unrelated = p.rejudged(&policy(2, "packages:\n  - name: other\n"), 0).unwrap();
        assert_eq!(unrelated.policy_version, 2);
        assert_eq!(unrelated.full.etag, p.full.etag);
        assert!(
            p.rejudged(&policy(3, "packages:\n  - name: a\n    versions: ['1.0.0']\n"), 0)
                .is_none()
        );
        let new_keys = Policy {
            signatures: Arc::default(),
            ..policy(4, "")
        };
        assert!(p.rejudged(&new_keys, 0).is_none(), "new keys: signatures checked again");
    }
}
