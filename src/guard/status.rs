//! What `/api/health` tells of the guard's inputs: whether the blocklist in force is the
//! file's, and the malware feed's state and origin.

use serde::Serialize;

/// Whether the last load of an input worked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Not configured (the feed without a URL).
    Disabled,
    /// Configured, not loaded yet.
    #[default]
    Loading,
    Ok,
    /// The last load failed; what was in force before still applies.
    Error,
}

/// Whether the rules in force are the file's, for `/api/health`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BlocklistStatus {
    /// `ok`, or `error` while the last reload failed and older rules apply.
    pub(crate) state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// When it entered this state (unix ms).
    pub(crate) since_ms: u64,
}

impl BlocklistStatus {
    pub(crate) fn ok() -> BlocklistStatus {
        BlocklistStatus {
            state: State::Ok,
            error: None,
            since_ms: crate::clock::now_ms(),
        }
    }

    /// The next status: `error` (`Some`) or ok; `since_ms` moves only when the state does.
    pub(crate) fn next(&self, error: Option<String>) -> BlocklistStatus {
        let state = if error.is_some() { State::Error } else { State::Ok };
        let since_ms = if state == self.state {
            self.since_ms
        } else {
            crate::clock::now_ms()
        };
        BlocklistStatus { state, error, since_ms }
    }
}

/// Where the malware list in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListOrigin {
    /// Downloaded from the feed's URL by this replica.
    Remote,
    /// The copy kept on disk (loaded at start).
    Disk,
    /// The copy another replica shared through Redis.
    Redis,
    /// Read from a directory of records (OSV_FEED_DIR).
    Directory,
    /// Pinned by the operator in a file (SIGNATURE_KEYS_FILE).
    File,
}

impl ListOrigin {
    /// The word `/api/health` and the logs use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ListOrigin::Remote => "remote",
            ListOrigin::Disk => "disk",
            ListOrigin::Redis => "redis",
            ListOrigin::Directory => "directory",
            ListOrigin::File => "file",
        }
    }
}

impl Serialize for ListOrigin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The malware feed's state, for `/api/health`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct FeedStatus {
    pub(crate) state: State,
    pub(crate) entries: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<ListOrigin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) updated_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}

/// The registry signing keys' state, for `/api/health`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct KeysStatus {
    pub(crate) state: State,
    /// How many keys are in force.
    pub(crate) count: usize,
    /// The upstream's keys endpoint answered 404: it publishes none.
    pub(crate) none_published: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<ListOrigin>,
    /// When the keys in force were fetched from upstream (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fetched_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}
