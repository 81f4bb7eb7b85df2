//! Reloads the blocklist on SIGHUP and when its file changes (checked every two seconds, which
//! also catches the symlink swaps of mounted config maps). A bad file keeps the old rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};

use super::Guard;
use super::blocklist::Blocklist;

type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

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
    tokio::spawn(async move {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; the blocklist reloads on file changes only");
                None
            }
        };
        let mut last = fingerprint(&path);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = async { hup.as_mut()?.recv().await } => {
                    last = fingerprint(&path);
                    reload(&guard, &path, "SIGHUP");
                }
                _ = tick.tick() => {
                    let now = fingerprint(&path);
                    if now != last {
                        last = now;
                        reload(&guard, &path, "file changed");
                    }
                }
            }
        }
    });
}
