//! An in-process fake malware feed (a JSON list of `{package_name, version, reason}` at
//! `/malware_predictions.json`), so no test reaches the real feed host.
//!
//! Like the fake registry it runs on its own thread and runtime, with a synchronous API. Every
//! body change gets a new strong ETag and `If-None-Match` with the current one gives 304.
//! Dropping it stops the server: the URL then refuses connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::Value;

/// One request as the fake received it, with what it answered.
#[derive(Clone, Debug)]
pub struct FeedRequest {
    pub if_none_match: Option<String>,
    pub status: u16,
}

pub struct FakeFeed {
    state: Arc<Mutex<FeedState>>,
    addr: SocketAddr,
    _server: super::server::BackgroundServer,
}

struct FeedState {
    body: Vec<u8>,
    etag: String,
    generation: u64,
    failure: Option<u16>,
    log: Vec<FeedRequest>,
}

impl FakeFeed {
    /// Starts the fake serving an empty list.
    pub fn start() -> FakeFeed {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake feed");
        let addr = listener.local_addr().expect("fake feed address");
        let state = Arc::new(Mutex::new(FeedState {
            body: b"[]".to_vec(),
            etag: "\"feed-0\"".into(),
            generation: 0,
            failure: None,
            log: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let _server = super::server::BackgroundServer::start(&format!("fake-feed-{}", addr.port()), listener, app);
        FakeFeed { state, addr, _server }
    }

    /// `http://127.0.0.1:<port>/malware_predictions.json`
    pub fn url(&self) -> String {
        format!("http://{}/malware_predictions.json", self.addr)
    }

    /// Serves `entries` (a JSON value, normally a list) under a new ETag.
    pub fn set_entries(&self, entries: Value) {
        self.set_raw(serde_json::to_vec(&entries).expect("feed JSON"));
    }

    /// Serves these bytes as they are (e.g. invalid JSON) under a new ETag.
    pub fn set_raw(&self, body: impl Into<Vec<u8>>) {
        let mut s = self.lock();
        s.generation += 1;
        s.etag = format!("\"feed-{}\"", s.generation);
        s.body = body.into();
    }

    /// Every request answers `status` until `clear_failure`.
    pub fn set_failure(&self, status: u16) {
        self.lock().failure = Some(status);
    }

    pub fn clear_failure(&self) {
        self.lock().failure = None;
    }

    /// The ETag of the body served now.
    pub fn etag(&self) -> String {
        self.lock().etag.clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.lock().log.len()
    }

    /// Requests answered 304.
    pub fn not_modified(&self) -> usize {
        self.lock().log.iter().filter(|r| r.status == 304).count()
    }

    pub fn log(&self) -> Vec<FeedRequest> {
        self.lock().log.clone()
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn handle(State(state): State<Arc<Mutex<FeedState>>>, req: Request) -> Response {
    let if_none_match = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let (status, body) = if let Some(code) = s.failure {
        (code, br#"{"error":"failure injected by the test"}"#.to_vec())
    } else if req.uri().path() != "/malware_predictions.json" {
        (404, br#"{"error":"not found"}"#.to_vec())
    } else if if_none_match.as_deref() == Some(s.etag.as_str()) {
        (304, Vec::new())
    } else {
        (200, s.body.clone())
    };
    s.log.push(FeedRequest { if_none_match, status });
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).expect("status code"))
        .header(header::CONTENT_TYPE, "application/json");
    if matches!(status, 200 | 304) {
        resp = resp.header(header::ETAG, &s.etag);
    }
    resp.body(Body::from(body)).expect("feed response")
}
