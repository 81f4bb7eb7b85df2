//! npg against hostile or compromised upstreams: credentials that must not become npg's
//! identity, URLs and redirects to other hosts, bodies trickled byte by byte, slow uploads,
//! headers a proxy must not relay, and HTTP/2 bodies without Content-Length.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;

use crate::support;
use crate::support::hostile::{Behaviour, HostileServer};
use crate::support::http::{get, raw};
use crate::support::npg::NpgProcess;
use crate::support::upstream::{FakeRegistry, RecordedRequest};

/// Runs npg with `args` for at most 10 s: whether it exited with a failure, and all it printed.
fn run_briefly(registry_url: &str, args: &[&str]) -> (bool, String) {
    let storage = tempfile::tempdir().unwrap();
    let mut child = NpgProcess::command(registry_url, support::loopback(support::free_port()), storage.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn npg");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let failed = out.status.code().is_some_and(|c| c != 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (failed, text)
}

#[test]
fn registry_url_with_credentials_is_refused_at_start() {
    let url = "http://npg-bot:s3cr3t-t0ken@127.0.0.1:9/registry/";
    for args in [&["check-config"][..], &[]] {
        let (failed, out) = run_briefly(url, args);
        assert!(failed, "npg {args:?} accepted credentials in REGISTRY_URL:\n{out}");
        assert!(out.contains("UPSTREAM_AUTH_FILE"), "{out}");
        assert!(!out.contains("s3cr3t-t0ken"), "the token was printed:\n{out}");
    }
}

/// The `Authorization` upstream received on the requests of `method` whose path starts with
/// `path`, one entry a request.
fn authorizations(requests: &[RecordedRequest], method: &str, path: &str) -> Vec<Option<String>> {
    let matching = requests
        .iter()
        .filter(|r| r.method == method && r.path().starts_with(path));
    matching
        .map(|r| r.header("authorization").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn upstream_auth_file_is_used_on_npg_reads_only() {
    let up = FakeRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upstream-auth");
    std::fs::write(&file, "# npg's reads\n@npg-test Bearer c0rp-t0ken\n").unwrap();
    let npg = NpgProcess::start(&up.url(), &[("UPSTREAM_AUTH_FILE", file.to_str().unwrap())]);
    let scoped = format!("{}/@npg-test%2fscoped", npg.proxy_url);
    assert_eq!(get(&scoped, &[]).await.status, 200);
    assert_eq!(get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await.status, 200);
    let publish = |auth: Option<&'static str>| {
        let mut req = support::http::client()
            .put(&scoped)
            .header("content-type", "application/json");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.body(r#"{"_id":"@npg-test/scoped"}"#).send()
    };
    assert_eq!(publish(None).await.unwrap().status(), 201);
    assert_eq!(publish(Some("Bearer client-t0ken")).await.unwrap().status(), 201);

    let seen = up.all_requests();
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    assert_eq!(
        authorizations(&seen, "GET", "/registry/@npg-test"),
        [bearer("c0rp-t0ken")]
    );
    assert_eq!(authorizations(&seen, "GET", "/registry/npg-fixture-a"), [None]);
    // A client's write goes as the client, anonymous or not, never as npg.
    assert_eq!(
        authorizations(&seen, "PUT", "/registry/@npg-test"),
        [None, bearer("client-t0ken")]
    );
}

/// `npg-fixture-a`'s packument with each version's `dist.tarball` set to `url_of(version)`.
fn with_tarballs_at(fixtures: &FakeRegistry, url_of: impl Fn(&str) -> String) -> Vec<u8> {
    let mut doc = fixtures.packument_json("npg-fixture-a");
    for (v, m) in doc["versions"].as_object_mut().unwrap() {
        m["dist"]["tarball"] = json!(url_of(v));
    }
    serde_json::to_vec(&doc).unwrap()
}

#[tokio::test]
async fn tarballs_come_only_from_allowed_origins() {
    let (up, elsewhere) = (FakeRegistry::start(), FakeRegistry::start());
    let doc = with_tarballs_at(&up, |v| elsewhere.tarball_url("npg-fixture-a", v));
    up.set_raw_packument("npg-fixture-a", doc);
    let npg = NpgProcess::start(&up.url(), &[]);
    let tarball = "/npg-fixture-a/-/npg-fixture-a-1.0.0.tgz";
    let r = get(&format!("{}{tarball}", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 502);
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(&elsewhere.addr().to_string()), "{reason}");
    assert_eq!(
        elsewhere.total_requests(),
        0,
        "npg fetched from a host it was not given"
    );

    let allowed = format!("http://{}", elsewhere.addr());
    let npg = NpgProcess::start(&up.url(), &[("UPSTREAM_TARBALL_HOSTS", &allowed)]);
    let r = get(&format!("{}{tarball}", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, elsewhere.tarball_bytes("npg-fixture-a", "1.0.0"));
}

#[tokio::test]
async fn redirects_to_another_origin_are_not_followed() {
    let elsewhere = FakeRegistry::start();
    let hostile = HostileServer::start(Behaviour::Redirect(format!("{}npg-fixture-a", elsewhere.url())));
    let npg = NpgProcess::start(&hostile.url(), &[]);
    for path in ["/npg-fixture-a", "/-/whoami"] {
        let r = get(&format!("{}{path}", npg.proxy_url), &[]).await;
        assert_eq!(r.status, 502, "{path}");
        let reason = r.json()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(&elsewhere.addr().to_string()), "{reason}");
    }
    assert_eq!(elsewhere.total_requests(), 0, "npg followed a redirect to another host");
}

#[tokio::test]
async fn a_trickled_packument_gives_way_to_the_stale_copy() {
    let fixtures = FakeRegistry::start();
    let body = serde_json::to_vec(&fixtures.packument_json("npg-fixture-a")).unwrap();
    let hostile = HostileServer::start(Behaviour::Json(body.clone(), vec![]));
    let deadline = Duration::from_secs(2);
    let env = [("METADATA_TTL", "1s"), ("UPSTREAM_FETCH_DEADLINE", "2s")];
    let npg = NpgProcess::start(&hostile.url(), &env);
    let url = format!("{}/npg-fixture-a", npg.proxy_url);
    assert_eq!(get(&url, &[]).await.status, 200);

    // Each byte within UPSTREAM_TIMEOUT (30 s), the whole body never.
    hostile.set(Behaviour::Trickle(body, Duration::from_millis(500)));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(15), get(&url, &[]))
        .await
        .expect("npg did not answer within 15 s");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), "STALE");
    assert!(
        started.elapsed() < deadline + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_trickled_tarball_is_cut_at_its_deadline() {
    let fixtures = FakeRegistry::start();
    let hostile = HostileServer::start(Behaviour::Json(Vec::new(), vec![]));
    let doc = with_tarballs_at(&fixtures, |v| {
        format!("{}npg-fixture-a/-/npg-fixture-a-{v}.tgz", hostile.url())
    });
    hostile.set(Behaviour::Json(doc, vec![]));
    let npg = NpgProcess::start(&hostile.url(), &[("UPSTREAM_TARBALL_DEADLINE", "2s")]);
    assert_eq!(get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await.status, 200);

    let tgz = fixtures.tarball_bytes("npg-fixture-a", "1.0.0");
    hostile.set(Behaviour::Trickle(tgz, Duration::from_millis(200)));
    let url = format!("{}/npg-fixture-a/-/npg-fixture-a-1.0.0.tgz", npg.proxy_url);
    let started = Instant::now();
    let download = async { support::http::client().get(&url).send().await?.bytes().await };
    let result = tokio::time::timeout(Duration::from_secs(15), download)
        .await
        .expect("npg did not end the download within 15 s");
    assert!(result.is_err(), "a download cut upstream must not look complete");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_the_read_timeout() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[("UPSTREAM_TIMEOUT", "3s")]);
    // 400 KiB at 50 KiB/s: 8 s, well past UPSTREAM_TIMEOUT.
    let chunks = futures_util::stream::iter(0..80).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(vec![b'a' + (i % 26) as u8; 5 * 1024])
    });
    let resp = support::http::client()
        .put(format!("{}/npg-upload", npg.proxy_url))
        .header("content-type", "application/json")
        .header("content-length", (400 * 1024).to_string())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let put = up.last_request("/registry/npg-upload").unwrap();
    assert_eq!(put.body.len(), 400 * 1024);
}

/// Sends a passthrough request with `headers` (CRLF-terminated lines) on a raw socket, and
/// returns the request upstream received.
fn relayed_request(headers: &str) -> RecordedRequest {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[]);
    let request = format!(
        "GET /npm/-/whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer alice\r\n\
         {headers}Connection: close\r\n\r\n"
    );
    let (status, answer) = raw(npg.port, request.as_bytes(), Duration::from_secs(10));
    assert_eq!(status, 200, "{answer}");
    up.last_request("/registry/-/whoami").unwrap()
}

#[test]
fn headers_named_by_connection_are_not_forwarded() {
    let seen = relayed_request("Connection: X-Hop\r\nX-Hop: secret\r\nX-Kept: 1\r\n");
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(seen.header("x-kept"), Some("1"));
    assert_eq!(seen.header("authorization"), Some("Bearer alice"));
}

#[test]
fn client_addressing_is_not_relayed() {
    let seen = relayed_request("X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n");
    for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        assert_eq!(seen.header(name), None, "{name} relayed");
    }
}

#[tokio::test]
async fn upstream_cookies_and_hop_headers_do_not_reach_the_client() {
    let headers = vec![
        ("set-cookie", "session=upstream-secret"),
        ("connection", "x-upstream-hop"),
        ("x-upstream-hop", "1"),
        ("x-kept", "1"),
    ];
    let hostile = HostileServer::start(Behaviour::Json(br#"{"username":"alice"}"#.to_vec(), headers));
    let npg = NpgProcess::start(&hostile.url(), &[]);
    let r = get(&format!("{}/-/whoami", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("set-cookie"), "");
    assert_eq!(r.header("x-upstream-hop"), "");
    assert_eq!(r.header("x-kept"), "1");
}

#[tokio::test]
async fn an_http2_body_without_content_length_arrives() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[]);
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let parts: Vec<Result<&'static str, std::io::Error>> = vec![Ok(r#"{"_id":"#), Ok(r#""npg-h2"}"#)];
    let resp = h2
        .put(format!("{}/npg-h2", npg.proxy_url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 201);
    let put = up.last_request("/registry/npg-h2").unwrap();
    assert_eq!(put.header("content-length"), None);
    assert_eq!(put.body, br#"{"_id":"npg-h2"}"#);
}

/// npg asks for packuments gzip'd and decodes them itself, to the size the gzip trailer
/// says: a body that is not the gzip it claims to be, a trailer that lies, or an encoding
/// npg did not ask for is a clear 502, and the next good answer is served.
#[tokio::test]
async fn packuments_in_a_broken_or_unasked_encoding_are_refused() {
    let fixtures = FakeRegistry::start();
    let doc = serde_json::to_vec(&fixtures.packument_json("npg-fixture-a")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &doc).unwrap();
    let gz = gz.finish().unwrap();
    let mut lying = gz.clone();
    let at = lying.len() - 4;
    lying[at..].copy_from_slice(&((doc.len() / 2) as u32).to_le_bytes());

    let hostile = HostileServer::start(Behaviour::Json(Vec::new(), vec![]));
    let npg = NpgProcess::start(&hostile.url(), &[("METADATA_TTL", "0s")]);
    let url = format!("{}/npg-fixture-a", npg.proxy_url);
    let cases = [
        (doc.clone(), "gzip", "decodes to more than"),
        (
            [&b"not gzip"[..], &16u32.to_le_bytes()].concat(),
            "gzip",
            "not valid gzip",
        ),
        (lying, "gzip", "longer than its trailer says"),
        (doc.clone(), "br", "encoding npg did not ask for: br"),
    ];
    for (body, encoding, why) in cases {
        hostile.set(Behaviour::Json(body, vec![("content-encoding", encoding)]));
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 502, "{why}: {}", String::from_utf8_lossy(&r.body));
        let reason = r.json()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(why), "{why}: {reason}");
    }
    hostile.set(Behaviour::Json(gz, vec![("content-encoding", "gzip")]));
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "npg-fixture-a");
}
