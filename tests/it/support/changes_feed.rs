//! An in-process fake of npm's changes feed (the replicate service), on its own thread and
//! runtime like the fake registry, so its API is synchronous.
//!
//! Served under `http://127.0.0.1:<port>/feed`: `GET /feed/` (and `/feed`) answers
//! `{"db_name": "registry", "update_seq": <head>}`; `GET /feed/_changes?since=&limit=` answers
//! the changes after `since` (at most `limit`), without documents, and `last_seq` = the last
//! one listed, or `since` itself when there is none (so a `since` beyond a reset feed is only
//! noticed by asking for the head). The head starts at 1000, so a follower that starts over
//! from 0 stands out.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The head of a fresh feed.
pub const START_SEQ: u64 = 1000;

/// One request to `_changes` as the fake saw it.
#[derive(Clone, Debug)]
pub struct ChangesRequest {
    pub since: Option<u64>,
    pub user_agent: String,
}

pub struct FakeChanges {
    state: Arc<Mutex<FeedState>>,
    addr: SocketAddr,
    _server: super::server::BackgroundServer,
}

struct FeedState {
    head: u64,
    /// `(seq, id)`, ascending.
    changes: Vec<(u64, String)>,
    changes_requests: Vec<ChangesRequest>,
    failure: Option<u16>,
}

type Shared = Arc<Mutex<FeedState>>;

impl FakeChanges {
    pub fn start() -> FakeChanges {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake changes feed");
        let addr = listener.local_addr().expect("fake changes feed address");
        let state = Arc::new(Mutex::new(FeedState {
            head: START_SEQ,
            changes: Vec::new(),
            changes_requests: Vec::new(),
            failure: None,
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let _server = super::server::BackgroundServer::start(&format!("fake-changes-{}", addr.port()), listener, app);
        FakeChanges { state, addr, _server }
    }

    /// `http://127.0.0.1:<port>/feed` (no trailing slash: the follower appends the paths).
    pub fn url(&self) -> String {
        format!("http://{}/feed", self.addr)
    }

    /// Appends a change of `name` with the next sequence, which it returns.
    pub fn push(&self, name: &str) -> u64 {
        let mut s = self.lock();
        s.head += 1;
        let seq = s.head;
        s.changes.push((seq, name.to_string()));
        seq
    }

    /// The feed starts over at `seq` (as npm's did): its history is gone, the head is `seq`.
    pub fn reset_to(&self, seq: u64) {
        let mut s = self.lock();
        s.head = seq;
        s.changes.clear();
    }

    /// The `_changes` requests, in order.
    pub fn changes_requests(&self) -> Vec<ChangesRequest> {
        self.lock().changes_requests.clone()
    }

    /// The `since` of each `_changes` request whose User-Agent contains `agent`.
    pub fn sinces_from(&self, agent: &str) -> Vec<u64> {
        self.lock()
            .changes_requests
            .iter()
            .filter(|r| r.user_agent.contains(agent))
            .filter_map(|r| r.since)
            .collect()
    }

    /// Every request answers this status until set back to `None`.
    pub fn set_failure(&self, status: Option<u16>) {
        self.lock().failure = status;
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn handle(State(state): State<Shared>, req: Request) -> Response {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let path = req.uri().path().to_string();
    let query = |key: &str| -> Option<u64> {
        req.uri()
            .query()?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
    };
    if path == "/feed/_changes" {
        let user_agent = req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        s.changes_requests.push(ChangesRequest {
            since: query("since"),
            user_agent,
        });
    }
    if let Some(status) = s.failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, axum::Json(json!({"error": "failure injected"}))).into_response();
    }
    match path.as_str() {
        "/feed" | "/feed/" => axum::Json(json!({"db_name": "registry", "update_seq": s.head})).into_response(),
        "/feed/_changes" => {
            let since = query("since").unwrap_or(0);
            let limit = query("limit").unwrap_or(u64::MAX) as usize;
            let results: Vec<_> = s
                .changes
                .iter()
                .filter(|(seq, _)| *seq > since)
                .take(limit)
                .map(|(seq, id)| json!({"seq": seq, "id": id, "changes": [{"rev": format!("{seq}-fake")}]}))
                .collect();
            let last_seq = results.last().map_or(json!(since), |r| r["seq"].clone());
            axum::Json(json!({"results": results, "last_seq": last_seq})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found"}))).into_response(),
    }
}
