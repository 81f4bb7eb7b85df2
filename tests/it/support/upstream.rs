//! An in-process fake npm registry: the upstream npg proxies in the integration tests.
//!
//! It runs an axum server on `127.0.0.1:0` on a dedicated thread with its own tokio runtime, so
//! its API is synchronous and works the same from a plain `#[test]` and from a `#[tokio::test]`.
//!
//! Layout of the served URLs (deliberately two different shapes, so that a proxy has to follow
//! `dist.tarball` instead of guessing):
//! - registry base `http://127.0.0.1:<port>/registry/`: packuments at `/registry/<name>` and
//!   `/registry/@scope%2fname` (`%2f`, `%2F` and a raw `/` are accepted), version manifests at
//!   `/registry/<name>/<version-or-tag>`, and the passthrough endpoints under `/registry/-/`;
//! - tarballs at `http://127.0.0.1:<port>/files/<name>/-/<file>.tgz`, never under `/registry/`.
//!
//! Tarballs are real `.tgz` files built in memory (deterministic bytes), with the matching
//! `dist.integrity` (sha512) and `dist.shasum` (sha1). Packuments are full documents with `time`;
//! a client that asks for `application/vnd.npm.install-v1+json` gets the abbreviated form, as
//! from the real registry. Packuments are gzip-encoded when the client accepts gzip. Every
//! packument and tarball carries a strong ETag and `If-None-Match` gives 304.
//!
//! Default packages (versions dated in 2024):
//! - `npg-fixture-a`: 1.0.0, 1.1.0, 2.0.0 (latest); 2.0.0 depends on `npg-fixture-b@^1.0.0` and
//!   `@npg-test/scoped@^1.0.0`;
//! - `npg-fixture-b`: 1.0.0, 1.0.1 (latest), both with a bin `npg-fixture-b` → `bin/cli.js`;
//!   1.0.1 has a harmless `postinstall` (`node -e "0"`);
//! - `@npg-test/scoped`: 1.0.0, 1.2.0 (latest), 2.0.0-beta.1 (`next`);
//! - `npg-corrupt`: 1.0.0, whose served tarball is a valid `.tgz` that does NOT match its
//!   `dist.integrity`/`dist.shasum` (`tarball_bytes` returns the genuine bytes);
//! - `npg-legacy`: 1.0.0 with only `dist.shasum` (no `integrity`).
//!
//! Registry signatures: every version with an integrity carries `dist.signatures`, npm's
//! ECDSA P-256 signature of `<name>@<version>:<integrity>` by a key generated at start, which
//! `/registry/-/npm/v1/keys` publishes (`set_keys_published(false)`: 404, as an upstream
//! without keys); `alter_signature` and `remove_signature` spoil one version's.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a version's `postinstall` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Postinstall {
    /// In the manifest and in the tarball's package.json.
    Declared,
    /// Only in the tarball's package.json ("manifest confusion": npm runs it all the same).
    Undeclared,
}

/// What the fake does wrong, for every request, until set back to `Failure::None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Normal behaviour.
    None,
    /// Every request answers this status with a JSON body `{"error": "..."}`.
    Status(u16),
    /// Every JSON response (packuments, manifests, dist-tags, search, ...) is 200 with a truncated,
    /// invalid JSON body. Tarballs are served normally.
    GarbageJson,
    /// Requests are read and recorded, and never answered.
    Hang,
    /// Requests are read and recorded, then the connection is reset (RST) without a response.
    ResetConnection,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Raw (not percent-decoded) path plus query, e.g. `/registry/@npg-test%2fscoped`.
    pub path_and_query: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The raw path, without the query.
    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("")
    }
}

/// The fake registry; its server stops when this is dropped.
pub struct FakeRegistry {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<RegistryState>,
    /// Mirrors `failure == ResetConnection` for the connection wrapper (read on every write).
    reset: AtomicBool,
}

struct RegistryState {
    /// `http://127.0.0.1:<port>`
    origin: String,
    packages: HashMap<String, Package>,
    failure: Failure,
    delay: Duration,
    total: usize,
    by_path: HashMap<String, usize>,
    packuments: HashMap<String, usize>,
    tarballs: HashMap<(String, String), usize>,
    log: Vec<RecordedRequest>,
    /// Private packages: name → the token that may read them (others get 404, as upstream).
    private: HashMap<String, String>,
    /// Packuments served exactly as given (hostile or broken documents), by name, with
    /// whether the bytes are gzip (sent with `Content-Encoding: gzip` whatever was accepted).
    raw: HashMap<String, (Vec<u8>, bool)>,
    signer: Signer,
    /// Whether `-/npm/v1/keys` answers (else 404).
    keys_published: bool,
}

/// The registry's signing key (npm's scheme: ECDSA P-256 over SHA-256, DER signatures).
struct Signer {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    keyid: String,
    /// SubjectPublicKeyInfo DER, base64: the `key` of the keys document.
    spki: String,
}

impl Signer {
    fn generate() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).expect("P-256 key");
        // The SPKI DER prefix of an uncompressed P-256 point.
        let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        der.extend_from_slice(pair.public_key().as_ref());
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let keyid = format!("SHA256:{}", b64(&sha2::Sha256::digest(&der)));
        Signer {
            keyid,
            spki: b64(&der),
            pair,
            rng,
        }
    }

    /// `dist.signatures` of `<name>@<version>:<integrity>`.
    fn signatures(&self, message: &str) -> Value {
        let sig = self.pair.sign(&self.rng, message.as_bytes()).expect("sign");
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
        json!([{ "keyid": self.keyid, "sig": sig }])
    }

    fn keys_document(&self) -> Value {
        json!({ "keys": [{
            "expires": null,
            "keyid": self.keyid,
            "keytype": "ecdsa-sha2-nistp256",
            "scheme": "ecdsa-sha2-nistp256",
            "key": self.spki,
        }]})
    }
}

struct Package {
    name: String,
    description: String,
    /// In publish order.
    versions: Vec<Version>,
    dist_tags: Vec<(String, String)>,
    created: String,
    modified: String,
    /// Rendered full document, cleared on every change.
    rendered: Option<Rendered>,
}

struct Version {
    version: String,
    time: String,
    /// File name of the tarball, e.g. `scoped-1.0.0.tgz`.
    file: String,
    manifest: Value,
    /// The genuine tarball (matches integrity and shasum).
    tgz: Vec<u8>,
    /// What `/files/...` serves: equal to `tgz` except for corrupt packages.
    served: Vec<u8>,
    integrity: Option<String>,
    shasum: String,
}

#[derive(Clone)]
struct Rendered {
    json: Arc<Vec<u8>>,
    gzip: Arc<Vec<u8>>,
    etag: String,
}

/// How a version of a package is made.
struct VersionSpec<'a> {
    version: &'a str,
    deps: &'a [(&'a str, &'a str)],
    bin: bool,
    postinstall: bool,
    /// A postinstall in the tarball only.
    undeclared_script: bool,
    corrupt: bool,
    legacy: bool,
    time_secs: i64,
}

impl<'a> VersionSpec<'a> {
    fn plain(version: &'a str, time_secs: i64) -> Self {
        VersionSpec {
            version,
            deps: &[],
            bin: false,
            postinstall: false,
            undeclared_script: false,
            corrupt: false,
            legacy: false,
            time_secs,
        }
    }
}

/// 2024-01-15T10:00:00Z: the fixtures' versions are dated from here, one day apart.
const BASE_TIME: i64 = 1_705_312_800;
const DAY: i64 = 86_400;
/// Mtime of every tar entry (what npm itself uses: 1985-10-26T08:15:00Z).
const TAR_MTIME: u64 = 499_162_500;

impl FakeRegistry {
    /// Starts the fake with the default package set.
    pub fn start() -> FakeRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake registry");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("fake registry address");
        let origin = format!("http://{addr}");
        let mut state = RegistryState {
            origin,
            packages: HashMap::new(),
            failure: Failure::None,
            delay: Duration::ZERO,
            total: 0,
            by_path: HashMap::new(),
            packuments: HashMap::new(),
            tarballs: HashMap::new(),
            log: Vec::new(),
            private: HashMap::new(),
            raw: HashMap::new(),
            signer: Signer::generate(),
            keys_published: true,
        };
        state.add_default_packages();
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            reset: AtomicBool::new(false),
        });

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-registry-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake registry runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let listener = ResettableListener {
                        inner: listener,
                        shared: server_shared.clone(),
                    };
                    let app = Router::new().fallback(handle).with_state(server_shared);
                    let server = axum::serve(listener, app);
                    tokio::select! {
                        _ = server => {}
                        _ = rx => {}
                    }
                });
                // Hanging handlers and open connections are abandoned here.
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn fake registry thread");

        FakeRegistry {
            shared,
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/registry/` (with the trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}/registry/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests whose raw URI path (as received, before percent-decoding, without the query)
    /// equals `path`, any method.
    pub fn requests(&self, path: &str) -> usize {
        self.lock().by_path.get(path).copied().unwrap_or(0)
    }

    /// Requests (GET/HEAD) for the packument of `name`, in any accepted encoding of the name.
    /// Version manifests (`/registry/<name>/<version>`) are not counted.
    pub fn packument_requests(&self, name: &str) -> usize {
        self.lock().packuments.get(name).copied().unwrap_or(0)
    }

    /// Requests for the tarball `file` (e.g. `npg-fixture-a-2.0.0.tgz`, or `scoped-1.0.0.tgz` for
    /// `@npg-test/scoped`; the `.tgz` suffix may be left out) of `name`, whatever the encoding.
    pub fn tarball_requests(&self, name: &str, file: &str) -> usize {
        let file = if file.ends_with(".tgz") {
            file.to_string()
        } else {
            format!("{file}.tgz")
        };
        self.lock()
            .tarballs
            .get(&(name.to_string(), file))
            .copied()
            .unwrap_or(0)
    }

    /// All tarball requests for any file of `name`.
    pub fn tarball_requests_any(&self, name: &str) -> usize {
        self.lock()
            .tarballs
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| c)
            .sum()
    }

    /// All requests received, whatever they were.
    pub fn total_requests(&self) -> usize {
        self.lock().total
    }

    /// Forgets every count and recorded request.
    pub fn reset_counts(&self) {
        let mut s = self.lock();
        s.total = 0;
        s.by_path.clear();
        s.packuments.clear();
        s.tarballs.clear();
        s.log.clear();
    }

    /// Delays every response by `d` (the request is counted first).
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Misbehaves on every request from now on, until `Failure::None`.
    pub fn set_failure(&self, f: Failure) {
        let mut s = self.lock();
        s.failure = f;
        self.shared.reset.store(f == Failure::ResetConnection, Ordering::SeqCst);
    }

    /// Publishes a new version now: a new tarball, `time[version]` and `time.modified` set to
    /// the current time, `latest` moved to it, so the packument (and its ETag) changes. Creates
    /// the package if it does not exist. Panics if the version already exists.
    pub fn publish(&self, name: &str, version: &str) {
        let now = now_secs();
        self.publish_at(name, version, now);
    }

    /// Like `publish`, with `time[version]` set to the given UNIX time (seconds).
    pub fn publish_at(&self, name: &str, version: &str, unix_secs: i64) {
        let mut s = self.lock();
        let spec = VersionSpec::plain(version, unix_secs);
        if !s.packages.contains_key(name) {
            s.create_package(name, &format!("Test package {name}"), unix_secs);
        }
        s.add_version(name, &spec);
        s.set_tag(name, "latest", version);
    }

    /// Like `publish_at`, the version having a `postinstall` script in its tarball's
    /// package.json, and in its manifest as `postinstall` says.
    pub fn publish_with_script(&self, name: &str, version: &str, unix_secs: i64, postinstall: Postinstall) {
        let mut s = self.lock();
        let spec = VersionSpec {
            postinstall: postinstall == Postinstall::Declared,
            undeclared_script: postinstall == Postinstall::Undeclared,
            ..VersionSpec::plain(version, unix_secs)
        };
        if !s.packages.contains_key(name) {
            s.create_package(name, &format!("Test package {name}"), unix_secs);
        }
        s.add_version(name, &spec);
        s.set_tag(name, "latest", version);
    }

    /// Adds a package with these versions (in this order, dated one day apart in 2024, `latest`
    /// on the last one). Panics if the package exists.
    pub fn add_package(&self, name: &str, versions: &[&str]) {
        let mut s = self.lock();
        assert!(
            !s.packages.contains_key(name),
            "fake registry: package {name} already exists"
        );
        let start = BASE_TIME + 30 * DAY;
        s.create_package(name, &format!("Test package {name}"), start);
        for (i, v) in versions.iter().enumerate() {
            s.add_version(name, &VersionSpec::plain(v, start + i as i64 * DAY));
        }
        if let Some(last) = versions.last() {
            s.set_tag(name, "latest", last);
        }
    }

    /// Makes a package private: its packument, manifests and tarballs answer 404 unless the
    /// request carries `Authorization: Bearer <token>`.
    pub fn set_private(&self, name: &str, token: &str) {
        self.lock().private.insert(name.to_string(), token.to_string());
    }

    /// Serves `body` as the packument of `name` (any bytes, as `application/json`), for
    /// documents no honest registry would send.
    pub fn set_raw_packument(&self, name: &str, body: impl Into<Vec<u8>>) {
        self.lock().raw.insert(name.to_string(), (body.into(), false));
    }

    /// Serves `gz` as the gzip-encoded packument of `name` (e.g. a gzip bomb).
    pub fn set_raw_packument_gzip(&self, name: &str, gz: Vec<u8>) {
        self.lock().raw.insert(name.to_string(), (gz, true));
    }

    /// The keyid the fake signs with (`SHA256:<base64>` of its public key).
    pub fn keyid(&self) -> String {
        self.lock().signer.keyid.clone()
    }

    /// Whether `-/npm/v1/keys` answers (true at start) or is 404.
    pub fn set_keys_published(&self, published: bool) {
        self.lock().keys_published = published;
    }

    /// Replaces the signature of `name@version` by a well-formed one of another message: what
    /// a version altered after signing (or a forged signature) looks like.
    pub fn alter_signature(&self, name: &str, version: &str) {
        self.set_signatures(name, version, |signer| {
            signer.signatures(&format!("{name}@{version}:altered"))
        });
    }

    /// A new signing key: every version signed again with it, and only it published (what an
    /// upstream that re-signs what it alters looks like). Returns the new keyid.
    pub fn rotate_signer(&self) -> String {
        let mut s = self.lock();
        s.signer = Signer::generate();
        let state = &mut *s;
        for (name, pkg) in state.packages.iter_mut() {
            for v in pkg.versions.iter_mut() {
                let dist = v.manifest["dist"].as_object_mut().expect("dist");
                let Some(integrity) = dist.get("integrity").and_then(Value::as_str) else {
                    continue;
                };
                let signatures = state.signer.signatures(&format!("{name}@{}:{integrity}", v.version));
                dist.insert("signatures".into(), signatures);
            }
            pkg.rendered = None;
        }
        state.signer.keyid.clone()
    }

    /// Removes `dist.signatures` from `name@version`.
    pub fn remove_signature(&self, name: &str, version: &str) {
        self.set_signatures(name, version, |_| Value::Null);
    }

    fn set_signatures(&self, name: &str, version: &str, make: impl FnOnce(&Signer) -> Value) {
        let mut s = self.lock();
        let signatures = make(&s.signer);
        let pkg = s.packages.get_mut(name).expect("fake registry: no such package");
        let v = pkg
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .expect("no such version");
        let dist = v.manifest["dist"].as_object_mut().expect("dist");
        match signatures {
            Value::Null => dist.remove("signatures"),
            s => dist.insert("signatures".into(), s),
        };
        pkg.rendered = None;
    }

    /// The genuine tarball bytes (the ones matching `dist.integrity` and `dist.shasum`).
    pub fn tarball_bytes(&self, name: &str, version: &str) -> Vec<u8> {
        self.with_version(name, version, |v| v.tgz.clone())
    }

    /// `dist.integrity` (`sha512-...`), None for a shasum-only version.
    pub fn integrity(&self, name: &str, version: &str) -> Option<String> {
        self.with_version(name, version, |v| v.integrity.clone())
    }

    /// `sha512-<base64>` of the genuine tarball, even for a version that only has a shasum.
    pub fn sha512_integrity(&self, name: &str, version: &str) -> String {
        self.with_version(name, version, |v| sri_sha512(&v.tgz))
    }

    /// `dist.shasum` (hex SHA-1 of the genuine tarball).
    pub fn shasum(&self, name: &str, version: &str) -> String {
        self.with_version(name, version, |v| v.shasum.clone())
    }

    /// The tarball's file name, e.g. `scoped-1.2.0.tgz`.
    pub fn tarball_file(&self, name: &str, version: &str) -> String {
        self.with_version(name, version, |v| v.file.clone())
    }

    /// `dist.tarball` as served: `http://127.0.0.1:<port>/files/<name>/-/<file>`.
    pub fn tarball_url(&self, name: &str, version: &str) -> String {
        let origin = self.lock().origin.clone();
        let file = self.tarball_file(name, version);
        format!("{origin}/files/{name}/-/{file}")
    }

    /// The full packument exactly as served (Value::Null for an unknown package).
    pub fn packument_json(&self, name: &str) -> Value {
        let mut s = self.lock();
        match s.render(name) {
            Some(r) => serde_json::from_slice(&r.json).expect("own packument is JSON"),
            None => Value::Null,
        }
    }

    /// The last request whose raw path (without query) or raw path and query equals `path`.
    pub fn last_request(&self, path: &str) -> Option<RecordedRequest> {
        let s = self.lock();
        s.log
            .iter()
            .rev()
            .find(|r| r.path() == path || r.path_and_query == path)
            .cloned()
    }

    /// Every request received since the start or the last `reset_counts`, in order.
    pub fn all_requests(&self) -> Vec<RecordedRequest> {
        self.lock().log.clone()
    }

    fn lock(&self) -> MutexGuard<'_, RegistryState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_version<T>(&self, name: &str, version: &str, f: impl FnOnce(&Version) -> T) -> T {
        let s = self.lock();
        let pkg = s
            .packages
            .get(name)
            .unwrap_or_else(|| panic!("fake registry: no package {name}"));
        let v = pkg
            .versions
            .iter()
            .find(|v| v.version == version)
            .unwrap_or_else(|| panic!("fake registry: no version {name}@{version}"));
        f(v)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Package data

impl RegistryState {
    fn add_default_packages(&mut self) {
        let t = |day: i64| BASE_TIME + day * DAY;

        self.create_package("npg-fixture-b", "Fixture B: a dependency with a bin", t(0));
        for (i, (v, postinstall)) in [("1.0.0", false), ("1.0.1", true)].into_iter().enumerate() {
            let spec = VersionSpec {
                bin: true,
                postinstall,
                ..VersionSpec::plain(v, t(i as i64))
            };
            self.add_version("npg-fixture-b", &spec);
        }
        self.set_tag("npg-fixture-b", "latest", "1.0.1");

        self.create_package("@npg-test/scoped", "A scoped fixture package", t(2));
        self.add_version("@npg-test/scoped", &VersionSpec::plain("1.0.0", t(2)));
        self.add_version("@npg-test/scoped", &VersionSpec::plain("1.2.0", t(3)));
        self.add_version("@npg-test/scoped", &VersionSpec::plain("2.0.0-beta.1", t(4)));
        self.set_tag("@npg-test/scoped", "latest", "1.2.0");
        self.set_tag("@npg-test/scoped", "next", "2.0.0-beta.1");

        self.create_package("npg-fixture-a", "Fixture A: the top-level dependency", t(5));
        self.add_version("npg-fixture-a", &VersionSpec::plain("1.0.0", t(5)));
        self.add_version("npg-fixture-a", &VersionSpec::plain("1.1.0", t(6)));
        let deps = [("npg-fixture-b", "^1.0.0"), ("@npg-test/scoped", "^1.0.0")];
        self.add_version(
            "npg-fixture-a",
            &VersionSpec {
                deps: &deps,
                ..VersionSpec::plain("2.0.0", t(7))
            },
        );
        self.set_tag("npg-fixture-a", "latest", "2.0.0");

        self.create_package("npg-corrupt", "Its tarball does not match its integrity", t(8));
        self.add_version(
            "npg-corrupt",
            &VersionSpec {
                corrupt: true,
                ..VersionSpec::plain("1.0.0", t(8))
            },
        );
        self.set_tag("npg-corrupt", "latest", "1.0.0");

        self.create_package("npg-legacy", "An old package with only a shasum", t(9));
        self.add_version(
            "npg-legacy",
            &VersionSpec {
                legacy: true,
                ..VersionSpec::plain("1.0.0", t(9))
            },
        );
        self.set_tag("npg-legacy", "latest", "1.0.0");
    }

    fn create_package(&mut self, name: &str, description: &str, created_secs: i64) {
        let created = iso_time(created_secs);
        self.packages.insert(
            name.to_string(),
            Package {
                name: name.to_string(),
                description: description.to_string(),
                versions: Vec::new(),
                dist_tags: Vec::new(),
                modified: created.clone(),
                created,
                rendered: None,
            },
        );
    }

    fn set_tag(&mut self, name: &str, tag: &str, version: &str) {
        let pkg = self
            .packages
            .get_mut(name)
            .unwrap_or_else(|| panic!("fake registry: no package {name}"));
        assert!(
            pkg.versions.iter().any(|v| v.version == version),
            "fake registry: no version {name}@{version} for tag {tag}"
        );
        match pkg.dist_tags.iter_mut().find(|(t, _)| t == tag) {
            Some(entry) => entry.1 = version.to_string(),
            None => pkg.dist_tags.push((tag.to_string(), version.to_string())),
        }
        pkg.rendered = None;
    }

    fn add_version(&mut self, name: &str, spec: &VersionSpec<'_>) {
        let origin = self.origin.clone();
        let signer = &self.signer;
        let pkg = self
            .packages
            .get_mut(name)
            .unwrap_or_else(|| panic!("fake registry: no package {name}"));
        assert!(
            !pkg.versions.iter().any(|v| v.version == spec.version),
            "fake registry: {name}@{} already exists",
            spec.version
        );
        let version = spec.version;
        let basename = name.rsplit('/').next().unwrap_or(name);
        let file = format!("{basename}-{version}.tgz");

        let mut scripts = Map::new();
        scripts.insert("test".into(), json!("node index.js"));
        if spec.postinstall {
            scripts.insert("postinstall".into(), json!("node -e \"0\""));
        }
        let deps: Map<String, Value> = spec.deps.iter().map(|(n, r)| (n.to_string(), json!(r))).collect();
        let description = format!("{} (version {version})", pkg.description);

        // package/package.json as packed.
        let mut pj = Map::new();
        pj.insert("name".into(), json!(name));
        pj.insert("version".into(), json!(version));
        pj.insert("description".into(), json!(description));
        pj.insert("main".into(), json!("index.js"));
        if spec.bin {
            pj.insert("bin".into(), json!({ basename: "bin/cli.js" }));
        }
        let mut packed_scripts = scripts.clone();
        if spec.undeclared_script {
            packed_scripts.insert("postinstall".into(), json!("node -e \"0\""));
        }
        pj.insert("scripts".into(), Value::Object(packed_scripts));
        if !deps.is_empty() {
            pj.insert("dependencies".into(), Value::Object(deps.clone()));
        }
        pj.insert("license".into(), json!("MIT"));
        let pj_bytes = serde_json::to_vec_pretty(&Value::Object(pj)).unwrap();

        let index = format!(
            "'use strict';\nmodule.exports = {{ name: {}, version: {} }};\n",
            json!(name),
            json!(version)
        );
        let mut files: Vec<(&str, Vec<u8>, u32)> = vec![
            ("package/package.json", pj_bytes, 0o644),
            ("package/index.js", index.clone().into_bytes(), 0o644),
        ];
        if spec.bin {
            let cli = format!(
                "#!/usr/bin/env node\nconsole.log({});\n",
                json!(format!("{name} {version}"))
            );
            files.push(("package/bin/cli.js", cli.into_bytes(), 0o755));
        }
        let tgz = build_tgz(&files);
        let served = if spec.corrupt {
            let mut tampered = files.clone();
            tampered[1].1 = format!("{index}// tampered after publication\n").into_bytes();
            build_tgz(&tampered)
        } else {
            tgz.clone()
        };
        let file_count = files.len();
        let unpacked_size: usize = files.iter().map(|f| f.1.len()).sum();
        let integrity = (!spec.legacy).then(|| sri_sha512(&tgz));
        let shasum = hex::encode(Sha1::digest(&tgz));

        let mut dist = Map::new();
        if let Some(i) = &integrity {
            dist.insert("integrity".into(), json!(i));
        }
        dist.insert("shasum".into(), json!(shasum));
        dist.insert("tarball".into(), json!(format!("{origin}/files/{name}/-/{file}")));
        if let Some(i) = &integrity {
            dist.insert("signatures".into(), signer.signatures(&format!("{name}@{version}:{i}")));
        }
        if !spec.legacy {
            dist.insert("fileCount".into(), json!(file_count));
            dist.insert("unpackedSize".into(), json!(unpacked_size));
        }

        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        m.insert("version".into(), json!(version));
        m.insert("description".into(), json!(description));
        m.insert("main".into(), json!("index.js"));
        if spec.bin {
            m.insert("bin".into(), json!({ basename: "bin/cli.js" }));
        }
        m.insert("scripts".into(), Value::Object(scripts));
        m.insert("dependencies".into(), Value::Object(deps));
        m.insert("license".into(), json!("MIT"));
        m.insert("_id".into(), json!(format!("{name}@{version}")));
        m.insert(
            "_nodeVersion".into(),
            json!(if spec.legacy { "0.10.48" } else { "20.11.1" }),
        );
        m.insert(
            "_npmVersion".into(),
            json!(if spec.legacy { "1.4.29" } else { "10.2.4" }),
        );
        m.insert("_npmUser".into(), maintainer());
        m.insert("maintainers".into(), json!([maintainer()]));
        m.insert("directories".into(), json!({}));
        m.insert("dist".into(), Value::Object(dist));
        m.insert("_hasShrinkwrap".into(), json!(false));

        let time = iso_time(spec.time_secs);
        if time > pkg.modified {
            pkg.modified = time.clone();
        }
        pkg.versions.push(Version {
            version: version.to_string(),
            time,
            file,
            manifest: Value::Object(m),
            tgz,
            served,
            integrity,
            shasum,
        });
        pkg.rendered = None;
    }

    /// The full packument's bytes (cached until the package changes).
    fn render(&mut self, name: &str) -> Option<Rendered> {
        let pkg = self.packages.get_mut(name)?;
        if pkg.rendered.is_none() {
            let doc = full_packument(pkg);
            let json = serde_json::to_vec(&doc).unwrap();
            let etag = strong_etag(&json);
            let gzip = gzip(&json);
            pkg.rendered = Some(Rendered {
                json: Arc::new(json),
                gzip: Arc::new(gzip),
                etag,
            });
        }
        pkg.rendered.clone()
    }

    fn resolve_version(&self, name: &str, spec: &str) -> Option<Value> {
        let pkg = self.packages.get(name)?;
        let version = pkg
            .dist_tags
            .iter()
            .find(|(t, _)| t == spec)
            .map(|(_, v)| v.as_str())
            .unwrap_or(spec);
        pkg.versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.manifest.clone())
    }
}

fn maintainer() -> Value {
    json!({ "name": "npg-test", "email": "npg-test@example.invalid" })
}

fn full_packument(pkg: &Package) -> Value {
    let mut versions = Map::new();
    let mut time = Map::new();
    time.insert("created".into(), json!(pkg.created));
    time.insert("modified".into(), json!(pkg.modified));
    for v in &pkg.versions {
        versions.insert(v.version.clone(), v.manifest.clone());
        time.insert(v.version.clone(), json!(v.time));
    }
    let tags: Map<String, Value> = pkg.dist_tags.iter().map(|(t, v)| (t.clone(), json!(v))).collect();
    let rev = hex::encode(&Sha1::digest(serde_json::to_vec(&versions).unwrap())[..16]);
    let mut doc = Map::new();
    doc.insert("_id".into(), json!(pkg.name));
    doc.insert("_rev".into(), json!(format!("{}-{rev}", pkg.versions.len())));
    doc.insert("name".into(), json!(pkg.name));
    doc.insert("description".into(), json!(pkg.description));
    doc.insert("dist-tags".into(), Value::Object(tags));
    doc.insert("versions".into(), Value::Object(versions));
    doc.insert("time".into(), Value::Object(time));
    doc.insert("maintainers".into(), json!([maintainer()]));
    doc.insert(
        "readme".into(),
        json!(format!(
            "# {}\n\n{}\n\nA fixture of npg's test suite.\n",
            pkg.name, pkg.description
        )),
    );
    doc.insert("readmeFilename".into(), json!("README.md"));
    doc.insert("license".into(), json!("MIT"));
    Value::Object(doc)
}

/// The abbreviated ("corgi") form of a full packument, by npm's field list.
fn abbreviate(full: &Value) -> Value {
    const KEEP: &[&str] = &[
        "name",
        "version",
        "deprecated",
        "dependencies",
        "optionalDependencies",
        "devDependencies",
        "peerDependencies",
        "peerDependenciesMeta",
        "bundleDependencies",
        "bundledDependencies",
        "acceptDependencies",
        "bin",
        "directories",
        "engines",
        "_hasShrinkwrap",
        "funding",
        "cpu",
        "os",
        "libc",
        "dist",
    ];
    let mut versions = Map::new();
    if let Some(vs) = full["versions"].as_object() {
        for (k, m) in vs {
            let mut out = Map::new();
            for key in KEEP {
                if let Some(v) = m.get(*key) {
                    out.insert((*key).to_string(), v.clone());
                }
            }
            let scripts = &m["scripts"];
            if ["preinstall", "install", "postinstall"]
                .iter()
                .any(|s| scripts.get(*s).is_some())
            {
                out.insert("hasInstallScript".into(), json!(true));
            }
            versions.insert(k.clone(), Value::Object(out));
        }
    }
    json!({
        "name": full["name"],
        "modified": full["time"]["modified"],
        "dist-tags": full["dist-tags"],
        "versions": versions,
    })
}

fn build_tgz(files: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(TAR_MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut h, path, data.as_slice()).expect("tar entry");
    }
    let tar = builder.into_inner().expect("tar");
    gzip(&tar)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn sri_sha512(data: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(data))
    )
}

fn strong_etag(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha1::digest(data)))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2024-01-15T10:00:00.000Z` from UNIX seconds (proleptic Gregorian, UTC).
fn iso_time(secs: i64) -> String {
    let days = secs.div_euclid(DAY);
    let rem = secs.rem_euclid(DAY);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, PartialEq)]
enum Route {
    Packument(String),
    Manifest(String, String),
    Tarball(String, String),
    Ping,
    Whoami,
    Search,
    AuditBulk,
    Keys,
    DistTags(String),
    Publish(String),
    NotFound,
}

impl Route {
    fn is_json(&self) -> bool {
        !matches!(self, Route::Tarball(..))
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Splits a decoded `name[/rest...]` (with `@scope/name` taking two segments).
fn split_name(decoded: &str) -> Option<(String, Vec<String>)> {
    let segs: Vec<&str> = decoded.split('/').collect();
    let (name, rest) = if segs[0].starts_with('@') {
        if segs.len() < 2 || segs[1].is_empty() {
            return None;
        }
        (format!("{}/{}", segs[0], segs[1]), &segs[2..])
    } else {
        (segs[0].to_string(), &segs[1..])
    };
    if name.is_empty() || name == "@" {
        return None;
    }
    Some((name, rest.iter().map(|s| s.to_string()).collect()))
}

fn parse_route(method: &Method, raw_path: &str) -> Route {
    let get = *method == Method::GET || *method == Method::HEAD;
    if let Some(rest) = raw_path.strip_prefix("/files/") {
        let Some((name, segs)) = split_name(&decode(rest)) else {
            return Route::NotFound;
        };
        return match segs.as_slice() {
            [dash, file] if dash == "-" && get => Route::Tarball(name, file.clone()),
            _ => Route::NotFound,
        };
    }
    let Some(rest) = raw_path.strip_prefix("/registry/") else {
        return Route::NotFound;
    };
    if let Some(special) = rest.strip_prefix("-/") {
        return match (method.clone(), special) {
            (_, "ping") if get => Route::Ping,
            (_, "whoami") if get => Route::Whoami,
            (_, "v1/search") if get => Route::Search,
            (Method::POST, "npm/v1/security/advisories/bulk") => Route::AuditBulk,
            (_, "npm/v1/keys") if get => Route::Keys,
            (_, s) if get && s.starts_with("package/") && s.ends_with("/dist-tags") => {
                let inner = &s["package/".len()..s.len() - "/dist-tags".len()];
                Route::DistTags(decode(inner))
            }
            _ => Route::NotFound,
        };
    }
    let Some((name, segs)) = split_name(&decode(rest)) else {
        return Route::NotFound;
    };
    match (method.clone(), segs.as_slice()) {
        (Method::PUT, []) => Route::Publish(name),
        (_, []) if get => Route::Packument(name),
        (_, [spec]) if get && !spec.is_empty() => Route::Manifest(name, spec.clone()),
        _ => Route::NotFound,
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20).await.unwrap_or_default();
    let raw_path = parts.uri.path().to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or(raw_path.clone());
    let route = parse_route(&parts.method, &raw_path);

    let (failure, delay) = {
        let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total += 1;
        *s.by_path.entry(raw_path.clone()).or_default() += 1;
        match &route {
            Route::Packument(name) => *s.packuments.entry(name.clone()).or_default() += 1,
            Route::Tarball(name, file) => *s.tarballs.entry((name.clone(), file.clone())).or_default() += 1,
            _ => {}
        }
        s.log.push(RecordedRequest {
            method: parts.method.to_string(),
            path_and_query,
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        });
        (s.failure, s.delay)
    };

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match failure {
        Failure::None => {}
        Failure::Hang => std::future::pending::<()>().await,
        // The connection wrapper fails the write of this response and resets the socket.
        Failure::ResetConnection => return Response::new(Body::empty()),
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("error");
            return json_response(status, &json!({ "error": reason }));
        }
        Failure::GarbageJson if route.is_json() => {
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"_id":"garbage","name":"garbage","versions":{"1.0.0":{"na"#,
                ))
                .unwrap();
        }
        Failure::GarbageJson => {}
    }

    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    respond(&mut s, route, &parts.headers, &parts.uri)
}

fn respond(s: &mut RegistryState, route: Route, headers: &HeaderMap, uri: &axum::http::Uri) -> Response {
    let named = match &route {
        Route::Packument(name) | Route::Manifest(name, _) | Route::Tarball(name, _) => s.private.get(name),
        _ => None,
    };
    if named.is_some_and(|token| username(headers).as_ref() != Some(token)) {
        return not_found();
    }
    match route {
        Route::Packument(name) if s.raw.contains_key(&name) => {
            let (body, gzip) = s.raw[&name].clone();
            let mut resp = Response::builder().header(header::CONTENT_TYPE, "application/json");
            if gzip {
                resp = resp.header(header::CONTENT_ENCODING, "gzip");
            }
            resp.body(Body::from(body)).unwrap()
        }
        Route::Packument(name) => {
            let Some(rendered) = s.render(&name) else {
                return not_found();
            };
            let accept = header_str(headers, header::ACCEPT);
            if accept.contains("application/vnd.npm.install-v1+json") {
                let doc = abbreviate(&serde_json::from_slice(&rendered.json).unwrap());
                let body = serde_json::to_vec(&doc).unwrap();
                let etag = strong_etag(&body);
                return document(headers, "application/vnd.npm.install-v1+json", body, None, etag);
            }
            let gz = Some(rendered.gzip.as_ref().clone());
            document(
                headers,
                "application/json",
                rendered.json.as_ref().clone(),
                gz,
                rendered.etag.clone(),
            )
        }
        Route::Manifest(name, spec) => match s.resolve_version(&name, &spec) {
            Some(m) => json_response(StatusCode::OK, &m),
            None => not_found(),
        },
        Route::Tarball(name, file) => {
            let Some(v) = s
                .packages
                .get(&name)
                .and_then(|p| p.versions.iter().find(|v| v.file == file))
            else {
                return not_found();
            };
            let etag = strong_etag(&v.served);
            if if_none_match(headers, &[&etag]) {
                return not_modified(&etag);
            }
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::ETAG, etag)
                .header(header::CACHE_CONTROL, "public, immutable, max-age=31557600")
                .body(Body::from(v.served.clone()))
                .unwrap()
        }
        Route::Ping => json_response(StatusCode::OK, &json!({})),
        Route::Whoami => match username(headers) {
            Some(u) => json_response(StatusCode::OK, &json!({ "username": u })),
            None => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({ "error": "This command requires you to be logged in." }),
            ),
        },
        Route::Search => {
            let text = uri
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("text="))
                .map(|t| decode(&t.replace('+', " ")).to_lowercase())
                .unwrap_or_default();
            let mut names: Vec<&String> = s.packages.keys().filter(|n| n.contains(text.trim())).collect();
            names.sort();
            let objects: Vec<Value> = names
                .iter()
                .map(|n| {
                    let p = &s.packages[*n];
                    let latest = p.dist_tags.iter().find(|(t, _)| t == "latest").map(|(_, v)| v.clone());
                    json!({
                        "package": {
                            "name": p.name,
                            "scope": if p.name.starts_with('@') { p.name[1..].split('/').next().unwrap_or("unscoped") } else { "unscoped" },
                            "version": latest,
                            "description": p.description,
                            "date": p.modified,
                            "links": {},
                            "publisher": { "username": "npg-test", "email": "npg-test@example.invalid" },
                            "maintainers": [{ "username": "npg-test", "email": "npg-test@example.invalid" }],
                        },
                        "score": { "final": 0.5, "detail": { "quality": 0.5, "popularity": 0.5, "maintenance": 0.5 } },
                        "searchScore": 1.0,
                    })
                })
                .collect();
            let total = objects.len();
            json_response(
                StatusCode::OK,
                &json!({ "objects": objects, "total": total, "time": iso_time(now_secs()) }),
            )
        }
        Route::AuditBulk => json_response(StatusCode::OK, &json!({})),
        Route::Keys if s.keys_published => json_response(StatusCode::OK, &s.signer.keys_document()),
        Route::Keys => not_found(),
        Route::DistTags(name) => match s.packages.get(&name) {
            Some(p) => {
                let tags: Map<String, Value> = p.dist_tags.iter().map(|(t, v)| (t.clone(), json!(v))).collect();
                json_response(StatusCode::OK, &Value::Object(tags))
            }
            None => not_found(),
        },
        Route::Publish(_) => json_response(StatusCode::CREATED, &json!({ "ok": true })),
        Route::NotFound => not_found(),
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    header_str(headers, header::ACCEPT_ENCODING).split(',').any(|part| {
        let mut it = part.split(';');
        let coding = it.next().unwrap_or("").trim();
        let zero_q = it.any(|p| {
            let p = p.trim();
            p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero_q
    })
}

/// Weak comparison, as `If-None-Match` wants: `W/` prefixes are ignored, `*` matches.
fn if_none_match(headers: &HeaderMap, etags: &[&str]) -> bool {
    let inm = header_str(headers, header::IF_NONE_MATCH);
    inm.split(',').map(|t| t.trim()).filter(|t| !t.is_empty()).any(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || etags.iter().any(|e| e.strip_prefix("W/").unwrap_or(e) == t)
    })
}

fn not_modified(etag: &str) -> Response {
    Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header(header::ETAG, etag)
        .body(Body::empty())
        .unwrap()
}

/// A JSON document with a strong ETag, gzip-encoded when the client accepts it (the gzip
/// representation has its own ETag, `"<hash>-gzip"`; `If-None-Match` with either gives 304).
fn document(headers: &HeaderMap, content_type: &str, json: Vec<u8>, gz: Option<Vec<u8>>, etag: String) -> Response {
    let gzip_etag = format!("{}-gzip\"", etag.trim_end_matches('"'));
    let use_gzip = accepts_gzip(headers);
    let served_etag = if use_gzip { &gzip_etag } else { &etag };
    if if_none_match(headers, &[&etag, &gzip_etag]) {
        let mut r = not_modified(served_etag);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept-Encoding, Accept"));
        return r;
    }
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ETAG, served_etag.as_str())
        .header(header::CACHE_CONTROL, "public, max-age=300")
        .header(header::VARY, "Accept-Encoding, Accept");
    let body = if use_gzip {
        b = b.header(header::CONTENT_ENCODING, "gzip");
        gz.unwrap_or_else(|| gzip(&json))
    } else {
        json
    };
    b.body(Body::from(body)).unwrap()
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn not_found() -> Response {
    json_response(StatusCode::NOT_FOUND, &json!({ "error": "Not found" }))
}

/// `Bearer <token>` → the token itself; `Basic` → its user name.
fn username(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, value) = auth.split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !value.is_empty() {
        Some(value.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let user = decoded.split(':').next()?.to_string();
        (!user.is_empty()).then_some(user)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Connections that can be reset on demand

struct ResettableListener {
    inner: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for ResettableListener {
    type Io = ResettableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        ResettableStream {
                            inner: stream,
                            shared: self.shared.clone(),
                        },
                        addr,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream whose writes fail, after setting SO_LINGER to 0 (so closing sends RST), while the
/// fake is in `Failure::ResetConnection`: requests are still read and recorded, no byte of a
/// response goes out.
struct ResettableStream {
    inner: tokio::net::TcpStream,
    shared: Arc<Shared>,
}

impl ResettableStream {
    fn check_reset(&self) -> std::io::Result<()> {
        if self.shared.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fake registry: reset",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_reset() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_reset() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_reset() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_reset() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
