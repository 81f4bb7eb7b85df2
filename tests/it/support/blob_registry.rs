//! A bare upstream for tarball tests: packuments written by the test (any tarball file name,
//! any integrity, including none), tarballs of any size and bytes, served in 64 KiB chunks
//! with an optional pause between them (so concurrent clients overlap), every request counted.
//! Tarballs live under `/files/` (a proxy must follow `dist.tarball`) unless `use_npm_layout`
//! puts them where npm's layout would (`/registry/<name>/-/<file>`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use super::server::BackgroundServer;

/// One version as the test wants upstream to describe and serve it.
pub struct Blob<'a> {
    pub version: &'a str,
    /// The tarball's file name in `dist.tarball` (need not be `<name>-<version>.tgz`).
    pub file: &'a str,
    /// The bytes upstream serves.
    pub bytes: Vec<u8>,
    /// `dist.integrity`; `None` leaves both integrity and shasum out.
    pub integrity: Option<String>,
}

/// A version served as `bytes`, with their integrity.
pub fn blob<'a>(version: &'a str, file: &'a str, bytes: impl AsRef<[u8]>) -> Blob<'a> {
    let bytes = bytes.as_ref().to_vec();
    Blob {
        version,
        file,
        integrity: Some(sri(&bytes)),
        bytes,
    }
}

#[derive(Default)]
struct Blobs {
    docs: HashMap<String, Vec<u8>>,
    files: HashMap<String, Vec<u8>>,
    hits: HashMap<String, usize>,
    /// Every path asked, in order.
    asked: Vec<String>,
    pause: Duration,
    npm_layout: bool,
    /// The `time` of the versions `set_package` writes.
    published: Option<String>,
    /// How long a packument's answer waits for a tarball request to arrive.
    hold: Duration,
}

impl Blobs {
    /// Where `set_package` puts tarballs.
    fn folder(&self) -> &'static str {
        if self.npm_layout { "registry" } else { "files" }
    }
}

pub struct BlobRegistry {
    origin: String,
    blobs: Arc<Mutex<Blobs>>,
    _server: BackgroundServer,
}

/// `sha512-<base64>` of `bytes`.
pub fn sri(bytes: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
    )
}

impl BlobRegistry {
    pub fn start() -> BlobRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind blob registry");
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let blobs = Arc::new(Mutex::new(Blobs::default()));
        let app = Router::new().fallback(serve).with_state(blobs.clone());
        let server = BackgroundServer::start("blob-registry", listener, app);
        BlobRegistry {
            origin,
            blobs,
            _server: server,
        }
    }

    /// The registry base for REGISTRY_URL.
    pub fn url(&self) -> String {
        format!("{}/registry/", self.origin)
    }

    /// Serves a packument of `name` with these versions (`latest` on the last).
    pub fn set_package(&self, name: &str, versions: Vec<Blob<'_>>) {
        let mut doc_versions = Map::new();
        let mut blobs = self.blobs.lock().unwrap();
        let folder = blobs.folder();
        let published = blobs
            .published
            .clone()
            .unwrap_or_else(|| "2024-01-01T00:00:00.000Z".into());
        for blob in &versions {
            let path = format!("/{folder}/{name}/-/{}", blob.file);
            let mut dist = json!({ "tarball": format!("{}{path}", self.origin) });
            if let Some(integrity) = &blob.integrity {
                dist["integrity"] = json!(integrity);
            }
            let manifest = json!({ "name": name, "version": blob.version, "dist": dist });
            doc_versions.insert(blob.version.to_string(), manifest);
            blobs.files.insert(path, blob.bytes.clone());
        }
        let latest = versions.last().map_or("", |b| b.version);
        let times: Map<String, Value> = versions
            .iter()
            .map(|b| (b.version.to_string(), json!(published)))
            .collect();
        let doc = json!({
            "name": name,
            "dist-tags": { "latest": latest },
            "versions": doc_versions,
            "time": times,
        });
        let key = format!("/registry/{}", name.replace('/', "%2f"));
        blobs.docs.insert(key, serde_json::to_vec(&doc).unwrap());
    }

    /// Requests upstream received for the tarball `file` of `name` (where `set_package` put it).
    pub fn tarball_hits(&self, name: &str, file: &str) -> usize {
        let b = self.blobs.lock().unwrap();
        let folder = b.folder();
        b.hits.get(&format!("/{folder}/{name}/-/{file}")).copied().unwrap_or(0)
    }

    /// Requests upstream received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.blobs.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }

    /// Every path asked so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.blobs.lock().unwrap().asked.clone()
    }

    /// Packages set from now on have their tarballs where npm's layout puts them.
    pub fn use_npm_layout(&self) {
        self.blobs.lock().unwrap().npm_layout = true;
    }

    /// Packages set from now on were published at `time` (RFC 3339).
    pub fn set_published(&self, time: &str) {
        self.blobs.lock().unwrap().published = Some(time.to_string());
    }

    /// Serves `bytes` at `path` (say, where npm's layout would put a tarball the packument
    /// places elsewhere).
    pub fn put_file(&self, path: &str, bytes: Vec<u8>) {
        self.blobs.lock().unwrap().files.insert(path.to_string(), bytes);
    }

    /// Each packument's answer waits until upstream was asked for one of the package's
    /// tarballs, or `max`: a proxy that asks for the tarball only once it has the packument
    /// waits `max`.
    pub fn hold_packuments(&self, max: Duration) {
        self.blobs.lock().unwrap().hold = max;
    }

    /// A pause between the 64 KiB chunks of every tarball.
    pub fn set_pause(&self, pause: Duration) {
        self.blobs.lock().unwrap().pause = pause;
    }
}

async fn serve(State(blobs): State<Arc<Mutex<Blobs>>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let (doc, file, pause, hold) = {
        let mut b = blobs.lock().unwrap();
        *b.hits.entry(path.clone()).or_default() += 1;
        b.asked.push(path.clone());
        (b.docs.get(&path).cloned(), b.files.get(&path).cloned(), b.pause, b.hold)
    };
    if let Some(doc) = doc {
        let until = tokio::time::Instant::now() + hold;
        let name = path.trim_start_matches("/registry/").replace("%2f", "/");
        let tarball = format!("/{name}/-/");
        let asked_tarball = |b: &Blobs| b.asked.iter().any(|p| p.contains(&tarball));
        while tokio::time::Instant::now() < until && !asked_tarball(&blobs.lock().unwrap()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(doc))
            .unwrap();
    }
    let Some(bytes) = file else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("{\"error\":\"not found\"}"))
            .unwrap();
    };
    let len = bytes.len();
    let chunks: Vec<bytes::Bytes> = bytes.chunks(64 * 1024).map(bytes::Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(c)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap()
}
