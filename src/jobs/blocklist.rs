//! Reloads the blocklist on SIGHUP and when its file changes (see `crate::watch`). A bad file
//! keeps the old rules, and so does a file that was there and vanished (a deleted or moved
//! file is an accident far more often than a policy: an empty file drops every rule). Either
//! state shows in `/api/health` until a good file is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::guard::Guard;
use crate::guard::blocklist::Blocklist;

/// `had_file`: whether a file was read before, so its disappearance is an error.
fn reload(guard: &Guard, path: &Path, why: &str, had_file: &AtomicBool) {
    let error = match Blocklist::read(path) {
        Ok(Some(list)) => {
            tracing::info!(rules = list.len(), why, "blocklist reloaded");
            guard.set_blocklist(list);
            had_file.store(true, Ordering::Relaxed);
            None
        }
        Ok(None) if !had_file.load(Ordering::Relaxed) => None,
        Ok(None) => {
            let rules = guard.policy().blocklist.len();
            tracing::error!(path = %path.display(), why, rules,
                "blocklist file is gone; keeping the last good rules (write an empty file to drop them)");
            Some(format!(
                "{} is gone; the last good rules ({rules}) apply",
                path.display()
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, why, "blocklist not reloaded; keeping the old rules");
            Some(format!("{e}; the old rules apply"))
        }
    };
    guard.update_blocklist_status(|status| *status = status.next(error));
}

pub(crate) fn spawn(jobs: &crate::jobs::Jobs, guard: Arc<Guard>, path: PathBuf) {
    let had_file = AtomicBool::new(path.exists());
    super::watch::spawn(jobs, path, "blocklist", move |path, why| {
        reload(&guard, path, why, &had_file)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::status::State;
    use crate::metrics::Metrics;

    #[test]
    fn a_vanished_file_keeps_the_rules_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blacklist.yml");
        let guard = Guard::new(Blocklist::default(), None, None, None, Arc::new(Metrics::default()));
        let had_file = AtomicBool::new(false);
        reload(&guard, &path, "test", &had_file);
        assert_eq!(
            guard.blocklist_status().state,
            State::Ok,
            "no file, never was: no rules, ok"
        );
        std::fs::write(&path, "packages:\n  - name: evil\n").unwrap();
        reload(&guard, &path, "test", &had_file);
        assert!(guard.policy().package("evil").is_some());
        std::fs::remove_file(&path).unwrap();
        reload(&guard, &path, "test", &had_file);
        assert!(guard.policy().package("evil").is_some(), "the last good rules stay");
        let status = guard.blocklist_status();
        assert_eq!(status.state, State::Error);
        assert!(status.error.unwrap().contains("is gone"));
        std::fs::write(&path, "packages: [\n").unwrap();
        reload(&guard, &path, "test", &had_file);
        assert_eq!(
            guard.blocklist_status().since_ms,
            status.since_ms,
            "still the same error state"
        );
        std::fs::write(&path, "").unwrap();
        reload(&guard, &path, "test", &had_file);
        assert!(
            guard.policy().package("evil").is_none(),
            "an empty file drops the rules"
        );
        assert_eq!(guard.blocklist_status().state, State::Ok);
    }
}
