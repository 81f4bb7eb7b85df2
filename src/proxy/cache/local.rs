//! The bound of the local disk cache in front of the bucket (`TARBALL_LOCAL_CACHE_MB`): bytes
//! added are counted, and past the bound a sweep deletes the least recently used files (reads
//! mark a file used through its mtime) until the cache is back to 90% of it. The bucket keeps
//! every tarball, so an evicted file costs one bucket read, never a loss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

pub(crate) struct LocalBound {
    root: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    sweeping: AtomicBool,
}

impl LocalBound {
    /// The bound over the tarballs under `root` (dot-directories, temp files and imported
    /// packuments, are not the cache's); counts what is there already. Blocking.
    pub(crate) fn new(root: &Path, max_bytes: u64) -> LocalBound {
        let used = files(root).iter().map(|f| f.size).sum();
        LocalBound {
            root: root.to_path_buf(),
            max_bytes,
            used: AtomicU64::new(used),
            sweeping: AtomicBool::new(false),
        }
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts a file added to the cache, and sweeps in the background past the bound (one
    /// sweep at a time).
    pub(crate) fn added(self: &Arc<Self>, bytes: u64) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used <= self.max_bytes || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let bound = self.clone();
        tokio::task::spawn_blocking(move || {
            let removed = bound.sweep();
            bound.sweeping.store(false, Ordering::Release);
            tracing::debug!(removed, used = bound.used(), "swept the local tarball cache");
        });
    }

    /// Deletes the least recently used files until the cache holds at most 90% of the bound;
    /// returns how many went.
    pub(crate) fn sweep(&self) -> usize {
        let mut found = files(&self.root);
        let mut total: u64 = found.iter().map(|f| f.size).sum();
        let target = self.max_bytes / 10 * 9;
        found.sort_by_key(|f| f.used);
        let mut removed = 0;
        for f in found {
            if total <= target {
                break;
            }
            if std::fs::remove_file(&f.path).is_ok() {
                total -= f.size;
                removed += 1;
            }
        }
        self.used.store(total, Ordering::Relaxed);
        removed
    }
}

struct Entry {
    path: PathBuf,
    size: u64,
    used: SystemTime,
}

/// Every tarball under `root`: files of the layout, `<shard>/<name>/<file>` or
/// `<shard>/<@scope>/<name>/<file>`; nothing else an operator keeps there (dot-names: temp
/// files, imported packuments; directories that are no shard) is the cache's to evict.
fn files(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || (depth == 0 && name.chars().count() > 2) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && depth < 3 {
                dirs.push((entry.path(), depth + 1));
            } else if meta.is_file() && depth >= 2 {
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(Entry {
                    path: entry.path(),
                    size: meta.len(),
                    used,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sweeps_the_least_recently_used_down_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".tmp")).unwrap();
        std::fs::write(root.join(".tmp/dl-1.part"), vec![0u8; 5000]).unwrap();
        std::fs::create_dir_all(root.join("malware-list/127.0.0.1")).unwrap();
        std::fs::write(root.join("malware-list/127.0.0.1/list.json"), vec![0u8; 5000]).unwrap();
        let base = SystemTime::now() - Duration::from_secs(1000);
        for i in 0..10u64 {
            let path = root.join(format!("p{i}/p{i}/p{i}-1.0.0.tgz"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; 1000]).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            // p0 read last: the most recently used, kept.
            let at = if i == 0 { 100 } else { i };
            f.set_modified(base + Duration::from_secs(at)).unwrap();
        }
        let bound = LocalBound::new(root, 5000);
        assert_eq!(
            bound.used(),
            10_000,
            "temp files and other directories are not the cache's"
        );
        assert_eq!(bound.sweep(), 6);
        assert_eq!(bound.used(), 4000);
        assert!(root.join("p0/p0/p0-1.0.0.tgz").exists());
        assert!(root.join("p9/p9/p9-1.0.0.tgz").exists());
        assert!(!root.join("p1/p1/p1-1.0.0.tgz").exists());
        assert!(root.join(".tmp/dl-1.part").exists());
        assert!(root.join("malware-list/127.0.0.1/list.json").exists());
    }
}
