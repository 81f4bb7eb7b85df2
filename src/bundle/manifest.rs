//! A bundle's manifest: every file it holds with its size and SHA-512, signed as a whole
//! (`manifest.sig`). The paths inside the archive follow from the records (a file's place is
//! never taken from the archive), so `check` refuses any record that would put it elsewhere.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::npm::name::PackageName;

pub(crate) const MANIFEST: &str = "manifest.json";
pub(crate) const SIGNATURE: &str = "manifest.sig";
const FORMAT: &str = "npg-bundle/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A full packument as the exporting npg served it.
    Packument,
    Tarball,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    pub(crate) path: String,
    pub(crate) kind: Kind,
    pub(crate) package: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    pub(crate) size: u64,
    /// `sha512-<base64>` of the file.
    pub(crate) integrity: String,
    /// A tarball's integrity as the lockfile recorded it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lockfile_integrity: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    pub(crate) created_ms: u64,
    pub(crate) files: Vec<FileRecord>,
}

/// Why a manifest is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ManifestError {
    #[error("not a bundle manifest: {0}")]
    Parse(String),
    #[error("unknown bundle format {0:?} (this npg reads {FORMAT})")]
    Format(String),
    #[error("{0}: not a package name npg accepts")]
    Name(String),
    #[error("{0}: not where its record puts it")]
    Path(String),
    #[error("{0}: listed twice")]
    Twice(String),
    #[error("{0}: a tarball without its version or its package's packument")]
    Orphan(String),
}

pub(crate) fn packument_path(name: &str) -> String {
    format!("packuments/{name}.json")
}

pub(crate) fn tarball_path(name: &str, file: &str) -> String {
    format!("tarballs/{name}/{file}")
}

/// `sha512-<base64>`, as npm writes integrity.
pub(crate) fn sri_sha512(digest: Sha512) -> String {
    format!("sha512-{}", STANDARD.encode(digest.finalize()))
}

impl FileRecord {
    /// The tarball's file name (the last part of its path).
    pub(crate) fn file(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }
}

impl Manifest {
    pub(crate) fn new(created_ms: u64, mut files: Vec<FileRecord>) -> Manifest {
        files.sort();
        Manifest {
            format: FORMAT.into(),
            created_ms,
            files,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes")
    }

    /// Parses and checks the records: valid names, paths as the records make them, each
    /// once, every tarball with a version and its package's packument.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(ManifestError::Format(manifest.format));
        }
        let mut paths = BTreeSet::new();
        let packuments: BTreeSet<&str> = manifest
            .files
            .iter()
            .filter(|f| f.kind == Kind::Packument)
            .map(|f| f.package.as_str())
            .collect();
        for f in &manifest.files {
            PackageName::parse(&f.package).map_err(|_| ManifestError::Name(f.package.clone()))?;
            let file = f.file();
            let expected = match f.kind {
                Kind::Packument => packument_path(&f.package),
                Kind::Tarball => tarball_path(&f.package, file),
            };
            // A tarball's file name is one plain component (`TarballStore::path` checks again).
            let plain = !file.is_empty() && !file.starts_with('.') && !file.contains('\\');
            if f.path != expected || !plain {
                return Err(ManifestError::Path(f.path.clone()));
            }
            if !paths.insert(f.path.as_str()) {
                return Err(ManifestError::Twice(f.path.clone()));
            }
            let orphan = f.kind == Kind::Tarball && (f.version.is_none() || !packuments.contains(f.package.as_str()));
            if orphan {
                return Err(ManifestError::Orphan(f.path.clone()));
            }
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, kind: Kind, package: &str, version: Option<&str>) -> FileRecord {
        FileRecord {
            path: path.into(),
            kind,
            package: package.into(),
            version: version.map(str::to_string),
            size: 1,
            integrity: "sha512-x".into(),
            lockfile_integrity: None,
        }
    }

    fn parse(files: Vec<FileRecord>) -> Result<Manifest, ManifestError> {
        Manifest::parse(&Manifest::new(1, files).to_bytes())
    }

    #[test]
    fn records_must_say_where_their_file_goes() {
        let doc = record("packuments/@s/a.json", Kind::Packument, "@s/a", None);
        let tgz = record("tarballs/@s/a/a-1.0.0.tgz", Kind::Tarball, "@s/a", Some("1.0.0"));
        let ok = parse(vec![doc.clone(), tgz.clone()]).unwrap();
        assert_eq!(ok.files.len(), 2);
        assert_eq!(ok.files[1].file(), "a-1.0.0.tgz");

        let escape = record("tarballs/@s/a/../../../etc/x", Kind::Tarball, "@s/a", Some("1.0.0"));
        assert!(matches!(parse(vec![doc.clone(), escape]), Err(ManifestError::Path(_))));
        let hidden = record("tarballs/@s/a/.tmp", Kind::Tarball, "@s/a", Some("1.0.0"));
        assert!(matches!(parse(vec![doc.clone(), hidden]), Err(ManifestError::Path(_))));
        let elsewhere = record("packuments/b.json", Kind::Packument, "@s/a", None);
        assert!(matches!(parse(vec![elsewhere]), Err(ManifestError::Path(_))));
        let bad_name = record("packuments/../x.json", Kind::Packument, "../x", None);
        assert!(matches!(parse(vec![bad_name]), Err(ManifestError::Name(_))));
        assert!(matches!(
            parse(vec![doc.clone(), doc.clone()]),
            Err(ManifestError::Twice(_))
        ));
        assert!(matches!(parse(vec![tgz]), Err(ManifestError::Orphan(_))));
        assert!(matches!(Manifest::parse(b"{}"), Err(ManifestError::Parse(_))));
        let other = br#"{"format": "npg-bundle/9", "created_ms": 1, "files": []}"#;
        assert!(matches!(Manifest::parse(other), Err(ManifestError::Format(_))));
    }
}
