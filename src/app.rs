//! The shared state of a running npg and its start-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cache::disk::TarballStore;
use crate::cluster::redis::SharedRedis;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::packuments::{self, Packuments};
use crate::tarballs::Tarballs;
use crate::upstream::Upstream;

#[derive(Clone)]
pub struct App {
    pub packuments: Arc<Packuments>,
    pub tarballs: Arc<Tarballs>,
    pub upstream: Arc<Upstream>,
    pub redis: Arc<SharedRedis>,
    pub metrics: Arc<Metrics>,
    pub instance: String,
    pub started: Instant,
}

impl App {
    /// Builds every part from validated settings (inside a tokio runtime).
    pub fn new(settings: &Settings) -> anyhow::Result<App> {
        let metrics = Arc::new(Metrics::default());
        let instance = settings.instance();
        let redis = if settings.redis_enabled() {
            SharedRedis::connect(
                &settings.redis_connection_url(),
                &settings.redis_prefix,
                &instance,
                metrics.clone(),
            )
            .context("REDIS_URL")?
        } else {
            SharedRedis::disabled(metrics.clone())
        };
        let upstream = Arc::new(Upstream::new(
            settings.upstream_base(),
            settings.upstream_timeout,
            metrics.clone(),
        )?);
        let store = Arc::new(TarballStore::new(&settings.storage_dir).context("STORAGE_DIR")?);
        let removed = store.clean_temp(Duration::from_secs(3600));
        if removed > 0 {
            tracing::info!(removed, "removed temp files left by an earlier run");
        }
        let packuments = Arc::new(Packuments::new(
            packuments::Settings {
                public_base: settings.public_base(),
                ttl: settings.metadata_ttl,
                max_stale: settings.metadata_max_stale,
                memory_bytes: settings.memory_cache_mb << 20,
            },
            upstream.clone(),
            redis.clone(),
            metrics.clone(),
        ));
        let tarballs = Arc::new(Tarballs::new(
            store,
            packuments.clone(),
            upstream.clone(),
            metrics.clone(),
        ));
        Ok(App {
            packuments,
            tarballs,
            upstream,
            redis,
            metrics,
            instance,
            started: Instant::now(),
        })
    }
}
