//! A hostile upstream: answers every request as told (a redirect elsewhere, a body trickled
//! byte by byte, headers a proxy must not relay).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;

use super::server::BackgroundServer;

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

pub struct HostileServer {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    _server: BackgroundServer,
}

impl HostileServer {
    pub fn start(behaviour: Behaviour) -> HostileServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind hostile server");
        let addr = listener.local_addr().expect("hostile server address");
        let behaviour = Arc::new(Mutex::new(behaviour));
        let app = Router::new().fallback(handle).with_state(behaviour.clone());
        HostileServer {
            addr,
            behaviour,
            _server: BackgroundServer::start("hostile-upstream", listener, app),
        }
    }

    /// `http://127.0.0.1:<port>/registry/`, to use as REGISTRY_URL.
    pub fn url(&self) -> String {
        format!("http://{}/registry/", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    }
}

async fn handle(State(behaviour): State<Arc<Mutex<Behaviour>>>, req: Request) -> Response {
    // The whole request is read before answering, as a registry would (a publish's body too).
    let _ = axum::body::to_bytes(req.into_body(), 64 << 20).await;
    let behaviour = behaviour.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
