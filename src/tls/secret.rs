//! Encryption at rest of private keys (ACME account and certificate keys) in Redis:
//! AES-256-GCM with a random 96-bit nonce per value and the Redis key name as associated
//! data, so a value copied under another key does not decrypt. Values carry a key id, so a
//! rotated key fails clearly instead of producing garbage.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::anyhow;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

const PREFIX: &str = "npg-enc-v1";

#[derive(Clone)]
pub(crate) struct SecretKey {
    cipher: Aes256Gcm,
    id: String,
}

/// A new random key, base64, for `npg gen-key`.
pub(crate) fn generate() -> String {
    let mut key = [0u8; 32];
    rand_bytes(&mut key);
    STANDARD.encode(key)
}

/// `out` filled from the system's secure randomness.
pub(crate) fn rand_bytes(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(out)
        .expect("the system random generator works");
}

/// Why a stored secret does not open (the record is refused, never served).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    #[error("value is not encrypted by npg")]
    NotNpgs,
    #[error("value was encrypted with another key (id {theirs}, ours {ours})")]
    OtherKey { theirs: String, ours: String },
    #[error("encrypted value is not base64")]
    NotBase64,
    #[error("encrypted value is truncated")]
    Truncated,
    #[error("encrypted value does not decrypt (wrong key or tampered)")]
    Tampered,
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
    #[error("{0} is not sealed, but NPG_SECRET_KEY_FILE is set: refused (delete it to start anew)")]
    NotSealed(String),
    #[error("value is encrypted but NPG_SECRET_KEY_FILE is not set")]
    NoKey,
}

impl SecretKey {
    pub(crate) fn load(path: &Path) -> anyhow::Result<SecretKey> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{shown}: {e}"))?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| anyhow!("{shown}: not base64"))?;
        SecretKey::from_bytes(&bytes).map_err(|e| anyhow!("{shown}: {e}"))
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> anyhow::Result<SecretKey> {
        let cipher =
            Aes256Gcm::new_from_slice(bytes).map_err(|_| anyhow!("the key has {} bytes, not 32", bytes.len()))?;
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        Ok(SecretKey { cipher, id })
    }

    /// `npg-enc-v1:<key id>:<base64(nonce ‖ ciphertext)>`
    pub(crate) fn encrypt(&self, plaintext: &[u8], context: &str) -> String {
        let mut nonce = [0u8; 12];
        rand_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a small value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}:{}:{}", self.id, STANDARD.encode(out))
    }

    pub(crate) fn decrypt(&self, value: &str, context: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = value.splitn(3, ':');
        let (Some(PREFIX), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::NotNpgs);
        };
        if id != self.id {
            return Err(SealError::OtherKey {
                theirs: id.to_string(),
                ours: self.id.clone(),
            });
        }
        let data = STANDARD.decode(data).map_err(|_| SealError::NotBase64)?;
        if data.len() < 12 {
            return Err(SealError::Truncated);
        }
        let (nonce, sealed) = data.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| SealError::Truncated)?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Tampered)
    }
}

/// Seals a secret when a key is configured, else keeps it as is.
pub(crate) fn seal(key: Option<&SecretKey>, plaintext: &str, context: &str) -> String {
    match key {
        Some(k) => k.encrypt(plaintext.as_bytes(), context),
        None => plaintext.to_string(),
    }
}

/// Opens what `seal` made. With a key configured, a plaintext value is refused: anyone who
/// can write to Redis could otherwise plant a certificate and key of their own and have every
/// replica serve it. (To turn sealing on for a cluster, delete the plaintext keys: npg then
/// makes a new account and orders a new certificate.)
pub(crate) fn open(key: Option<&SecretKey>, value: &str, context: &str) -> Result<String, SealError> {
    match (key, value.starts_with(PREFIX)) {
        (Some(k), true) => String::from_utf8(k.decrypt(value, context)?).map_err(|_| SealError::NotUtf8),
        (Some(_), false) => Err(SealError::NotSealed(context.to_string())),
        (None, true) => Err(SealError::NoKey),
        (None, false) => Ok(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bound_to_context() {
        let key = SecretKey::from_bytes(&STANDARD.decode(generate()).unwrap()).unwrap();
        let sealed = seal(Some(&key), "-----BEGIN PRIVATE KEY-----", "npg:acme:cert:a");
        assert!(!sealed.contains("PRIVATE KEY"));
        assert_eq!(
            open(Some(&key), &sealed, "npg:acme:cert:a").unwrap(),
            "-----BEGIN PRIVATE KEY-----"
        );
        assert!(
            open(Some(&key), &sealed, "npg:acme:cert:b").is_err(),
            "bound to its Redis key"
        );
        assert!(open(None, &sealed, "npg:acme:cert:a").is_err());
        let other = SecretKey::from_bytes(&[7u8; 32]).unwrap();
        assert!(
            open(Some(&other), &sealed, "npg:acme:cert:a")
                .unwrap_err()
                .to_string()
                .contains("another key")
        );
        assert!(
            open(Some(&key), "-----BEGIN PRIVATE KEY-----", "npg:acme:cert:a")
                .unwrap_err()
                .to_string()
                .contains("not sealed"),
            "a planted plaintext key is refused once a key is configured"
        );
        assert_eq!(open(None, "plain", "x").unwrap(), "plain");
        assert!(SecretKey::from_bytes(&[1u8; 16]).is_err());
    }
}
