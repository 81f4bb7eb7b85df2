//! Tarball integrity: `dist.integrity` (SRI, strongest supported hash wins) or, for old
//! packages, `dist.shasum` (hex SHA-1).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The digest a tarball must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    algorithm: Algorithm,
    digest: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Algorithm {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Expected {
    /// From a version's `dist`: the strongest hash of `integrity`, else `shasum`.
    pub(crate) fn from_dist(integrity: Option<&str>, shasum: Option<&str>) -> Option<Expected> {
        let from_sri = integrity
            .into_iter()
            .flat_map(str::split_whitespace)
            .filter_map(|entry| {
                let (alg, rest) = entry.split_once('-')?;
                let algorithm = match alg {
                    "sha512" => Algorithm::Sha512,
                    "sha384" => Algorithm::Sha384,
                    "sha256" => Algorithm::Sha256,
                    "sha1" => Algorithm::Sha1,
                    _ => return None,
                };
                let b64 = rest.split('?').next().unwrap_or(rest);
                let digest = STANDARD.decode(b64).ok()?;
                Some(Expected { algorithm, digest })
            });
        let best = from_sri.max_by_key(|e| e.algorithm);
        best.or_else(|| {
            let digest = hex::decode(shasum?.trim()).ok().filter(|d| d.len() == 20)?;
            Some(Expected {
                algorithm: Algorithm::Sha1,
                digest,
            })
        })
    }

    pub(crate) fn verifier(&self) -> Verifier {
        let hasher = match self.algorithm {
            Algorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        };
        Verifier {
            hasher,
            expected: self.digest.clone(),
        }
    }
}

enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

/// Hashes bytes as they stream by and says at the end whether they were the expected ones.
pub(crate) struct Verifier {
    hasher: Hasher,
    expected: Vec<u8>,
}

impl Verifier {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match &mut self.hasher {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn matches(self) -> bool {
        let actual: Vec<u8> = match self.hasher {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        actual == self.expected
    }
}

/// `sha512-<base64>` of some bytes, as npm writes `dist.integrity`.
#[cfg(test)]
fn sri_sha512(data: &[u8]) -> String {
    format!("sha512-{}", STANDARD.encode(Sha512::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expected: &Expected, data: &[u8]) -> bool {
        let mut v = expected.verifier();
        for chunk in data.chunks(3) {
            v.update(chunk);
        }
        v.matches()
    }

    #[test]
    fn sha512_integrity() {
        let data = b"some tarball bytes";
        let e = Expected::from_dist(Some(&sri_sha512(data)), None).unwrap();
        assert!(check(&e, data));
        assert!(!check(&e, b"other bytes"));
    }

    #[test]
    fn shasum_fallback_and_strongest_wins() {
        let data = b"legacy";
        let shasum = hex::encode(Sha1::digest(data));
        let e = Expected::from_dist(None, Some(&shasum)).unwrap();
        assert!(check(&e, data));
        let sha1_sri = format!("sha1-{}", STANDARD.encode(Sha1::digest(b"x")));
        let both = format!("{sha1_sri} {}", sri_sha512(data));
        assert!(check(&Expected::from_dist(Some(&both), None).unwrap(), data));
    }

    #[test]
    fn unusable_values() {
        assert_eq!(Expected::from_dist(None, None), None);
        assert_eq!(Expected::from_dist(Some("md5-abc"), Some("zz")), None);
        assert_eq!(Expected::from_dist(Some("sha512-!!!"), None), None);
    }
}
