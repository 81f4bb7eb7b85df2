//! Reloads the blocklist on SIGHUP and when its file changes (see `crate::watch`). A bad file
//! keeps the old rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Guard;
use super::blocklist::Blocklist;

fn reload(guard: &Guard, path: &Path, why: &str) {
    match Blocklist::load(path) {
        Ok(list) => {
            tracing::info!(rules = list.len(), why, "blocklist reloaded");
            guard.set_blocklist(list);
        }
        Err(e) => tracing::error!(error = %e, why, "blocklist not reloaded; keeping the old rules"),
    }
}

pub fn spawn(guard: Arc<Guard>, path: PathBuf) {
    crate::watch::spawn(path, "blocklist", move |path, why| reload(&guard, path, why));
}
