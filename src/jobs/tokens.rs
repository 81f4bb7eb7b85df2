//! Reloads the token table on SIGHUP and when its file changes (see `super::watch`). A bad
//! file keeps the previous table, logs why and counts it (`npg_auth_reload_errors_total`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::{Auth, Tokens};
use crate::metrics::Metrics;

fn reload(auth: &Auth, metrics: &Metrics, path: &Path, why: &str) {
    match Tokens::load(path) {
        Ok(tokens) => {
            tracing::info!(tokens = tokens.len(), why, "auth tokens reloaded");
            auth.set(tokens);
        }
        Err(e) => {
            metrics.auth_reload_error();
            tracing::error!(error = %e, why, "auth tokens not reloaded; keeping the previous table");
        }
    }
}

pub(crate) fn spawn(jobs: &crate::jobs::Jobs, auth: Arc<Auth>, metrics: Arc<Metrics>, path: PathBuf) {
    super::watch::spawn(jobs, path, "auth tokens", move |path, why| {
        reload(&auth, &metrics, path, why)
    });
}
