//! A plain-HTTP test client that leaves gzip bodies encoded, so tests see what npg sent.

use serde_json::Value;

/// `Accept` as pnpm and yarn 1 send it for the abbreviated packument.
pub const ABBREVIATED: &str = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_gzip().build().expect("reqwest client")
}

/// A whole response.
pub struct Reply {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// The body, gunzipped when it came gzip-encoded.
    pub fn decoded(&self) -> Vec<u8> {
        if self.header("content-encoding") == "gzip" {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&self.body[..]), &mut out).unwrap();
            out
        } else {
            self.body.clone()
        }
    }
}

/// GET with extra headers; panics only when no response arrives at all.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(reqwest::Method::GET, url, headers, Vec::new()).await
}

/// Any request with extra headers and a body; panics only when no response arrives at all.
pub async fn send(method: reqwest::Method, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let mut req = client().request(method.clone(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() {
        req = req.body(body);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    Reply { status, headers, body }
}

/// Sends `request` as written on a fresh socket (nothing normalised, nothing added) and reads
/// the answer until npg closes (at most `timeout`): the status (0 when none came) and the text.
pub fn raw(port: u16, request: &[u8], timeout: std::time::Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    // npg may answer and close before reading all of a hostile request.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

/// A GET written by hand, so the path arrives exactly as given.
pub fn raw_get(port: u16, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw(port, request.as_bytes(), std::time::Duration::from_secs(10))
}
