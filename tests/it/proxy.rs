//! One npg against the fake upstream: read API, caching, integrity, bad input, upstream
//! failures, passthrough, single-flight, graceful shutdown.

use std::time::Duration;

use serde_json::Value;

use crate::support;
use crate::support::http::{ABBREVIATED, get, raw_get};
use crate::support::npg::NpgProcess;
use crate::support::upstream::{Failure, FakeRegistry};

fn client() -> reqwest::Client {
    support::http::client()
}

fn start() -> (FakeRegistry, NpgProcess) {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[]);
    (up, npg)
}

#[tokio::test]
async fn full_packument_is_rewritten_and_keeps_time() {
    let (up, npg) = start();
    let r = get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(r.header("cache-control"), "public, no-cache");
    let doc = r.json();
    let original = up.packument_json("npg-fixture-a");
    assert_eq!(doc["time"], original["time"]);
    assert_eq!(doc["readme"], original["readme"]);
    for (v, m) in doc["versions"].as_object().unwrap() {
        assert_eq!(
            m["dist"]["tarball"],
            format!("{}/npg-fixture-a/-/npg-fixture-a-{v}.tgz", npg.proxy_url)
        );
        assert_eq!(m["dist"]["integrity"], original["versions"][v]["dist"]["integrity"]);
    }
    let again = get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(again.body, r.body);
    assert_eq!(up.packument_requests("npg-fixture-a"), 1);
}

#[tokio::test]
async fn scoped_names_in_every_spelling() {
    let (up, npg) = start();
    for path in ["@npg-test/scoped", "@npg-test%2fscoped", "@npg-test%2Fscoped"] {
        let r = get(&format!("{}/{path}", npg.proxy_url), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        let doc = r.json();
        assert_eq!(doc["name"], "@npg-test/scoped");
        let tarball = doc["versions"]["1.0.0"]["dist"]["tarball"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            tarball,
            format!("{}/@npg-test/scoped/-/scoped-1.0.0.tgz", npg.proxy_url)
        );
    }
    assert_eq!(up.packument_requests("@npg-test/scoped"), 1);
    let expected = up.tarball_bytes("@npg-test/scoped", "1.0.0");
    for path in [
        "@npg-test/scoped/-/scoped-1.0.0.tgz",
        "@npg-test%2fscoped/-/scoped-1.0.0.tgz",
    ] {
        let r = get(&format!("{}/{path}", npg.proxy_url), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, expected);
    }
    assert!(npg.storage.join("@n/@npg-test/scoped/scoped-1.0.0.tgz").is_file());
}

#[tokio::test]
async fn abbreviated_form_gzip_etag_and_304() {
    let (_up, npg) = start();
    let url = format!("{}/npg-fixture-b", npg.proxy_url);
    let r = get(
        &url,
        &[("accept", ABBREVIATED), ("accept-encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/vnd.npm.install-v1+json");
    assert_eq!(r.header("content-encoding"), "gzip");
    assert!(r.header("vary").contains("Accept"));
    let doc: Value = serde_json::from_slice(&r.decoded()).unwrap();
    assert!(doc.get("readme").is_none());
    assert!(doc["time"].is_object(), "abbreviated keeps time for release-age gates");
    assert_eq!(doc["versions"]["1.0.1"]["hasInstallScript"], true);
    assert!(doc["versions"]["1.0.1"]["bin"].is_object());
    assert!(doc["versions"]["1.0.1"].get("scripts").is_none());
    let etag = r.header("etag").to_string();
    assert!(etag.starts_with('"'), "strong ETag: {etag}");
    let cached = get(
        &url,
        &[
            ("accept", ABBREVIATED),
            ("accept-encoding", "gzip"),
            ("if-none-match", &etag),
        ],
    )
    .await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    let full = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(full.status, 200, "another form has another ETag");
    assert_ne!(full.header("etag"), etag);
    assert!(full.header("content-encoding").is_empty());
}

#[tokio::test]
async fn head_requests() {
    let (_up, npg) = start();
    let resp = client()
        .head(format!("{}/npg-fixture-a", npg.proxy_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let len: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(len > 100, "HEAD announces the length of the GET body");
    let resp = client()
        .head(format!("{}/npg-fixture-a/-/npg-fixture-a-1.0.0.tgz", npg.proxy_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn version_manifests_by_version_tag_and_range() {
    let (_up, npg) = start();
    for (spec, want) in [("1.1.0", "1.1.0"), ("latest", "2.0.0"), ("%5E1.0.0", "1.1.0")] {
        let r = get(&format!("{}/npg-fixture-a/{spec}", npg.proxy_url), &[]).await;
        assert_eq!(r.status, 200, "{spec}");
        assert_eq!(r.json()["version"], want);
        assert!(
            r.json()["dist"]["tarball"]
                .as_str()
                .unwrap()
                .starts_with(&npg.proxy_url)
        );
    }
    let r = get(&format!("{}/npg-fixture-a/9.9.9", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn tarballs_are_verified_cached_and_streamed_from_disk() {
    let (up, npg) = start();
    let url = format!("{}/npg-fixture-a/-/npg-fixture-a-1.0.0.tgz", npg.proxy_url);
    let expected = up.tarball_bytes("npg-fixture-a", "1.0.0");
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(r.body, expected);
    let on_disk = npg.storage.join("np/npg-fixture-a/npg-fixture-a-1.0.0.tgz");
    assert_eq!(std::fs::read(&on_disk).unwrap(), expected);
    let r = get(&url, &[]).await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(r.body, expected);
    let etag = r.header("etag").to_string();
    assert_eq!(get(&url, &[("if-none-match", &etag)]).await.status, 304);
    assert_eq!(up.tarball_requests("npg-fixture-a", "npg-fixture-a-1.0.0.tgz"), 1);
    // shasum-only packages are verified with it.
    let legacy = get(&format!("{}/npg-legacy/-/npg-legacy-1.0.0.tgz", npg.proxy_url), &[]).await;
    assert_eq!(legacy.body, up.tarball_bytes("npg-legacy", "1.0.0"));
    assert!(npg.storage.join("np/npg-legacy/npg-legacy-1.0.0.tgz").is_file());
}

#[tokio::test]
async fn corrupted_tarball_is_never_cached_or_served_whole() {
    let (up, npg) = start();
    let url = format!("{}/npg-corrupt/-/npg-corrupt-1.0.0.tgz", npg.proxy_url);
    for _ in 0..2 {
        // The abort may come before or after the response head reached the client; when the
        // whole download was checked before the head went out (a loaded machine), a 502 says why.
        let broken = match client().get(&url).send().await {
            Err(_) => true,
            Ok(resp) if resp.status() == 502 => {
                let body = resp.text().await.unwrap_or_default();
                body.contains("does not match its integrity")
            }
            Ok(resp) => resp.bytes().await.is_err(),
        };
        assert!(
            broken,
            "the client must see a broken download or a 502, not a complete bad tarball"
        );
    }
    assert!(!npg.storage.join("np/npg-corrupt/npg-corrupt-1.0.0.tgz").exists());
    assert_eq!(
        std::fs::read_dir(npg.storage.join(".tmp")).unwrap().count(),
        0,
        "temp file removed"
    );
    assert_eq!(up.tarball_requests("npg-corrupt", "npg-corrupt-1.0.0.tgz"), 2);
}

#[tokio::test]
async fn a_version_published_after_caching_is_found() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[("METADATA_MISS_TTL", "2s")]);
    assert_eq!(get(&format!("{}/npg-fixture-b", npg.proxy_url), &[]).await.status, 200);
    // A copy refreshed in the last METADATA_MISS_TTL is not refreshed again (no amplification).
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(2100));
    settle().await;
    up.publish("npg-fixture-b", "1.2.0");
    let r = get(
        &format!("{}/npg-fixture-b/-/npg-fixture-b-1.2.0.tgz", npg.proxy_url),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "refreshes the packument before answering 404");
    assert_eq!(r.body, up.tarball_bytes("npg-fixture-b", "1.2.0"));
    settle().await;
    up.publish("npg-fixture-b", "1.3.0");
    assert_eq!(
        get(&format!("{}/npg-fixture-b/1.3.0", npg.proxy_url), &[]).await.status,
        200
    );
    let doc = get(&format!("{}/npg-fixture-b", npg.proxy_url), &[]).await.json();
    assert_eq!(
        doc["dist-tags"]["latest"], "1.3.0",
        "the refreshed document is what is served next"
    );
    let missing = get(
        &format!("{}/npg-fixture-b/-/npg-fixture-b-7.0.0.tgz", npg.proxy_url),
        &[],
    )
    .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let (up, npg) = start();
    let cases: &[(&str, u16)] = &[
        ("/npm/_private", 400),
        ("/npm/.hidden", 400),
        ("/npm/@scope", 400),
        ("/npm/a%20b", 400),
        ("/npm/%252e%252e%252fetc", 400),
        ("/npm/a/-/..%2f..%2f..%2fetc%2fpasswd.tgz", 400),
        ("/npm/npg-fixture-a/-/npg-fixture-a-1.0.0.exe", 400),
        ("/npm/-/..%5c..%5cx", 400),
        ("/npm/%ff%fe", 400),
        ("/npm/does-not-exist", 404),
        ("/npm/does-not-exist/-/does-not-exist-1.0.0.tgz", 404),
        ("/nothing/here", 404),
    ];
    for (path, status) in cases {
        let r = get(&format!("{}{path}", npg.base), &[]).await;
        assert_eq!(r.status.as_u16(), *status, "{path}");
        let body = r.json();
        assert!(
            body["error"].is_string() && body["reason"].is_string(),
            "{path}: {body}"
        );
        assert_eq!(r.header("cache-control"), "no-store", "{path}");
    }
    // Sent raw: HTTP client libraries would normalise these paths before sending.
    for path in [
        "/npm/%2e%2e/%2e%2e/etc/passwd",
        "/npm/../../etc/passwd",
        "/npm/a/-/../../../x.tgz",
        "/npm/-/..%2F..%2Fx",
    ] {
        let (status, body) = raw_get(npg.port, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
    let long = format!("{}/npm/{}", npg.base, "a".repeat(9000));
    assert_eq!(get(&long, &[]).await.status, 414);
    let big_header = "x".repeat(70_000);
    let resp = client()
        .get(format!("{}/npm/npg-fixture-a", npg.base))
        .header("x-big", big_header)
        .send()
        .await;
    assert!(
        resp.map(|r| r.status() == 431).unwrap_or(true),
        "oversized headers are refused"
    );
    // Nothing escaped the storage dir, and npg still serves.
    let stored: Vec<_> = std::fs::read_dir(&npg.storage)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(stored, vec![std::ffi::OsString::from(".tmp")]);
    assert_eq!(get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await.status, 200);
    assert_eq!(up.requests("/registry/..%2f..%2fetc%2fpasswd"), 0);
}

#[tokio::test]
async fn upstream_failures_are_not_404s() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[("UPSTREAM_TIMEOUT", "1s")]);
    let url = |n: &str| format!("{}/{n}", npg.proxy_url);
    up.set_failure(Failure::Status(503));
    let r = get(&url("npg-fixture-a"), &[]).await;
    assert_eq!(r.status, 502);
    assert!(r.json()["reason"].as_str().unwrap().contains("503"));
    up.set_failure(Failure::GarbageJson);
    assert_eq!(get(&url("npg-fixture-b"), &[]).await.status, 502);
    up.set_failure(Failure::Hang);
    assert_eq!(get(&url("npg-legacy"), &[]).await.status, 504);
    up.set_failure(Failure::ResetConnection);
    assert_eq!(get(&url("@npg-test%2fscoped"), &[]).await.status, 502);
    up.set_failure(Failure::None);
    assert_eq!(
        get(&url("npg-fixture-a"), &[]).await.status,
        200,
        "nothing bad was cached"
    );
}

#[tokio::test]
async fn stale_copy_served_when_upstream_fails() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[("METADATA_TTL", "1s"), ("UPSTREAM_TIMEOUT", "1s")]);
    let url = format!("{}/npg-fixture-a", npg.proxy_url);
    let fresh = get(&url, &[]).await;
    assert_eq!(fresh.status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Expired, upstream unchanged: revalidated by ETag, not downloaded again.
    let revalidated = get(&url, &[]).await;
    assert_eq!(revalidated.header("x-cache"), "HIT");
    let last = up.last_request("/registry/npg-fixture-a").unwrap();
    assert!(last.header("if-none-match").is_some(), "revalidation is conditional");
    for failure in [Failure::Status(500), Failure::Hang, Failure::GarbageJson] {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        up.set_failure(failure);
        let stale = get(&url, &[]).await;
        assert_eq!(stale.status, 200, "{failure:?}");
        assert_eq!(stale.header("x-cache"), "STALE");
        assert!(stale.header("warning").contains("110"));
        assert_eq!(stale.body, fresh.body);
    }
}

#[tokio::test]
async fn hundred_concurrent_misses_make_one_upstream_request() {
    let up = FakeRegistry::start();
    up.set_delay(Duration::from_millis(300));
    let npg = NpgProcess::start(&up.url(), &[]);
    let url = format!("{}/npg-fixture-a", npg.proxy_url);
    let requests = (0..100).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { get(&url, &[("accept-encoding", "gzip")]).await })
    });
    let replies = futures_util::future::join_all(requests).await;
    for r in replies {
        assert_eq!(r.unwrap().status, 200);
    }
    assert_eq!(up.packument_requests("npg-fixture-a"), 1);
}

#[tokio::test]
async fn passthrough_is_byte_for_byte_with_auth() {
    let (up, npg) = start();
    let r = get(
        &format!("{}/-/whoami", npg.proxy_url),
        &[("authorization", "Bearer npm_token123")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last_request("/registry/-/whoami").unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer npm_token123"));
    assert!(r.header("cache-control") != "public, no-cache");

    let search = get(&format!("{}/-/v1/search?text=fixture&size=5", npg.proxy_url), &[]).await;
    assert_eq!(search.status, 200);
    assert!(
        up.last_request("/registry/-/v1/search")
            .unwrap()
            .path_and_query
            .ends_with("?text=fixture&size=5")
    );

    // npm sends the audit body gzip-encoded: it must arrive untouched.
    let raw = br#"{"npg-fixture-a":["1.0.0"]}"#;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, raw).unwrap();
    let gz = enc.finish().unwrap();
    let resp = client()
        .post(format!("{}/-/npm/v1/security/advisories/bulk", npg.proxy_url))
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(gz.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last_request("/registry/-/npm/v1/security/advisories/bulk").unwrap();
    assert_eq!(seen.body, gz);
    assert_eq!(seen.header("content-encoding"), Some("gzip"));

    let publish = client()
        .put(format!("{}/npg-new-pkg", npg.proxy_url))
        .header("authorization", "Bearer t")
        .body(r#"{"name":"npg-new-pkg"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 201);
    let seen = up.last_request("/registry/npg-new-pkg").unwrap();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body, br#"{"name":"npg-new-pkg"}"#);
}

#[tokio::test]
async fn ping_health_and_metrics() {
    let (_up, npg) = start();
    for path in ["/-/ping", "/npm/-/ping"] {
        let r = get(&format!("{}{path}", npg.base), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json(), serde_json::json!({}));
    }
    let health = get(&format!("{}/api/health", npg.base), &[]).await.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["redis"], "disabled");
    assert!(health["version"].is_string() && health["instance"].is_string());
    get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    let metrics = String::from_utf8(get(&format!("{}/metrics", npg.base), &[]).await.body).unwrap();
    for needle in [
        "npg_http_requests_total{route=\"packument\",status=\"200\"} 2",
        "npg_cache_lookups_total{tier=\"l1\",result=\"hit\"} 1",
        "npg_upstream_requests_total{kind=\"packument\",outcome=\"ok\"} 1",
        "npg_upstream_request_duration_seconds_count{kind=\"packument\"} 1",
        "npg_bytes_served_total{route=\"packument\"}",
    ] {
        assert!(metrics.contains(needle), "missing `{needle}` in\n{metrics}");
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = FakeRegistry::start();
    let mut npg = NpgProcess::start(&up.url(), &[]);
    up.set_delay(Duration::from_millis(800));
    let url = format!("{}/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", npg.proxy_url);
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    npg.signal("TERM");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, up.tarball_bytes("npg-fixture-a", "2.0.0"));
    let status = npg.wait_exit(Duration::from_secs(10)).expect("npg exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", npg.port)).is_err(),
        "no longer accepting"
    );
    assert_eq!(std::fs::read_dir(npg.storage.join(".tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn shutdown_delay_reports_draining_while_still_serving() {
    let up = FakeRegistry::start();
    let mut npg = NpgProcess::start(&up.url(), &[("SHUTDOWN_DELAY", "1500ms")]);
    let before = get(&format!("{}/api/health", npg.base), &[]).await;
    assert_eq!(before.status, 200);
    assert_eq!(before.header("connection"), "", "keep-alive until draining");
    npg.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = get(&format!("{}/api/health", npg.base), &[]).await;
    assert_eq!(health.status, 503, "balancers take the replica out first");
    assert_eq!(health.json()["status"], "draining");
    let served = get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    assert_eq!(served.status, 200, "still serving during the delay");
    assert_eq!(
        served.header("connection"),
        "close",
        "HTTP/1.1 clients move to another replica"
    );
    let status = npg.wait_exit(Duration::from_secs(10)).expect("exits after the delay");
    assert!(status.success());
}
