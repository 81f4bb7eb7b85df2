//! How far a warm-up (or an export) is: a progress bar for a person at a terminal, a plain
//! line per entry for logs and pipes.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

use super::Warmed;
use super::client::Refusal;
use crate::lockfile::Entry;

pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: AtomicU64,
}

impl Progress {
    pub(crate) fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template("{bar:40} {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::new(total).with_style(style)
        });
        Progress {
            bar,
            total,
            done: AtomicU64::new(0),
        }
    }

    pub(crate) fn done(&self, entry: &Entry, warmed: &Warmed) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let what = match warmed {
            Warmed::Fetched => "fetched",
            Warmed::Cached => "already cached",
            Warmed::Refused(Refusal::Blocked { .. }) => "blocked",
            Warmed::Refused(Refusal::Failed(_)) => "failed",
        };
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{}@{}", entry.name, entry.version));
                bar.inc(1);
            }
            None => eprintln!("[{n}/{}] {}@{}: {what}", self.total, entry.name, entry.version),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
