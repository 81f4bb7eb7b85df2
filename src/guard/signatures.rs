//! npm registry signatures, pure: the upstream's signing keys (`GET /-/npm/v1/keys`) and the
//! check of a version's `dist.signatures` against them, by npm's own rules (pacote's, which
//! `npm audit signatures` applies): every signature must verify, an ECDSA P-256 / SHA-256
//! signature of `<name>@<version>:<integrity>`; a keyid the upstream does not publish, or a key
//! that expired before the version was published (`time[version]`), does not count.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use base64::Engine as _;
use bytes::Bytes;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};

use super::block::{Block, Rule};

/// pacote's publication time for a version without one (2015-01-01T00:00:00Z): older than any
/// signing key's expiry.
const MISSING_TIME_MS: u64 = 1_420_070_400_000;
/// The only scheme npm signs with.
const SCHEME: &str = "ecdsa-sha2-nistp256";
/// Signatures remembered as verified (32 bytes each; cleared when full): a packument rendered
/// again (a new version, the cached rendering evicted) verifies only what it did not before.
const VERIFIED_MAX: usize = 100_000;

/// Why the keys document is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KeysError {
    #[error("not a keys document: {0}")]
    Json(String),
    #[error("key {keyid}: `expires` is not an RFC 3339 time")]
    Expires { keyid: String },
}

/// One signing key as the upstream publishes it.
#[derive(Debug, Clone)]
struct RegistryKey {
    keyid: String,
    /// Unix ms; none: it does not expire.
    expires_ms: Option<u64>,
    /// The uncompressed P-256 point, or why the key cannot verify anything.
    point: Result<Vec<u8>, String>,
}

/// The upstream's signing keys, with the document they came in (served to clients as is).
#[derive(Debug, Default)]
pub struct RegistryKeys {
    keys: Vec<RegistryKey>,
    /// The document as fetched; none when the upstream publishes no keys (404) or none were
    /// loaded yet.
    body: Option<Bytes>,
    /// SHA-256 of (keyid, message, signature) of the signatures these keys verified.
    verified: Mutex<HashSet<[u8; 32]>>,
}

#[derive(Deserialize)]
struct KeysDoc {
    keys: Vec<KeyDoc>,
}

#[derive(Deserialize)]
struct KeyDoc {
    keyid: String,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    keytype: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    key: String,
}

/// The uncompressed point of a base64 SPKI DER P-256 key.
fn p256_point(spki_b64: &str) -> Result<Vec<u8>, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(spki_b64.trim())
        .map_err(|e| format!("key is not base64 ({e})"))?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der).map_err(|e| format!("key is not SPKI DER ({e})"))?;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err("key is not a P-256 public key".into());
    }
    Ok(spki.subject_public_key.data.to_vec())
}

impl RegistryKeys {
    /// The keys of a `/-/npm/v1/keys` document. A key of another scheme, or one that does not
    /// decode, is kept as unusable: a signature by it is invalid, not by an unknown key.
    pub(crate) fn parse(body: Bytes) -> Result<RegistryKeys, KeysError> {
        let doc: KeysDoc = serde_json::from_slice(&body).map_err(|e| KeysError::Json(e.to_string()))?;
        let mut keys = Vec::with_capacity(doc.keys.len());
        for key in doc.keys {
            let expires_ms = match key.expires.as_deref() {
                None => None,
                Some(t) => Some(
                    crate::npm::packument::parse_time_ms(t).ok_or_else(|| KeysError::Expires {
                        keyid: key.keyid.clone(),
                    })?,
                ),
            };
            let ours = |f: &Option<String>| f.as_deref().is_none_or(|s| s == SCHEME);
            let point = if ours(&key.keytype) && ours(&key.scheme) {
                p256_point(&key.key)
            } else {
                Err(format!(
                    "unsupported key scheme {}",
                    key.scheme.as_deref().unwrap_or("?")
                ))
            };
            keys.push(RegistryKey {
                keyid: key.keyid,
                expires_ms,
                point,
            });
        }
        Ok(RegistryKeys {
            keys,
            body: Some(body),
            verified: Mutex::default(),
        })
    }

    /// A keys document pinned in a file (SIGNATURE_KEYS_FILE); one with no key is refused
    /// (it would turn verification off).
    pub(crate) fn load(path: &std::path::Path) -> anyhow::Result<RegistryKeys> {
        use anyhow::Context;
        let body = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let keys = RegistryKeys::parse(body.into()).with_context(|| format!("{}", path.display()))?;
        anyhow::ensure!(!keys.is_empty(), "{}: no keys in it", path.display());
        Ok(keys)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The document as fetched, to serve to clients.
    pub(crate) fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }

    /// The signature state of `name@version` from its `dist` (published at `published_ms`).
    pub(crate) fn check(&self, name: &str, version: &str, dist: Option<&Value>, published_ms: Option<u64>) -> SigState {
        let signatures = match dist.and_then(|d| d.get("signatures")) {
            None | Some(Value::Null) => return SigState::Unsigned,
            Some(Value::Array(s)) if s.is_empty() => return SigState::Unsigned,
            Some(Value::Array(s)) => s,
            Some(_) => return SigState::invalid("dist.signatures is not a list"),
        };
        let Some(integrity) = integrity(dist) else {
            return SigState::invalid("signed, but has no dist.integrity nor dist.shasum");
        };
        let message = format!("{name}@{version}:{integrity}");
        let published = published_ms.unwrap_or(MISSING_TIME_MS);
        for signature in signatures {
            let field = |k: &str| signature.get(k).and_then(Value::as_str);
            let (Some(keyid), Some(sig)) = (field("keyid"), field("sig")) else {
                return SigState::invalid("a signature without keyid or sig");
            };
            let Some(key) = self.keys.iter().find(|k| k.keyid == keyid) else {
                return SigState::UnknownKey { keyid: keyid.into() };
            };
            if let Some(expires) = key.expires_ms.filter(|e| published >= *e) {
                let expired = super::block::format_ms(expires);
                return SigState::invalid(format!("key {keyid} expired {expired}, before publication"));
            }
            let point = match &key.point {
                Ok(point) => point,
                Err(why) => return SigState::invalid(format!("key {keyid}: {why}")),
            };
            let seen: [u8; 32] = Sha256::new()
                .chain_update(keyid)
                .chain_update([0])
                .chain_update(&message)
                .chain_update([0])
                .chain_update(sig)
                .finalize()
                .into();
            if self.verified().contains(&seen) {
                continue;
            }
            let Ok(der) = base64::engine::general_purpose::STANDARD.decode(sig) else {
                return SigState::invalid(format!("signature by {keyid} is not base64"));
            };
            let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point);
            if public.verify(message.as_bytes(), &der).is_err() {
                return SigState::invalid(format!("signature by {keyid} does not match {name}@{version}"));
            }
            let mut verified = self.verified();
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(seen);
        }
        SigState::Valid
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.verified.lock().expect("verified signatures poisoned")
    }
}

/// What npm signs as the integrity: `dist.integrity`, else the SHA-1 of `dist.shasum` as SRI.
fn integrity(dist: Option<&Value>) -> Option<String> {
    let field = |k: &str| dist?.get(k)?.as_str().filter(|s| !s.is_empty());
    if let Some(sri) = field("integrity") {
        return Some(sri.trim().to_string());
    }
    let sha1 = hex::decode(field("shasum")?).ok()?;
    Some(format!(
        "sha1-{}",
        base64::engine::general_purpose::STANDARD.encode(sha1)
    ))
}

/// A version's registry signature as npg found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum SigState {
    Valid,
    Invalid { reason: String },
    Unsigned,
    UnknownKey { keyid: String },
}

impl SigState {
    fn invalid(reason: impl Into<String>) -> SigState {
        SigState::Invalid { reason: reason.into() }
    }

    /// The state's word in metrics and logs.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            SigState::Valid => "valid",
            SigState::Invalid { .. } => "invalid",
            SigState::Unsigned => "unsigned",
            SigState::UnknownKey { .. } => "unknown_key",
        }
    }

    /// The block's reason: "invalid registry signature (...)".
    fn reason(&self) -> String {
        match self {
            SigState::Valid => "valid registry signature".into(),
            SigState::Invalid { reason } => format!("invalid registry signature: {reason}"),
            SigState::Unsigned => "no registry signature".into(),
            SigState::UnknownKey { keyid } => format!("signed by {keyid}, a key the registry does not publish"),
        }
    }
}

/// SIGNATURE_POLICY: what a bad signature state does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SignatureMode {
    /// No check.
    Off,
    /// Checked, counted and logged; nothing hidden.
    #[default]
    Warn,
    /// Invalid signatures and signatures by keys the registry does not publish are hidden.
    HideInvalid,
    /// Also the versions without a signature.
    HideUnsigned,
}

/// The signature rules in force: the mode and the upstream's keys.
#[derive(Debug, Clone, Default)]
pub struct Signatures {
    pub(crate) mode: SignatureMode,
    pub(crate) keys: std::sync::Arc<RegistryKeys>,
}

/// Each version's signature state, by version.
pub(crate) type SigStates = HashMap<String, SigState>;

impl Signatures {
    /// Whether versions are checked at all.
    pub(crate) fn on(&self) -> bool {
        self.mode != SignatureMode::Off
    }

    /// Whether this mode can hide a version (so a version needs its packument to be judged).
    pub(crate) fn hides(&self) -> bool {
        matches!(self.mode, SignatureMode::HideInvalid | SignatureMode::HideUnsigned) && !self.keys.is_empty()
    }

    /// The block a state makes under this mode. Without keys nothing can be verified, so
    /// nothing is hidden (health says so): an upstream without keys must not go dark.
    pub(crate) fn block(&self, state: &SigState) -> Option<Block> {
        if self.keys.is_empty() {
            return None;
        }
        let hidden = match (self.mode, state) {
            (SignatureMode::Off | SignatureMode::Warn, _) | (_, SigState::Valid) => false,
            (_, SigState::Invalid { .. } | SigState::UnknownKey { .. }) => true,
            (SignatureMode::HideUnsigned, SigState::Unsigned) => true,
            (_, SigState::Unsigned) => false,
        };
        hidden.then(|| Block::new(Rule::Signature, state.reason()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    /// The SPKI DER prefix of an uncompressed P-256 point.
    const SPKI_P256: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

    pub(crate) struct TestKey {
        pair: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl TestKey {
        pub(crate) fn new() -> TestKey {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
            TestKey { pair, rng }
        }

        pub(crate) fn spki_b64(&self) -> String {
            let mut der = hex::decode(SPKI_P256).unwrap();
            der.extend_from_slice(self.pair.public_key().as_ref());
            base64::engine::general_purpose::STANDARD.encode(der)
        }

        pub(crate) fn sign(&self, message: &str) -> String {
            let sig = self.pair.sign(&self.rng, message.as_bytes()).unwrap();
            base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
        }
    }

    const INTEGRITY: &str = "sha512-AAAA";

    fn keys(key: &TestKey, expires: Option<&str>) -> RegistryKeys {
        let doc = json!({"keys": [{"expires": expires, "keyid": "SHA256:test", "keytype": SCHEME,
                                   "scheme": SCHEME, "key": key.spki_b64()}]});
        RegistryKeys::parse(serde_json::to_vec(&doc).unwrap().into()).unwrap()
    }

    fn dist(keyid: &str, sig: &str) -> Value {
        json!({"integrity": INTEGRITY, "signatures": [{"keyid": keyid, "sig": sig}]})
    }

    #[test]
    fn a_valid_signature_verifies() {
        let key = TestKey::new();
        let sig = key.sign(&format!("p@1.0.0:{INTEGRITY}"));
        let keys = keys(&key, None);
        let state = keys.check("p", "1.0.0", Some(&dist("SHA256:test", &sig)), Some(0));
        assert_eq!(state, SigState::Valid);
        assert_eq!(keys.verified().len(), 1, "remembered");
        assert_eq!(
            keys.check("p", "1.0.0", Some(&dist("SHA256:test", &sig)), Some(0)),
            SigState::Valid
        );
        let other = key.sign("p@1.0.0:sha512-other");
        let state = keys.check("p", "1.0.0", Some(&dist("SHA256:test", &other)), Some(0));
        assert_eq!(
            state.as_str(),
            "invalid",
            "only the very signature verified is remembered"
        );
    }

    #[test]
    fn an_altered_integrity_or_version_is_invalid() {
        let key = TestKey::new();
        let keys = keys(&key, None);
        let sig = key.sign(&format!("p@1.0.0:{INTEGRITY}"));
        let mut altered = dist("SHA256:test", &sig);
        altered["integrity"] = json!("sha512-BBBB");
        let state = keys.check("p", "1.0.0", Some(&altered), None);
        assert!(
            matches!(&state, SigState::Invalid { reason } if reason.contains("does not match p@1.0.0")),
            "{state:?}"
        );
        let other_version = keys.check("p", "1.0.1", Some(&dist("SHA256:test", &sig)), None);
        assert_eq!(other_version.as_str(), "invalid");
    }

    #[test]
    fn an_unknown_keyid_and_no_signature() {
        let key = TestKey::new();
        let keys = keys(&key, None);
        let sig = key.sign(&format!("p@1.0.0:{INTEGRITY}"));
        let state = keys.check("p", "1.0.0", Some(&dist("SHA256:other", &sig)), None);
        assert_eq!(
            state,
            SigState::UnknownKey {
                keyid: "SHA256:other".into()
            }
        );
        assert_eq!(
            keys.check("p", "1.0.0", Some(&json!({"integrity": INTEGRITY})), None),
            SigState::Unsigned
        );
        let empty = json!({"integrity": INTEGRITY, "signatures": []});
        assert_eq!(keys.check("p", "1.0.0", Some(&empty), None), SigState::Unsigned);
        assert_eq!(keys.check("p", "1.0.0", None, None), SigState::Unsigned);
        let none = RegistryKeys::default().check("p", "1.0.0", Some(&dist("SHA256:test", &sig)), None);
        assert_eq!(none.as_str(), "unknown_key");
    }

    #[test]
    fn a_key_expired_before_publication_does_not_count() {
        let key = TestKey::new();
        let keys = keys(&key, Some("2020-01-01T00:00:00.000Z"));
        let sig = key.sign(&format!("p@1.0.0:{INTEGRITY}"));
        let d = dist("SHA256:test", &sig);
        let before = 1_500_000_000_000;
        assert_eq!(keys.check("p", "1.0.0", Some(&d), Some(before)), SigState::Valid);
        let after = 1_600_000_000_000;
        let state = keys.check("p", "1.0.0", Some(&d), Some(after));
        assert!(
            matches!(&state, SigState::Invalid { reason } if reason.contains("expired 2020-01-01")),
            "{state:?}"
        );
        // No publication time: pacote's cutoff (2015), before the expiry.
        assert_eq!(keys.check("p", "1.0.0", Some(&d), None), SigState::Valid);
    }

    #[test]
    fn malformed_signatures_and_keys_are_invalid_not_panics() {
        let key = TestKey::new();
        let keys = keys(&key, None);
        let bad_b64 = keys.check("p", "1.0.0", Some(&dist("SHA256:test", "@@not base64@@")), None);
        assert!(matches!(&bad_b64, SigState::Invalid { reason } if reason.contains("not base64")));
        let not_der = base64::engine::general_purpose::STANDARD.encode(b"not a DER signature");
        assert_eq!(
            keys.check("p", "1.0.0", Some(&dist("SHA256:test", &not_der)), None)
                .as_str(),
            "invalid"
        );
        let not_list = json!({"integrity": INTEGRITY, "signatures": "x"});
        assert_eq!(keys.check("p", "1.0.0", Some(&not_list), None).as_str(), "invalid");
        let no_sig = json!({"integrity": INTEGRITY, "signatures": [{"keyid": "SHA256:test"}]});
        assert_eq!(keys.check("p", "1.0.0", Some(&no_sig), None).as_str(), "invalid");
        let no_integrity = json!({"signatures": [{"keyid": "SHA256:test", "sig": "AA=="}]});
        assert_eq!(keys.check("p", "1.0.0", Some(&no_integrity), None).as_str(), "invalid");
        let doc = json!({"keys": [{"keyid": "SHA256:bad", "key": "AAAA"}, {"keyid": "SHA256:rsa", "scheme": "rsa", "key": "x"}]});
        let broken = RegistryKeys::parse(serde_json::to_vec(&doc).unwrap().into()).unwrap();
        assert_eq!(broken.len(), 2);
        let state = broken.check("p", "1.0.0", Some(&dist("SHA256:bad", "AA==")), None);
        assert!(
            matches!(&state, SigState::Invalid { reason } if reason.contains("not SPKI DER")),
            "{state:?}"
        );
        let state = broken.check("p", "1.0.0", Some(&dist("SHA256:rsa", "AA==")), None);
        assert!(
            matches!(&state, SigState::Invalid { reason } if reason.contains("unsupported")),
            "{state:?}"
        );
        assert!(RegistryKeys::parse(Bytes::from_static(b"{}")).is_err());
        assert!(
            RegistryKeys::parse(Bytes::from_static(
                br#"{"keys":[{"keyid":"k","key":"","expires":"soon"}]}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn the_shasum_is_the_integrity_of_legacy_versions() {
        let key = TestKey::new();
        let shasum = "0123456789abcdef0123456789abcdef01234567";
        let sri = format!(
            "sha1-{}",
            base64::engine::general_purpose::STANDARD.encode(hex::decode(shasum).unwrap())
        );
        let sig = key.sign(&format!("p@1.0.0:{sri}"));
        let d = json!({"shasum": shasum, "signatures": [{"keyid": "SHA256:test", "sig": sig}]});
        assert_eq!(keys(&key, None).check("p", "1.0.0", Some(&d), None), SigState::Valid);
    }

    #[test]
    fn each_mode_hides_what_it_says() {
        let key = TestKey::new();
        let with = |mode| Signatures {
            mode,
            keys: std::sync::Arc::new(keys(&key, None)),
        };
        let invalid = SigState::invalid("x");
        let unknown = SigState::UnknownKey { keyid: "k".into() };
        let hides = |s: &Signatures| {
            [SigState::Valid, invalid.clone(), SigState::Unsigned, unknown.clone()].map(|st| s.block(&st).is_some())
        };
        assert_eq!(hides(&with(SignatureMode::Warn)), [false; 4]);
        assert_eq!(hides(&with(SignatureMode::HideInvalid)), [false, true, false, true]);
        assert_eq!(hides(&with(SignatureMode::HideUnsigned)), [false, true, true, true]);
        let keyless = Signatures {
            mode: SignatureMode::HideUnsigned,
            keys: std::sync::Arc::default(),
        };
        assert_eq!(hides(&keyless), [false; 4], "without keys nothing is hidden");
        let block = with(SignatureMode::HideInvalid).block(&unknown).unwrap();
        assert_eq!(block.kind, Rule::Signature);
        assert_eq!(block.reason, "signed by k, a key the registry does not publish");
    }
}
