//! Reloads a file on SIGHUP and when it changes (modification time and size, checked every
//! two seconds, which also catches the symlink swaps of mounted config maps). What a reload
//! does, and what a bad file does, is the caller's.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};

use super::Jobs;

type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Calls `reload(path, why)` on SIGHUP and whenever `path` changes; `what` names the file in
/// the warning when no SIGHUP handler can be installed.
pub(crate) fn spawn(
    jobs: &Jobs,
    path: PathBuf,
    what: &'static str,
    reload: impl Fn(&Path, &'static str) + Send + 'static,
) {
    jobs.spawn(what, async move {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, what, "no SIGHUP handler; reloading on file changes only");
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
                    reload(&path, "SIGHUP");
                }
                _ = tick.tick() => {
                    let now = fingerprint(&path);
                    if now != last {
                        last = now;
                        reload(&path, "file changed");
                    }
                }
            }
        }
    });
}
