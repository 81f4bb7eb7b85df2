//! Small tarballs in process memory, bounded by bytes: a CI farm installing the same lockfile
//! again and again is served without a trip to the file system (each one costs a hop to the
//! blocking pool). Filled from disk reads; the disk stays the cache of record.

use bytes::Bytes;

use crate::npm::name::PackageName;

#[derive(Clone)]
pub(crate) struct HotTarballs {
    cache: moka::future::Cache<String, Bytes>,
}

pub(crate) fn key(name: &PackageName, file: &str) -> String {
    format!("{name}/{file}")
}

/// Whether `key` is one file (`file`) or any file (`None`) of the package `name`.
pub(crate) fn purged(key: &str, name: &PackageName, file: Option<&str>) -> bool {
    key.strip_prefix(name.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|f| file.is_none_or(|w| f == w))
}

impl HotTarballs {
    pub(crate) fn new(max_bytes: u64) -> HotTarballs {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Bytes| u32::try_from(k.len() + v.len()).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .build();
        HotTarballs { cache }
    }

    pub(crate) async fn get(&self, name: &PackageName, file: &str) -> Option<Bytes> {
        self.cache.get(&key(name, file)).await
    }

    pub(crate) async fn insert(&self, name: &PackageName, file: &str, bytes: Bytes) {
        self.cache.insert(key(name, file), bytes).await;
    }

    /// Drops one file, or every file of the package (`file` = `None`). Lookups stop
    /// returning them at once; moka frees them in the background.
    pub(crate) fn purge(&self, name: &PackageName, file: Option<&str>) {
        let (name, file) = (name.clone(), file.map(str::to_string));
        let doomed = move |k: &String, _: &Bytes| purged(k, &name, file.as_deref());
        if let Err(e) = self.cache.invalidate_entries_if(doomed) {
            tracing::warn!(error = %e, "cannot drop purged tarballs from memory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn purges_one_file_or_the_package() {
        let hot = HotTarballs::new(1 << 20);
        let (a, b) = (PackageName::parse("a").unwrap(), PackageName::parse("a-b").unwrap());
        for (name, file) in [(&a, "a-1.0.0.tgz"), (&a, "a-1.0.1.tgz"), (&b, "a-b-1.0.0.tgz")] {
            hot.insert(name, file, Bytes::from_static(b"tgz")).await;
        }
        hot.purge(&a, Some("a-1.0.1.tgz"));
        assert!(hot.get(&a, "a-1.0.1.tgz").await.is_none());
        assert!(hot.get(&a, "a-1.0.0.tgz").await.is_some());
        hot.purge(&a, None);
        assert!(hot.get(&a, "a-1.0.0.tgz").await.is_none());
        assert!(hot.get(&b, "a-b-1.0.0.tgz").await.is_some(), "a-b is another package");
    }
}
