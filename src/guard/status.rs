//! Whether the blocklist in force is the file's, for `/api/health`.

use serde::Serialize;

/// Whether the rules in force are the file's, for `/api/health`.
#[derive(Debug, Clone, Serialize)]
pub struct BlocklistStatus {
    /// `ok`, or `error` while the last reload failed and older rules apply.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it entered this state (unix ms).
    pub since_ms: u64,
}

impl BlocklistStatus {
    pub fn ok() -> BlocklistStatus {
        BlocklistStatus {
            state: "ok",
            error: None,
            since_ms: crate::clock::now_ms(),
        }
    }

    /// The next status: `error` (`Some`) or ok; `since_ms` moves only when the state does.
    pub fn next(&self, error: Option<String>) -> BlocklistStatus {
        let state = if error.is_some() { "error" } else { "ok" };
        let since_ms = if state == self.state {
            self.since_ms
        } else {
            crate::clock::now_ms()
        };
        BlocklistStatus { state, error, since_ms }
    }
}
