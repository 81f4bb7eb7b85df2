//! Tarballs on disk in the Node NPG's layout, `<root>/<2 first chars of name, lowercased>/
//! <name>/<file>`, so an existing cache volume is reused as is. Files only appear by an atomic
//! rename of a complete, verified temp file, so readers (and replicas sharing the volume)
//! never see a partial tarball. Temp files live in `<root>/.tmp`, which no name can reach.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tempfile::TempPath;

use super::hot::HotTarballs;
use super::large::{Chunks, FileId, Large, LargeReads};
use crate::npm::name::PackageName;

/// Tarballs up to this size (most of npm's) are served from one read into memory, and kept
/// there (`HotTarballs`); larger ones are shared while sent (`LargeReads`).
const READ_WHOLE_MAX: u64 = 256 * 1024;

/// A tarball found on disk.
pub(crate) enum Cached {
    Whole(Bytes),
    /// Too large to hold now: a file to stream.
    File(Chunks),
}

impl Cached {
    pub(crate) fn size(&self) -> u64 {
        match self {
            Cached::Whole(b) => b.len() as u64,
            Cached::File(chunks) => chunks.len(),
        }
    }
}

pub(crate) struct TarballStore {
    root: PathBuf,
    tmp: PathBuf,
    hot: HotTarballs,
    large: LargeReads,
    /// Whether a read marks the file used (its mtime): the local cache in front of a bucket
    /// evicts the least recently used first.
    touch: bool,
}

/// A tarball's place in the layout, relative to the root; `None` if the name or file could
/// leave it (they are validated before, this is the last guard).
pub(crate) fn relative(name: &PackageName, file: &str) -> Option<PathBuf> {
    let rel = Path::new(&name.shard()).join(name.as_str()).join(file);
    let normal = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let leading_dot = rel
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
    (normal && !leading_dot).then_some(rel)
}

/// A tarball being written: deleted on drop unless persisted.
pub(crate) struct Pending {
    pub(crate) file: tokio::fs::File,
    path: TempPath,
}

impl Pending {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl TarballStore {
    /// The store under `root`, keeping up to `memory_bytes` of small tarballs in memory too,
    /// and as much again of large ones while they are sent.
    pub(crate) fn new(root: &Path, memory_bytes: u64) -> io::Result<TarballStore> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp)?;
        let hot = HotTarballs::new(memory_bytes);
        let large = LargeReads::new(memory_bytes);
        let touch = false;
        Ok(TarballStore {
            root,
            tmp,
            hot,
            large,
            touch,
        })
    }

    /// The store as a bounded cache: reads mark files used.
    pub(crate) fn touching_reads(mut self) -> TarballStore {
        self.touch = true;
        self
    }

    /// Where a tarball lives; `None` if the name or file could leave the root.
    pub(crate) fn path(&self, name: &PackageName, file: &str) -> Option<PathBuf> {
        relative(name, file).map(|rel| self.root.join(rel))
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A small tarball from memory only (the hot path when nothing else is local).
    pub(crate) async fn in_memory(&self, name: &PackageName, file: &str) -> Option<Bytes> {
        self.hot.get(name, file).await
    }

    pub(crate) async fn remember(&self, name: &PackageName, file: &str, bytes: Bytes) {
        self.hot.insert(name, file, bytes).await;
    }

    /// A cached tarball: from memory, or read whole from disk when small (then kept in
    /// memory), else shared with the responses sending it or streamed (`LargeReads`). At most
    /// one trip to the blocking pool.
    pub(crate) async fn open(&self, name: &PackageName, file: &str) -> Option<Cached> {
        if let Some(bytes) = self.hot.get(name, file).await {
            return Some(Cached::Whole(bytes));
        }
        let path = self.path(name, file)?;
        let touch = self.touch;
        let (large, n, file_name) = (self.large.clone(), name.clone(), file.to_string());
        let cached = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path).ok()?;
            let meta = f.metadata().ok()?;
            if !meta.is_file() {
                return None;
            }
            if touch {
                let _ = f.set_modified(SystemTime::now());
            }
            if meta.len() > READ_WHOLE_MAX {
                return match large.open(&n, &file_name, f, FileId::of(&meta)) {
                    Ok(Large::Copy(bytes)) => Some(Cached::Whole(bytes)),
                    Ok(Large::Chunks(chunks)) => Some(Cached::File(chunks)),
                    Err(e) => {
                        tracing::warn!(error = %e, package = %n, file = file_name, "cannot read a cached tarball");
                        None
                    }
                };
            }
            // Cached files are complete and never rewritten in place (atomic rename only).
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            f.read_to_end(&mut bytes).ok()?;
            Some(Cached::Whole(Bytes::from(bytes)))
        })
        .await
        .ok()
        .flatten()?;
        if let Cached::Whole(bytes) = &cached
            && bytes.len() as u64 <= READ_WHOLE_MAX
        {
            self.hot.insert(name, file, bytes.clone()).await;
        }
        Some(cached)
    }

    /// A new temp file beside the cache (same file system, so the final rename is atomic).
    pub(crate) fn pending(&self) -> io::Result<Pending> {
        let (file, path) = tempfile::Builder::new()
            .prefix("dl-")
            .suffix(".part")
            .tempfile_in(&self.tmp)?
            .into_parts();
        Ok(Pending {
            file: tokio::fs::File::from_std(file),
            path,
        })
    }

    /// Flushes a complete, verified download and renames it into place.
    pub(crate) async fn persist(&self, pending: Pending, name: &PackageName, file: &str) -> io::Result<PathBuf> {
        let dest = self
            .path(name, file)
            .ok_or_else(|| io::Error::other("tarball path outside the storage dir"))?;
        let Pending { file: f, path } = pending;
        f.sync_data().await?;
        drop(f);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || path.persist(&dest2).map_err(|e| e.error))
            .await
            .map_err(io::Error::other)??;
        Ok(dest)
    }

    /// Deletes cached tarballs newly found malicious: the given files, or every file of the
    /// package. Returns how many files went. Blocking: call it off the async workers.
    pub(crate) fn purge(&self, name: &PackageName, files: Option<&[String]>) -> usize {
        let Some(dir) = self.path(name, "x.tgz").and_then(|p| p.parent().map(Path::to_path_buf)) else {
            return 0;
        };
        let Some(files) = files else {
            self.hot.purge(name, None);
            self.large.purge(name, None);
            let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
            let removed = entries
                .flatten()
                .filter(|e| e.path().is_file() && std::fs::remove_file(e.path()).is_ok());
            return removed.count();
        };
        let mut removed = 0;
        for file in files {
            self.hot.purge(name, Some(file));
            self.large.purge(name, Some(file));
            if self.path(name, file).is_some_and(|p| std::fs::remove_file(p).is_ok()) {
                removed += 1;
            }
        }
        removed
    }

    /// Removes temp files older than `age` (left by a crash; younger ones may belong to a
    /// replica sharing the volume).
    pub(crate) fn clean_temp(&self, age: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.tmp) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= age);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn node_npg_layout_and_atomic_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = TarballStore::new(dir.path(), 1 << 20).unwrap();
        let name = PackageName::parse("@Babel/core").unwrap();
        let expected = store.root.join("@b/@Babel/core/core-7.23.0.tgz");
        assert_eq!(store.path(&name, "core-7.23.0.tgz"), Some(expected.clone()));
        assert!(store.open(&name, "core-7.23.0.tgz").await.is_none());

        let mut p = store.pending().unwrap();
        p.file.write_all(b"tgz bytes").await.unwrap();
        store.persist(p, &name, "core-7.23.0.tgz").await.unwrap();
        assert_eq!(std::fs::read(&expected).unwrap(), b"tgz bytes");
        match store.open(&name, "core-7.23.0.tgz").await.unwrap() {
            Cached::Whole(bytes) => assert_eq!(&bytes[..], b"tgz bytes"),
            Cached::File(..) => panic!("a small tarball is read whole"),
        }
        let big = vec![7u8; READ_WHOLE_MAX as usize + 1];
        let mut p = store.pending().unwrap();
        p.file.write_all(&big).await.unwrap();
        store.persist(p, &name, "core-7.24.0.tgz").await.unwrap();
        let Cached::Whole(first) = store.open(&name, "core-7.24.0.tgz").await.unwrap() else {
            panic!("a large tarball within the budget is read whole")
        };
        assert_eq!(first, big);
        let Cached::Whole(second) = store.open(&name, "core-7.24.0.tgz").await.unwrap() else {
            panic!("and shared")
        };
        assert_eq!(first.as_ptr(), second.as_ptr(), "one copy for both responses");
        assert!(
            store.hot.get(&name, "core-7.24.0.tgz").await.is_none(),
            "not kept once sent"
        );
        assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn dropped_downloads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = TarballStore::new(dir.path(), 1 << 20).unwrap();
        let mut p = store.pending().unwrap();
        p.file.write_all(b"half").await.unwrap();
        drop(p);
        assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
        let _kept = store.pending().unwrap();
        assert_eq!(store.clean_temp(Duration::from_secs(3600)), 0);
        assert_eq!(store.clean_temp(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn purges_one_version_or_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = TarballStore::new(dir.path(), 1 << 20).unwrap();
        let name = PackageName::parse("@s/p").unwrap();
        for v in ["1.0.0", "1.0.1", "2.0.0"] {
            let p = store.pending().unwrap();
            store.persist(p, &name, &format!("p-{v}.tgz")).await.unwrap();
        }
        assert_eq!(store.purge(&name, Some(&["p-1.0.1.tgz".into(), "p-9.tgz".into()])), 1);
        assert!(store.open(&name, "p-1.0.1.tgz").await.is_none());
        assert!(store.open(&name, "p-1.0.0.tgz").await.is_some());
        assert_eq!(store.purge(&name, None), 2);
        assert_eq!(store.purge(&PackageName::parse("never").unwrap(), None), 0);
    }

    #[test]
    fn refuses_paths_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = TarballStore::new(dir.path(), 1 << 20).unwrap();
        let name = PackageName::parse("a").unwrap();
        assert!(store.path(&name, "../../etc/passwd").is_none());
        assert!(store.path(&name, "/etc/passwd").is_none());
        assert!(store.path(&name, ".tmp").is_none());
    }
}
