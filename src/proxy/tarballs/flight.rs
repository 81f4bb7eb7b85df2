//! Downloads in flight, one per tarball file: the first miss leads (fetches from upstream into
//! a temp file), later misses of the same file join it and read that file as it grows, so 20
//! concurrent clients make one upstream request and each gets the full verified bytes.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::npm::name::PackageName;
use crate::proxy::cache::disk::Pending;
use crate::upstream::UpstreamError;

/// Where a download stands; every client of it watches this.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Waiting for upstream's answer.
    Asking,
    /// Bytes arriving: `relayable` of them are in the temp file and may be sent (the last
    /// chunk is held back until the hash is checked).
    Streaming {
        length: Option<u64>,
        relayable: u64,
    },
    /// The temp file failed: the download goes on for the client that started it only, and
    /// whoever reads the file stops.
    Unshared {
        length: Option<u64>,
    },
    /// Complete and matching its integrity: `length` bytes in all.
    Verified {
        length: u64,
    },
    Failed(Failure),
}

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Failure {
    #[error("upstream has no such tarball")]
    NotFound,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the tarball from upstream does not match its integrity")]
    Integrity,
    #[error("the tarball from upstream runs install scripts its manifest does not declare")]
    UndeclaredScript,
    #[error("the temp file could not be written")]
    Disk,
}

impl State {
    /// Whether a new client can still read the download from its temp file (verified, it is
    /// there until it is stored).
    pub(crate) fn joinable(&self) -> bool {
        matches!(self, State::Asking | State::Streaming { .. } | State::Verified { .. })
    }
}

/// One download in flight, as its joiners see it.
pub(crate) struct Flight {
    pub(crate) state: watch::Receiver<State>,
    /// The temp file being written; joiners open it before it is renamed into the cache.
    pub(crate) temp: PathBuf,
}

type Key = (PackageName, String);

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// What a miss does: join the download of its file in flight, or lead a new one, registered
/// for joiners while it has a temp file (`landing` takes it out when it ends).
pub(crate) enum Role {
    Join(Arc<Flight>),
    /// The download this miss would have joined ended and stored the file after the miss
    /// looked for it: read it from the store.
    Stored,
    Lead {
        state: watch::Sender<State>,
        landing: Option<Landing>,
        pending: Option<Pending>,
    },
}

impl Role {
    /// A download nobody can join, without a temp file.
    pub(crate) fn alone() -> Role {
        Role::Lead {
            state: watch::channel(State::Asking).0,
            landing: None,
            pending: None,
        }
    }
}

impl Flights {
    /// Whether a download of `file` that a new client can join is in flight here.
    pub(crate) fn in_flight(&self, name: &PackageName, file: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.clone(), file.to_string());
        map.get(&key).is_some_and(|f| f.state.borrow().joinable())
    }

    /// Joins the download of `file` in flight, or starts one writing to a temp file from
    /// `temp` (without one when the disk refuses: then nobody can join it). `stored` says
    /// whether the file is in the store now: a download leaves the map only once it stored
    /// the file, so asking under the map's lock closes the gap between a miss's lookup and
    /// this call, where the download it would have joined could end.
    pub(crate) fn lead_or_join(
        self: &Arc<Self>,
        name: &PackageName,
        file: &str,
        temp: impl FnOnce() -> io::Result<Pending>,
        stored: impl FnOnce() -> bool,
    ) -> Role {
        let key = (name.clone(), file.to_string());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(&key)
            && flight.state.borrow().joinable()
        {
            return Role::Join(flight.clone());
        }
        if stored() {
            return Role::Stored;
        }
        let pending = match temp() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a tarball temp file; downloading without caching");
                return Role::alone();
            }
        };
        let (state, rx) = watch::channel(State::Asking);
        let flight = Arc::new(Flight {
            state: rx,
            temp: pending.path().to_path_buf(),
        });
        map.insert(key.clone(), flight.clone());
        let landing = Landing {
            flights: self.clone(),
            key,
            flight,
        };
        Role::Lead {
            state,
            landing: Some(landing),
            pending: Some(pending),
        }
    }

    /// Waits, at most `within`, until no download is in flight (at shutdown: what was
    /// fetched is stored); whether they all ended.
    pub(crate) async fn landed(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.map.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }
}

/// Removes a led download from the map when its leader ends, however it ends.
pub(crate) struct Landing {
    flights: Arc<Flights>,
    key: Key,
    flight: Arc<Flight>,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
        // A newer download of the same file may have replaced this one.
        if map.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::cache::disk::TarballStore;

    fn role(flights: &Arc<Flights>, disk: &TarballStore, stored: bool) -> Role {
        let name = PackageName::parse("p").unwrap();
        flights.lead_or_join(&name, "p-1.0.0.tgz", || disk.pending(), || stored)
    }

    /// A miss that finds no download in flight but the file stored (the download it would
    /// have joined ended after the miss looked) reads the store instead of fetching again.
    #[test]
    fn a_miss_after_a_download_landed_reads_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let disk = TarballStore::new(dir.path(), 0).unwrap();
        let flights = Arc::new(Flights::default());
        assert!(matches!(role(&flights, &disk, true), Role::Stored));
        let leader = role(&flights, &disk, false);
        assert!(matches!(leader, Role::Lead { landing: Some(_), .. }));
        // While a download is in flight (verified, not yet stored), a miss joins it.
        if let Role::Lead { state, .. } = &leader {
            state.send_replace(State::Verified { length: 1 });
        }
        assert!(matches!(role(&flights, &disk, true), Role::Join(_)));
        drop(leader);
        assert!(matches!(
            role(&flights, &disk, false),
            Role::Lead { landing: Some(_), .. }
        ));
    }
}
