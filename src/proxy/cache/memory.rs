//! L1: rendered packuments in process memory, bounded by bytes, so a hot hit is a hash lookup
//! and a `Bytes` clone.

use std::sync::Arc;

use crate::npm::name::PackageName;
use crate::proxy::rendered::Package;

#[derive(Clone)]
pub(crate) struct MemoryCache {
    cache: moka::future::Cache<PackageName, Arc<Package>>,
}

impl MemoryCache {
    pub(crate) fn new(max_bytes: u64) -> MemoryCache {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k, p: &Arc<Package>| u32::try_from(p.approx_bytes()).unwrap_or(u32::MAX))
            .build();
        MemoryCache { cache }
    }

    pub(crate) async fn get(&self, name: &PackageName) -> Option<Arc<Package>> {
        self.cache.get(name).await
    }

    pub(crate) async fn insert(&self, package: Arc<Package>) {
        self.cache.insert(package.name.clone(), package).await;
    }

    pub(crate) async fn remove(&self, name: &PackageName) {
        self.cache.invalidate(name).await;
    }
}
