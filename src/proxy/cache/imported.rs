//! Packuments imported from a bundle (`npg import`), kept on disk under
//! `<STORAGE_DIR>/.imported/<name as one URL segment>.json.gz`, a directory no package name
//! reaches: the last resort of the packument service when upstream fails and no cached copy
//! is left, so an air-gapped npg with no upstream at all serves them. They are raw documents,
//! rendered under the policy in force like any other.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::npm::name::PackageName;

pub(crate) struct ImportedDocs {
    dir: PathBuf,
}

impl ImportedDocs {
    pub(crate) fn new(storage_dir: &Path) -> ImportedDocs {
        ImportedDocs {
            dir: storage_dir.join(".imported"),
        }
    }

    /// One file per name: `@s%2fa.json.gz` (a valid name has no `..`, no leading dot, no `/`
    /// once its scope's is encoded).
    fn path(&self, name: &PackageName) -> PathBuf {
        self.dir.join(format!("{}.json.gz", name.url_segment()))
    }

    /// Stores a gzip'd document, atomically. Blocking.
    pub(crate) fn put(&self, name: &PackageName, gz: &[u8]) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        crate::files::write_atomic(&self.path(name), gz)
    }

    /// The gzip'd document imported for `name`, unless it is over `max` bytes, and when it
    /// was imported (unix ms).
    pub(crate) async fn get(&self, name: &PackageName, max: usize) -> Option<(Bytes, u64)> {
        let path = self.path(name);
        let read = tokio::task::spawn_blocking(move || -> io::Result<Option<(Bytes, u64)>> {
            let file = match std::fs::File::open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                file => file?,
            };
            let modified = file.metadata()?.modified()?;
            let ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            let mut gz = Vec::new();
            file.take(max as u64 + 1).read_to_end(&mut gz)?;
            if gz.len() > max {
                return Err(io::Error::other(format!("larger than {max} bytes")));
            }
            Ok(Some((Bytes::from(gz), ms)))
        });
        match read.await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(package = %name, error = %e, "unusable imported packument; ignored");
                None
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kept_per_name_beside_the_tarballs() {
        let dir = tempfile::tempdir().unwrap();
        let docs = ImportedDocs::new(dir.path());
        let name = PackageName::parse("@s/a").unwrap();
        assert!(docs.get(&name, 100).await.is_none());
        docs.put(&name, b"gz bytes").unwrap();
        assert!(dir.path().join(".imported/@s%2fa.json.gz").is_file());
        let (gz, ms) = docs.get(&name, 100).await.unwrap();
        assert_eq!(&gz[..], b"gz bytes");
        assert!(ms > 0);
        assert!(docs.get(&name, 3).await.is_none(), "over the limit");
        assert!(docs.get(&PackageName::parse("a").unwrap(), 100).await.is_none());
    }
}
