//! `npg import`: a bundle checked whole before anything enters the store: the manifest's
//! signature, every file's size and SHA-512, every tarball against its packument's
//! `dist.integrity` (and the lockfile's). The files are unpacked into a staging directory
//! inside STORAGE_DIR (same file system: the final renames are atomic) that goes away with
//! whatever it holds when anything is wrong. Then the tarballs go where npg caches them and
//! the packuments where npg serves them from when upstream fails (`cache::imported`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha512};

use super::manifest::{FileRecord, Kind, MANIFEST, Manifest, ManifestError, SIGNATURE, sri_sha512};
use super::signing::VerifyingKey;
use crate::npm::integrity::Expected;
use crate::npm::name::PackageName;
use crate::npm::packument::Document;
use crate::npm::tarball::ScriptProbe;
use crate::proxy::cache::bucket::{Bucket, BucketSettings};
use crate::proxy::cache::disk::TarballStore;
use crate::proxy::cache::imported::ImportedDocs;

/// The largest manifest read (a few hundred bytes per file).
const MAX_MANIFEST: u64 = 64 << 20;

/// Why a bundle is refused, whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("cannot read the bundle: {0}")]
    Read(#[from] std::io::Error),
    #[error("the bundle does not start with {MANIFEST} and {SIGNATURE}")]
    NoManifest,
    #[error("the manifest's signature does not verify with the given public key")]
    Signature,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}: not in the manifest, or twice in the bundle")]
    Unlisted(String),
    #[error("{0}: missing from the bundle")]
    Missing(String),
    #[error("{0}: size or SHA-512 differs from the manifest")]
    Altered(String),
    #[error("{path}: {why}")]
    Packument { path: String, why: String },
    #[error("{0}: does not match its packument's dist.integrity")]
    Integrity(String),
    #[error("{0}: does not match the lockfile's integrity")]
    LockfileIntegrity(String),
    #[error("{0}: the packument gives this version no such tarball")]
    NotInPackument(String),
    #[error("{0}: runs install scripts its manifest does not declare (or they cannot be read)")]
    UndeclaredScript(String),
    /// Every check passed; writing into the store failed part way (re-running is safe).
    #[error("writing into STORAGE_DIR or the bucket failed after every check passed: {0}")]
    Store(std::io::Error),
}

/// What was imported.
pub(crate) struct Imported {
    pub(crate) packuments: usize,
    pub(crate) tarballs: usize,
}

/// Checks `bundle` against `key` and, only when all of it holds, puts it into `storage`.
pub(crate) fn import(
    bundle: &Path,
    key: &VerifyingKey,
    storage: &Path,
    bucket: Option<&BucketSettings>,
) -> Result<Imported, Refused> {
    let mut archive = tar::Archive::new(zstd::Decoder::new(std::fs::File::open(bundle)?)?);
    let mut entries = archive.entries()?;
    let mut next_named = |name: &str| -> Result<Vec<u8>, Refused> {
        let mut entry = entries.next().ok_or(Refused::NoManifest)??;
        if entry.path_bytes().as_ref() != name.as_bytes() {
            return Err(Refused::NoManifest);
        }
        let mut bytes = Vec::new();
        (&mut entry).take(MAX_MANIFEST).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let manifest_bytes = next_named(MANIFEST)?;
    let signature = next_named(SIGNATURE)?;
    if !key.verifies(&manifest_bytes, &signature) {
        return Err(Refused::Signature);
    }
    let manifest = Manifest::parse(&manifest_bytes)?;

    std::fs::create_dir_all(storage)?;
    let staging = tempfile::Builder::new().prefix(".import-").tempdir_in(storage)?;
    let mut records: HashMap<&str, &FileRecord> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut staged: HashMap<&str, PathBuf> = HashMap::new();
    for entry in entries {
        let mut entry = entry?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let record = records.remove(path.as_str()).ok_or(Refused::Unlisted(path.clone()))?;
        let local = staging.path().join(staged.len().to_string());
        let (size, integrity) = copy_hashing(&mut entry, &local, record.size)?;
        if size != record.size || integrity != record.integrity {
            return Err(Refused::Altered(path));
        }
        staged.insert(record.path.as_str(), local);
    }
    if let Some(path) = records.into_keys().next() {
        return Err(Refused::Missing(path.to_string()));
    }

    // Every tarball against what its packument says.
    let mut documents: HashMap<&str, Vec<u8>> = HashMap::new();
    for f in manifest.files.iter().filter(|f| f.kind == Kind::Packument) {
        let body = std::fs::read(&staged[f.path.as_str()])?;
        let name = PackageName::parse(&f.package).map_err(|_| ManifestError::Name(f.package.clone()))?;
        Document::parse(&body, &name).map_err(|e| Refused::Packument {
            path: f.path.clone(),
            why: e.to_string(),
        })?;
        documents.insert(f.package.as_str(), body);
    }
    for f in manifest.files.iter().filter(|f| f.kind == Kind::Tarball) {
        check_tarball(f, &documents[f.package.as_str()], &staged[f.path.as_str()])?;
    }

    // All holds: into the store.
    let store = TarballStore::new(storage, 0).map_err(Refused::Store)?;
    let uploader = bucket.map(Uploader::new).transpose()?;
    let docs = ImportedDocs::new(storage);
    for f in &manifest.files {
        let name = PackageName::parse(&f.package).map_err(|_| ManifestError::Name(f.package.clone()))?;
        match f.kind {
            Kind::Packument => {
                let gz = crate::proxy::rendered::gzip(&documents[f.package.as_str()], flate2::Compression::default());
                docs.put(&name, &gz).map_err(Refused::Store)?;
            }
            Kind::Tarball if let Some(uploader) = &uploader => {
                uploader.put(&name, f.file(), &staged[f.path.as_str()])?;
            }
            Kind::Tarball => {
                let dest = store.path(&name, f.file()).ok_or(ManifestError::Path(f.path.clone()))?;
                std::fs::create_dir_all(dest.parent().unwrap_or(storage)).map_err(Refused::Store)?;
                std::fs::rename(&staged[f.path.as_str()], &dest).map_err(Refused::Store)?;
            }
        }
    }
    Ok(Imported {
        packuments: documents.len(),
        tarballs: manifest.files.len() - documents.len(),
    })
}

/// Checked tarballs into the bucket of TARBALL_STORE=s3 (the local caches fill on reads).
struct Uploader {
    bucket: Bucket,
    runtime: tokio::runtime::Runtime,
}

impl Uploader {
    fn new(settings: &BucketSettings) -> Result<Uploader, Refused> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let bucket = Bucket::new(settings, metrics)
            .map_err(|e| Refused::Store(std::io::Error::other(format!("S3_BUCKET: {e}"))))?;
        Ok(Uploader { bucket, runtime })
    }

    fn put(&self, name: &PackageName, file: &str, path: &Path) -> Result<(), Refused> {
        match self.runtime.block_on(self.bucket.put(name, file, path)) {
            true => Ok(()),
            false => Err(Refused::Store(std::io::Error::other(format!(
                "cannot upload {name}/{file} to the bucket"
            )))),
        }
    }
}

/// Copies at most `max` + 1 bytes of `from` to a new file `to` (synced), with their count
/// and SHA-512.
fn copy_hashing(from: &mut impl Read, to: &Path, max: u64) -> std::io::Result<(u64, String)> {
    let mut out = std::fs::File::create_new(to)?;
    let (mut hasher, mut size, mut buf) = (Sha512::new(), 0u64, vec![0u8; 64 * 1024]);
    let mut limited = from.take(max + 1);
    loop {
        let n = limited.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    out.sync_all()?;
    Ok((size, sri_sha512(hasher)))
}

/// A staged tarball against its version's `dist` in the packument (and the lockfile's
/// integrity when the manifest carries it), and what it runs at install against what its
/// manifest declares, as npg checks every tarball it caches (`npm::tarball`).
fn check_tarball(f: &FileRecord, document: &[u8], local: &Path) -> Result<(), Refused> {
    let bad = |why: String| Refused::Packument {
        path: f.path.clone(),
        why,
    };
    let name = PackageName::parse(&f.package).map_err(|e| bad(e.to_string()))?;
    let doc = Document::parse(document, &name).map_err(|e| bad(e.to_string()))?;
    let (index, _, _) = doc.index(&name);
    let info = index
        .files
        .get(f.file())
        .filter(|info| f.version.as_ref() == Some(&info.version))
        .ok_or_else(|| Refused::NotInPackument(f.path.clone()))?;
    let expected = Expected::from_dist(info.integrity.as_deref(), info.shasum.as_deref());
    let bytes = std::fs::read(local)?;
    let matches = |e: &Expected| {
        let mut verifier = e.verifier();
        verifier.update(&bytes);
        verifier.matches()
    };
    if !expected.as_ref().is_some_and(matches) {
        return Err(Refused::Integrity(f.path.clone()));
    }
    let locked = f
        .lockfile_integrity
        .as_deref()
        .map(|i| Expected::from_dist(Some(i), None));
    if locked.is_some_and(|e| !e.as_ref().is_some_and(matches)) {
        return Err(Refused::LockfileIntegrity(f.path.clone()));
    }
    let mut probe = ScriptProbe::default();
    probe.update(&bytes);
    if !probe.finish().agrees(info.install_script) {
        return Err(Refused::UndeclaredScript(f.path.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sri(bytes: &[u8]) -> String {
        sri_sha512(Sha512::new_with_prefix(bytes))
    }

    fn record(lockfile_integrity: Option<String>) -> FileRecord {
        FileRecord {
            path: "tarballs/a/a-1.0.0.tgz".into(),
            kind: Kind::Tarball,
            package: "a".into(),
            version: Some("1.0.0".into()),
            size: 3,
            integrity: sri(b"tgz"),
            lockfile_integrity,
        }
    }

    fn document(integrity: &str, file: &str) -> Vec<u8> {
        let doc = serde_json::json!({"name": "a", "versions": {"1.0.0": {"dist": {
            "tarball": format!("http://127.0.0.1:3000/npm/a/-/{file}"), "integrity": integrity}}}});
        doc.to_string().into_bytes()
    }

    #[test]
    fn tarballs_must_match_their_packument_and_lockfile() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("0");
        std::fs::write(&local, b"tgz").unwrap();
        let good = document(&sri(b"tgz"), "a-1.0.0.tgz");
        assert!(check_tarball(&record(None), &good, &local).is_ok());
        assert!(check_tarball(&record(Some(sri(b"tgz"))), &good, &local).is_ok());
        assert!(matches!(
            check_tarball(&record(Some(sri(b"other"))), &good, &local),
            Err(Refused::LockfileIntegrity(_))
        ));
        let other = document(&sri(b"other"), "a-1.0.0.tgz");
        assert!(matches!(
            check_tarball(&record(None), &other, &local),
            Err(Refused::Integrity(_))
        ));
        let elsewhere = document(&sri(b"tgz"), "a-9.tgz");
        assert!(matches!(
            check_tarball(&record(None), &elsewhere, &local),
            Err(Refused::NotInPackument(_))
        ));
        let no_hash = br#"{"name": "a", "versions": {"1.0.0": {"dist": {"tarball": "x/a-1.0.0.tgz"}}}}"#;
        assert!(matches!(
            check_tarball(&record(None), no_hash, &local),
            Err(Refused::Integrity(_))
        ));
    }

    #[test]
    fn a_tarball_running_an_undeclared_script_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("0");
        let mut tar = tar::Builder::new(Vec::new());
        let pj = br#"{"name":"a","scripts":{"postinstall":"node evil.js"}}"#;
        let mut h = tar::Header::new_ustar();
        h.set_size(pj.len() as u64);
        tar.append_data(&mut h, "package/package.json", &pj[..]).unwrap();
        let tgz = crate::proxy::rendered::gzip(&tar.into_inner().unwrap(), flate2::Compression::fast());
        std::fs::write(&local, &tgz).unwrap();
        let record = FileRecord {
            size: tgz.len() as u64,
            integrity: sri(&tgz),
            ..record(None)
        };
        let undeclared = document(&sri(&tgz), "a-1.0.0.tgz");
        assert!(matches!(
            check_tarball(&record, &undeclared, &local),
            Err(Refused::UndeclaredScript(_))
        ));
        let doc = serde_json::json!({"name": "a", "versions": {"1.0.0": {
            "scripts": {"postinstall": "node evil.js"},
            "dist": {"tarball": "http://127.0.0.1:3000/npm/a/-/a-1.0.0.tgz", "integrity": sri(&tgz)}}}});
        assert!(
            check_tarball(&record, doc.to_string().as_bytes(), &local).is_ok(),
            "declared"
        );
    }
}
