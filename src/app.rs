//! The shared state of a running npg and its start-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::auth::Auth;
use crate::cluster::bus::Bus;
use crate::cluster::redis::SharedRedis;
use crate::config::Settings;
use crate::guard::Guard;
use crate::jobs::Jobs;
use crate::jobs::changes::ChangesState;
use crate::metrics::Metrics;
use crate::preflight::Preflight;
use crate::proxy::cache::bucket::Bucket;
use crate::proxy::cache::disk::TarballStore;
use crate::proxy::cache::store::Store;
use crate::proxy::packuments::{self, Packuments};
use crate::proxy::tarballs::Tarballs;
use crate::status::history::History;
use crate::tls::Tls;
use crate::upstream::Upstream;

/// The shared state of a running npg, behind one `Arc`: axum clones it for each middleware and
/// for the handler of every request, so a clone is one atomic increment (not one per part and
/// an allocation for the instance name). Its parts are read through `Deref` (`app.packuments`).
#[derive(Clone)]
pub(crate) struct App(Arc<AppState>);

/// What an [`App`] shares.
pub(crate) struct AppState {
    pub(crate) packuments: Arc<Packuments>,
    pub(crate) tarballs: Arc<Tarballs>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) redis: Arc<SharedRedis>,
    /// Events from and to the other replicas.
    pub(crate) bus: Arc<Bus>,
    /// The changes follower's state, for health.
    pub(crate) changes: Arc<ChangesState>,
    /// TLS, when npg serves HTTPS.
    pub(crate) tls: Option<Arc<Tls>>,
    pub(crate) metrics: Arc<Metrics>,
    /// The last hour of traffic, for the status page.
    pub(crate) history: Arc<History>,
    /// How long clients may reuse a packument (CLIENT_MAX_AGE; 0: revalidate every time).
    pub(crate) client_max_age: std::time::Duration,
    /// Access control, when AUTH_TOKENS_FILE is set.
    pub(crate) auth: Option<Arc<Auth>>,
    pub(crate) instance: String,
    pub(crate) started: Instant,
    /// Set on SIGTERM: health answers 503 while the listeners still serve (SHUTDOWN_DELAY).
    pub(crate) draining: Arc<std::sync::atomic::AtomicBool>,
}

impl std::ops::Deref for App {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl App {
    /// Builds every part from the settings and what `Preflight::run` loaded and checked
    /// (inside a tokio runtime), and starts the background jobs.
    pub(crate) fn new(settings: &Settings, checked: Preflight) -> anyhow::Result<(App, Jobs)> {
        let metrics = Arc::new(Metrics::default());
        metrics.set_redis_enabled(settings.redis_enabled());
        let instance = settings.instance();
        let redis = if settings.redis_enabled() {
            SharedRedis::connect(
                &settings.redis_target()?,
                &settings.redis_prefix,
                &instance,
                metrics.clone(),
            )
            .context("REDIS_URL / REDIS_SENTINELS")?
        } else {
            SharedRedis::disabled(metrics.clone())
        };
        let upstream = Arc::new(Upstream::new(checked.upstream, metrics.clone())?);
        let disk = TarballStore::new(&settings.storage_dir, settings.tarball_memory_mb << 20).context("STORAGE_DIR")?;
        let store = Arc::new(match &checked.bucket {
            None => Store::disk(disk, metrics.clone()),
            Some(bucket) => {
                let local = settings.store.tarball_local_cache_mb << 20;
                tracing::info!(
                    bucket = bucket.bucket,
                    prefix = bucket.prefix,
                    local_cache_mb = settings.store.tarball_local_cache_mb,
                    "tarballs in an S3 bucket"
                );
                metrics.set_bucket_up(true);
                Store::s3(
                    disk,
                    Bucket::new(bucket, metrics.clone()).context("S3_BUCKET")?,
                    local,
                    metrics.clone(),
                )
            }
        });
        let removed = store.clean_temp(Duration::from_secs(3600));
        if removed > 0 {
            tracing::info!(removed, "removed temp files left by an earlier run");
        }
        tracing::info!(
            rules = checked.blocklist.len(),
            min_release_age = ?settings.min_release_age,
            install_scripts = ?settings.install_script_policy,
            "guard ready"
        );
        if let Some(rule) = &checked.typosquat {
            tracing::info!(
                action = rule.action.as_str(),
                names = rule.list.len(),
                list = rule.list.source(),
                "typosquat rule on"
            );
        }
        let guard = Arc::new(Guard::new(
            checked.blocklist,
            checked.age,
            checked.scripts,
            checked.typosquat,
            metrics.clone(),
        ));
        let packuments = Arc::new(Packuments::new(
            packuments::Settings {
                public_base: settings.public_base(),
                ttl: settings.metadata_ttl,
                max_stale: settings.metadata_max_stale,
                memory_bytes: settings.memory_cache_mb << 20,
                max_document_bytes: (settings.max_packument_mb as usize) << 20,
                render_memory_bytes: settings.render_memory_mb << 20,
                miss_ttl: settings.metadata_miss_ttl,
                storage_dir: settings.storage_dir.clone(),
            },
            upstream.clone(),
            guard.clone(),
            redis.clone(),
            metrics.clone(),
        ));
        let tarballs = Arc::new(Tarballs::new(
            store,
            packuments.clone(),
            guard.clone(),
            upstream.clone(),
            redis.clone(),
            metrics.clone(),
        ));
        let auth = match checked.tokens {
            Some(tokens) => {
                if tokens.is_empty() {
                    tracing::warn!("AUTH_TOKENS_FILE lists no token: every request needing one is refused");
                }
                tracing::info!(tokens = tokens.len(), "access control on");
                Some(Arc::new(Auth::new(tokens)))
            }
            None => None,
        };
        let bus = Bus::new(redis.clone(), &instance);
        let redis_for_tls = redis.clone();
        let app = App(Arc::new(AppState {
            packuments,
            tarballs,
            upstream,
            guard,
            redis,
            bus,
            changes: Arc::new(ChangesState::new(settings.enable_npm_changes_poller)),
            tls: checked
                .tls
                .map(|files| Tls::setup(settings, files, redis_for_tls, metrics.clone())),
            metrics,
            history: Arc::default(),
            client_max_age: settings.client_max_age,
            auth,
            instance,
            started: Instant::now(),
            draining: Arc::default(),
        }));
        let jobs = app.start_background(settings);
        Ok((app, jobs))
    }

    /// Starts the background jobs: each one line, each owning its own loop.
    fn start_background(&self, settings: &Settings) -> Jobs {
        let jobs = Jobs::default();
        jobs.spawn("redis monitor", self.redis.monitor());
        jobs.spawn("traffic history", self.history.clone().run(self.metrics.clone()));
        if let Some(bucket) = self.tarballs.store().bucket() {
            jobs.spawn("bucket probe", bucket.clone().probe());
        }
        jobs.spawn("cluster events", self.bus.subscriber());
        let blocklist = settings.policy.blacklist_path.clone();
        crate::jobs::blocklist::spawn(&jobs, self.guard.clone(), blocklist);
        let refresher = crate::jobs::feed::FeedRefresher {
            guard: self.guard.clone(),
            tarballs: self.tarballs.clone(),
            redis: self.redis.clone(),
            bus: self.bus.clone(),
            metrics: self.metrics.clone(),
        };
        crate::jobs::feed::spawn(&jobs, refresher.clone(), settings);
        crate::jobs::osv::spawn(&jobs, refresher, settings);
        let (guard, upstream) = (self.guard.clone(), self.upstream.clone());
        crate::jobs::keys::spawn(&jobs, guard, upstream, self.redis.clone(), settings);
        if let (Some(auth), Some(path)) = (&self.auth, &settings.auth_tokens_file) {
            crate::jobs::tokens::spawn(&jobs, auth.clone(), self.metrics.clone(), path.clone());
        }
        crate::jobs::changes::spawn_listener(&jobs, &self.bus, self.packuments.clone());
        let breaker = self.upstream.breaker().clone();
        jobs.spawn(
            "breaker sharing",
            crate::upstream::breaker::share(breaker, self.bus.clone()),
        );
        let follower = crate::jobs::changes::ChangesFollower {
            packuments: self.packuments.clone(),
            redis: self.redis.clone(),
            bus: self.bus.clone(),
            status: self.changes.clone(),
            metrics: self.metrics.clone(),
            instance: self.instance.clone(),
        };
        follower.spawn(&jobs, settings);
        if let Some(tls) = &self.tls {
            jobs.spawn("tls ticket keys", tls.share_tickets());
            crate::tls::acme::spawn(&jobs, tls.clone(), self.redis.clone(), self.bus.clone(), settings);
        }
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::App;

    /// axum clones the state for each middleware and the handler of every request: one pointer,
    /// so a clone is one atomic increment and a drop one decrement.
    #[test]
    fn app_is_one_pointer() {
        assert_eq!(std::mem::size_of::<App>(), std::mem::size_of::<usize>());
    }
}
