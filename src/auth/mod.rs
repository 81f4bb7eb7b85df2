//! Access control (off unless AUTH_TOKENS_FILE is set): the table of tokens, by the SHA-256 of
//! each, with a name and a permission. Plain tokens are never stored: a presented token is
//! hashed and compared, in constant time, with every hash of the table.
//!
//! File format, one entry a line, `#` comments and blank lines allowed:
//! `<sha256 hex of the token> <name> <perm>[,<perm>...]` with perms `read`, `publish`,
//! `admin` (admin implies publish, publish implies read).

use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token may do; each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Permission {
    /// Install: packuments, manifests, tarballs, search, audit.
    Read,
    /// Writes under `/npm/`: publish, unpublish, dist-tag changes.
    Publish,
    /// npg's own API: `/metrics`, `/api/guard/*`, health details.
    Admin,
}

impl Permission {
    fn parse(s: &str) -> Option<Permission> {
        match s {
            "read" => Some(Permission::Read),
            "publish" => Some(Permission::Publish),
            "admin" => Some(Permission::Admin),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Publish => "publish",
            Permission::Admin => "admin",
        }
    }
}

/// Who presented a known token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) name: Arc<str>,
    pub(crate) permission: Permission,
}

impl Identity {
    pub(crate) fn may(&self, needed: Permission) -> bool {
        self.permission >= needed
    }
}

type Hash = [u8; 32];

/// The SHA-256 of a token: what the file holds.
pub(crate) fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A line of the file that is not an entry, by number (from 1).
#[derive(Debug, thiserror::Error)]
#[error("{file}: line {line}: {reason}")]
pub(crate) struct TokensError {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) reason: String,
}

/// The tokens in force, immutable.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    entries: Vec<(Hash, Identity)>,
}

impl Tokens {
    /// Reads and parses the file (line 0 in the error when it cannot be read).
    pub(crate) fn load(path: &Path) -> Result<Tokens, TokensError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokensError {
            file: file.clone(),
            line: 0,
            reason: format!("cannot read it ({e})"),
        })?;
        Tokens::parse(&text).map_err(|(line, reason)| TokensError { file, line, reason })
    }

    /// Parses the file's text; `Err((line, reason))` for the first bad line.
    pub(crate) fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut entries: Vec<(Hash, Identity)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (hash, identity) = parse_entry(line).map_err(|reason| (i + 1, reason.to_string()))?;
            if entries.iter().any(|(h, _)| *h == hash) {
                return Err((i + 1, "this token hash is listed twice".into()));
            }
            entries.push((hash, identity));
        }
        Ok(Tokens { entries })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who `token` belongs to. Every hash is compared, in constant time, whatever matches, so
    /// the time taken tells nothing about the table.
    pub(crate) fn identify(&self, token: &str) -> Option<Identity> {
        let presented: Hash = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (hash, _)) in self.entries.iter().enumerate() {
            let hit = hash.ct_eq(&presented);
            index.conditional_assign(&(i as u64), hit);
            found |= hit;
        }
        bool::from(found).then(|| self.entries[index as usize].1.clone())
    }
}

fn parse_entry(line: &str) -> anyhow::Result<(Hash, Identity)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [hash, name, perms] = fields[..] else {
        return Err(anyhow!(
            "expected `<sha256 hex> <name> <perm>[,<perm>...]` (make the hash with `npg hash-token`)"
        ));
    };
    let mut digest: Hash = [0; 32];
    hex::decode_to_slice(hash, &mut digest)
        .map_err(|_| anyhow!("the first field is not a SHA-256 in hex (64 characters); use `npg hash-token`"))?;
    let mut permission = None;
    for perm in perms.split(',') {
        let p = Permission::parse(perm.trim())
            .ok_or_else(|| anyhow!("unknown permission `{perm}` (use read, publish, admin)"))?;
        permission = permission.max(Some(p));
    }
    let permission = permission.ok_or_else(|| anyhow!("no permission given"))?;
    let name = Arc::from(name);
    Ok((digest, Identity { name, permission }))
}

/// The access control of a running npg: the table in force, swapped whole on reload.
pub(crate) struct Auth {
    tokens: ArcSwap<Tokens>,
}

impl Auth {
    pub(crate) fn new(tokens: Tokens) -> Auth {
        Auth {
            tokens: ArcSwap::from_pointee(tokens),
        }
    }

    pub(crate) fn identify(&self, token: &str) -> Option<Identity> {
        self.tokens.load().identify(token)
    }

    pub(crate) fn set(&self, tokens: Tokens) {
        self.tokens.store(Arc::new(tokens));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_identifies() {
        let text = format!(
            "# ci\n\n{} ci read\n  {} alice publish,read  \n{} ops admin\n",
            hash_token("t-ci"),
            hash_token("t-alice").to_uppercase(),
            hash_token("t-ops"),
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 3);
        let ci = tokens.identify("t-ci").unwrap();
        assert_eq!((&*ci.name, ci.permission), ("ci", Permission::Read));
        assert!(ci.may(Permission::Read) && !ci.may(Permission::Publish));
        let alice = tokens.identify("t-alice").unwrap();
        assert_eq!(alice.permission, Permission::Publish);
        assert!(alice.may(Permission::Read) && !alice.may(Permission::Admin));
        assert!(tokens.identify("t-ops").unwrap().may(Permission::Publish));
        assert!(tokens.identify("t-nobody").is_none());
        assert!(tokens.identify("").is_none());
        assert!(Tokens::default().identify("t-ci").is_none());
    }

    #[test]
    fn bad_lines_are_named() {
        let h = hash_token("x");
        let cases = [
            (format!("{h} ci\n"), 1, "expected"),
            (format!("# c\n{h} ci write\n"), 2, "unknown permission `write`"),
            ("abc ci read\n".to_string(), 1, "SHA-256"),
            (format!("{h} a read\n{h} b admin\n"), 2, "twice"),
            (format!("{h} ci read extra\n"), 1, "expected"),
            (format!("{h} ci read,\n"), 1, "unknown permission"),
        ];
        for (text, line, reason) in cases {
            let (at, why) = Tokens::parse(&text).unwrap_err();
            assert_eq!(at, line, "{text}");
            assert!(why.contains(reason), "{why}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "nonsense\n").unwrap();
        let err = Tokens::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 1"),
            "{err}"
        );
        let err = Tokens::load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
