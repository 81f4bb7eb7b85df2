//! A hostile upstream: answers every request as told (a redirect elsewhere, a body trickled
//! byte by byte, headers a proxy must not relay) and records what it received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;

use super::server::BackgroundServer;
use super::upstream::RecordedRequest;

/// What the server answers to every request.
#[derive(Clone)]
pub enum Behaviour {
    /// 200 with this JSON body at once, and these extra headers.
    Json(Vec<u8>, Vec<(&'static str, &'static str)>),
    /// 200 with this body, one byte every `Duration`.
    Trickle(Vec<u8>, Duration),
    /// 302 to this URL.
    Redirect(String),
}

struct Shared {
    behaviour: Behaviour,
    log: Vec<RecordedRequest>,
}

pub struct HostileServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    _server: BackgroundServer,
}

impl HostileServer {
    pub fn start(behaviour: Behaviour) -> HostileServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind hostile server");
        let addr = listener.local_addr().expect("hostile server address");
        let shared = Arc::new(Mutex::new(Shared {
            behaviour,
            log: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        HostileServer {
            addr,
            shared,
            _server: BackgroundServer::start("hostile-upstream", listener, app),
        }
    }

    /// `http://127.0.0.1:<port>/registry/`, to use as REGISTRY_URL.
    pub fn url(&self) -> String {
        format!("http://{}/registry/", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().log.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn handle(State(shared): State<Arc<Mutex<Shared>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let behaviour = {
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        s.log.push(RecordedRequest {
            method: parts.method.to_string(),
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body: body.to_vec(),
        });
        s.behaviour.clone()
    };
    let resp = Response::builder().header(header::CONTENT_TYPE, "application/json");
    match behaviour {
        Behaviour::Json(body, headers) => headers
            .into_iter()
            .fold(resp, |r, (k, v)| r.header(k, v))
            .body(Body::from(body)),
        Behaviour::Trickle(body, every) => {
            let bytes = futures_util::stream::iter(body).then(move |b| async move {
                tokio::time::sleep(every).await;
                Ok::<_, std::io::Error>(vec![b])
            });
            resp.body(Body::from_stream(bytes))
        }
        Behaviour::Redirect(to) => resp
            .status(StatusCode::FOUND)
            .header(header::LOCATION, to)
            .body(Body::empty()),
    }
    .expect("valid response")
}
