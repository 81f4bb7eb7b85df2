//! L2: raw upstream packuments in the shared Redis, gzip-compressed (by the caller), with the upstream ETag,
//! when the body was fetched and when it was last validated, so every replica can use what
//! one fetched (a `cluster::documents` kind, `meta:<name>`). Every failure here is a cache
//! miss, never a failed request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cluster::documents::{BodyError, DocKind, DocStamps, SharedDocuments};
use crate::cluster::redis::SharedRedis;
use crate::npm::name::PackageName;
use crate::proxy::rendered::DocMeta;

const PACKUMENTS: DocKind = DocKind {
    stamp: "fetched",
    what: "metadata",
};

pub(crate) struct SharedMeta {
    docs: SharedDocuments,
}

impl SharedMeta {
    pub(crate) fn new(redis: Arc<SharedRedis>) -> SharedMeta {
        SharedMeta {
            docs: SharedDocuments::new(redis, PACKUMENTS),
        }
    }

    fn key(name: &PackageName) -> String {
        format!("meta:{name}")
    }

    pub(crate) async fn meta(&self, name: &PackageName) -> Option<DocMeta> {
        let stamps = self.docs.stamps(&Self::key(name)).await?;
        Some(DocMeta {
            etag: stamps.etag,
            fetched_ms: stamps.stamp_ms?,
            checked_ms: stamps.checked_ms?,
        })
    }

    /// The gzip-compressed body stored for `name`, unless it is over `max` bytes (then not
    /// even read: a planted or corrupted entry costs no memory).
    pub(crate) async fn body_gz(&self, name: &PackageName, max: usize) -> Option<Bytes> {
        match self.docs.body_gz(&Self::key(name), max).await {
            Ok(body) => body,
            Err(BodyError::TooLarge { max }) => {
                tracing::warn!(package = %name, max, "a document in Redis is larger than MAX_PACKUMENT_MB; ignored");
                None
            }
            Err(_) => None,
        }
    }

    /// Stores a gzip-compressed body with what is known of it, for `keep`.
    pub(crate) async fn put(&self, name: &PackageName, gz: Bytes, meta: &DocMeta, keep: Duration) {
        let stamps = DocStamps {
            etag: meta.etag.clone(),
            stamp_ms: Some(meta.fetched_ms),
            checked_ms: Some(meta.checked_ms),
        };
        self.docs.put(&Self::key(name), &gz, &stamps, Some(keep)).await;
    }

    /// Records a successful revalidation (upstream said 304) for the other replicas.
    pub(crate) async fn touch(&self, name: &PackageName, checked_ms: u64, keep: Duration) {
        self.docs.touch(&Self::key(name), checked_ms, Some(keep)).await;
    }

    pub(crate) async fn delete(&self, name: &PackageName) {
        self.docs.delete(&Self::key(name)).await;
    }
}
