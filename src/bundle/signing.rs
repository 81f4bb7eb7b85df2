//! The operator's Ed25519 key that signs a bundle's manifest. Key files are base64 or PEM:
//! the private key as PKCS#8 (`npg export --gen-key <path>` writes it, and the public key
//! beside it as `<path>.pub`; or `openssl genpkey -algorithm ed25519 -out key.pem` and
//! `openssl pkey -in key.pem -pubout -out key.pub.pem`), the public key as its 32 bytes or
//! as the SubjectPublicKeyInfo openssl writes.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0}: neither base64 nor PEM")]
    Encoding(String),
    #[error("{0}: not an Ed25519 key")]
    NotEd25519(String),
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The bytes of a key file: PEM's body, or the whole file, base64-decoded.
fn decode(path: &Path) -> Result<Vec<u8>, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
        path: shown.clone(),
        error,
    })?;
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.trim().chars())
        .collect();
    STANDARD.decode(body).map_err(|_| KeyError::Encoding(shown))
}

pub(crate) struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    pub(crate) fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let der = decode(path)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| KeyError::NotEd25519(path.display().to_string()))?;
        Ok(SigningKey(pair))
    }

    /// Writes a new key to `path` (owner-only) and its public key to `<path>.pub`.
    pub(crate) fn generate(path: &Path) -> Result<(), KeyError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("the system's randomness");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key ring just made");
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        let public = std::path::PathBuf::from(public);
        let write = |p: &Path, bytes: &[u8], private: bool| {
            let text = format!("{}\n", STANDARD.encode(bytes));
            let written = match private {
                true => crate::files::write_private(p, text.as_bytes()),
                false => crate::files::write_atomic(p, text.as_bytes()),
            };
            written.map_err(|error| KeyError::Write {
                path: p.display().to_string(),
                error,
            })
        };
        write(path, pkcs8.as_ref(), true)?;
        write(&public, pair.public_key().as_ref(), false)
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }
}

pub(crate) struct VerifyingKey(Vec<u8>);

impl VerifyingKey {
    pub(crate) fn load(path: &Path) -> Result<VerifyingKey, KeyError> {
        let der = decode(path)?;
        let raw = match der.len() {
            32 => der,
            44 if der[..12] == SPKI_PREFIX => der[12..].to_vec(),
            _ => return Err(KeyError::NotEd25519(path.display().to_string())),
        };
        Ok(VerifyingKey(raw))
    }

    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.key");
        SigningKey::generate(&path).unwrap();
        let key = SigningKey::load(&path).unwrap();
        let public = VerifyingKey::load(&dir.path().join("bundle.key.pub")).unwrap();
        let signature = key.sign(b"manifest");
        assert!(public.verifies(b"manifest", &signature));
        assert!(!public.verifies(b"manifesT", &signature));
        SigningKey::generate(&dir.path().join("other")).unwrap();
        let other = VerifyingKey::load(&dir.path().join("other.pub")).unwrap();
        assert!(!other.verifies(b"manifest", &signature));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn openssl_pem_files() {
        // `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` of the same key.
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIEz+pobqNkUOVVQ5EB8890/zSEFWiNPqcnuSMnMcncA6\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAeOsodoPLlpDNZ8/mVqHEDOnuBys5sjDv25emxpp5w48=\n-----END PUBLIC KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), private).unwrap();
        std::fs::write(dir.path().join("k.pub.pem"), public).unwrap();
        let key = SigningKey::load(&dir.path().join("k.pem")).unwrap();
        let verifying = VerifyingKey::load(&dir.path().join("k.pub.pem")).unwrap();
        assert!(verifying.verifies(b"m", &key.sign(b"m")));
        std::fs::write(dir.path().join("bad"), "not base64 !").unwrap();
        assert!(matches!(
            VerifyingKey::load(&dir.path().join("bad")),
            Err(KeyError::Encoding(_))
        ));
        std::fs::write(dir.path().join("short"), STANDARD.encode([1u8; 7])).unwrap();
        assert!(SigningKey::load(&dir.path().join("short")).is_err());
    }
}
