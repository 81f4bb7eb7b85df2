//! Tests of the fake upstream registry itself (support/upstream.rs): what it serves must be
//! what a real registry would, or the proxy's tests prove nothing.

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha512};

use crate::support::upstream::{Failure, FakeRegistry};

fn client() -> reqwest::Client {
    // reqwest is built with `rustls-no-provider`: it panics without a process-wide provider,
    // even for plain http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No automatic decompression: the tests look at the bytes on the wire.
    reqwest::Client::builder()
        .no_gzip()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn js(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("JSON body")
}

fn origin(reg: &FakeRegistry) -> String {
    format!("http://{}", reg.addr())
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gzip body");
    out
}

/// Files in a .tgz, as (path, contents).
fn untar(tgz: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.push((path, data));
    }
    files
}

#[test]
fn works_from_a_plain_test_and_urls_have_two_shapes() {
    let reg = FakeRegistry::start();
    let url = reg.url();
    assert_eq!(url, format!("http://127.0.0.1:{}/registry/", reg.addr().port()));
    let doc = reg.packument_json("npg-fixture-a");
    let tarball = doc["versions"]["2.0.0"]["dist"]["tarball"].as_str().unwrap();
    assert_eq!(
        tarball,
        format!("{}/files/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", origin(&reg))
    );
    assert!(
        !tarball.starts_with(&url),
        "tarballs must not live under the registry base"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        client()
            .get(format!("{url}npg-fixture-a"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    assert_eq!(reg.packument_requests("npg-fixture-a"), 1);
}

#[tokio::test]
async fn every_tarball_matches_its_integrity_and_shasum() {
    let reg = FakeRegistry::start();
    let http = client();
    let cases = [
        ("npg-fixture-a", "1.0.0"),
        ("npg-fixture-a", "1.1.0"),
        ("npg-fixture-a", "2.0.0"),
        ("npg-fixture-b", "1.0.0"),
        ("npg-fixture-b", "1.0.1"),
        ("@npg-test/scoped", "1.0.0"),
        ("@npg-test/scoped", "1.2.0"),
        ("@npg-test/scoped", "2.0.0-beta.1"),
        ("npg-legacy", "1.0.0"),
    ];
    for (name, version) in cases {
        let doc = reg.packument_json(name);
        let dist = &doc["versions"][version]["dist"];
        let resp = http.get(dist["tarball"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}@{version}");
        assert!(resp.headers()["etag"].to_str().unwrap().starts_with('"'));
        let bytes = resp.bytes().await.unwrap().to_vec();
        assert_eq!(bytes, reg.tarball_bytes(name, version));
        assert_eq!(dist["shasum"].as_str().unwrap(), hex::encode(Sha1::digest(&bytes)));
        let sri = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes))
        );
        assert_eq!(reg.sha512_integrity(name, version), sri);
        if name == "npg-legacy" {
            assert!(dist.get("integrity").is_none());
            assert_eq!(reg.integrity(name, version), None);
        } else {
            assert_eq!(dist["integrity"].as_str().unwrap(), sri);
            assert_eq!(reg.integrity(name, version).as_deref(), Some(sri.as_str()));
        }
        // A real npm tarball: package/package.json naming this version, package/index.js.
        let files = untar(&bytes);
        let pj = files
            .iter()
            .find(|(p, _)| p == "package/package.json")
            .expect("package.json");
        let pj: Value = serde_json::from_slice(&pj.1).unwrap();
        assert_eq!(pj["name"], name);
        assert_eq!(pj["version"], version);
        assert!(files.iter().any(|(p, _)| p == "package/index.js"));
        assert_eq!(
            dist.get("fileCount")
                .map(|c| c.as_u64().unwrap() as usize)
                .unwrap_or(files.len()),
            files.len()
        );
        let file = reg.tarball_file(name, version);
        assert_eq!(reg.tarball_requests(name, &file), 1);
    }
    // The bin of npg-fixture-b is in the tarball.
    let files = untar(&reg.tarball_bytes("npg-fixture-b", "1.0.1"));
    assert!(files.iter().any(|(p, _)| p == "package/bin/cli.js"));
}

#[tokio::test]
async fn corrupt_package_serves_other_bytes() {
    let reg = FakeRegistry::start();
    let doc = reg.packument_json("npg-corrupt");
    let dist = &doc["versions"]["1.0.0"]["dist"];
    let bytes = client()
        .get(dist["tarball"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_ne!(bytes.to_vec(), reg.tarball_bytes("npg-corrupt", "1.0.0"));
    let sri = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes))
    );
    assert_ne!(Some(sri), reg.integrity("npg-corrupt", "1.0.0"));
    // Still a valid tarball.
    assert!(untar(&bytes).iter().any(|(p, _)| p == "package/package.json"));
}

#[tokio::test]
async fn packuments_are_full_documents() {
    let reg = FakeRegistry::start();
    let doc = reg.packument_json("npg-fixture-a");
    for key in [
        "_id",
        "name",
        "description",
        "dist-tags",
        "versions",
        "time",
        "maintainers",
        "readme",
        "license",
    ] {
        assert!(doc.get(key).is_some(), "missing {key}");
    }
    assert_eq!(doc["dist-tags"]["latest"], "2.0.0");
    let v = &doc["versions"]["2.0.0"];
    for key in [
        "name",
        "version",
        "description",
        "main",
        "scripts",
        "dependencies",
        "_id",
        "_nodeVersion",
        "_npmVersion",
        "maintainers",
        "dist",
    ] {
        assert!(v.get(key).is_some(), "missing versions.2.0.0.{key}");
    }
    assert_eq!(v["dependencies"]["npg-fixture-b"], "^1.0.0");
    assert_eq!(v["dependencies"]["@npg-test/scoped"], "^1.0.0");
    for key in ["created", "modified", "1.0.0", "1.1.0", "2.0.0"] {
        assert!(doc["time"][key].as_str().unwrap().starts_with("2024-"), "time.{key}");
    }
    let b = reg.packument_json("npg-fixture-b");
    assert_eq!(b["time"]["1.0.0"], "2024-01-15T10:00:00.000Z");
    assert_eq!(b["versions"]["1.0.1"]["bin"]["npg-fixture-b"], "bin/cli.js");
    assert!(b["versions"]["1.0.1"]["scripts"]["postinstall"].is_string());
    let s = reg.packument_json("@npg-test/scoped");
    assert_eq!(s["dist-tags"]["latest"], "1.2.0");
    assert_eq!(s["dist-tags"]["next"], "2.0.0-beta.1");
    assert_eq!(
        s["versions"]["1.2.0"]["dist"]["tarball"].as_str().unwrap(),
        format!("{}/files/@npg-test/scoped/-/scoped-1.2.0.tgz", origin(&reg))
    );
    assert!(reg.packument_json("nope").is_null());

    // What goes over the wire is exactly packument_json, in every accepted name encoding.
    let http = client();
    for path in ["@npg-test%2fscoped", "@npg-test%2Fscoped", "@npg-test/scoped"] {
        let resp = http.get(format!("{}{path}", reg.url())).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.bytes().await.map(|b| js(&b)).unwrap();
        assert_eq!(body, s);
        assert_eq!(reg.requests(&format!("/registry/{path}")), 1);
    }
    assert_eq!(reg.packument_requests("@npg-test/scoped"), 3);

    // The abbreviated form when asked for it.
    let resp = http
        .get(format!("{}npg-fixture-b", reg.url()))
        .header(
            "accept",
            "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/vnd.npm.install-v1+json");
    let corgi: Value = resp.bytes().await.map(|b| js(&b)).unwrap();
    assert_eq!(corgi["modified"], b["time"]["modified"]);
    assert_eq!(corgi["versions"]["1.0.1"]["hasInstallScript"], true);
    assert!(corgi["versions"]["1.0.0"].get("hasInstallScript").is_none());
    assert!(corgi.get("time").is_none() && corgi["versions"]["1.0.1"].get("scripts").is_none());

    // Unknown package.
    let resp = http.get(format!("{}no-such-package", reg.url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.bytes().await.map(|b| js(&b)).unwrap(),
        serde_json::json!({"error": "Not found"})
    );
    // Tarballs are not under the registry base.
    let resp = http
        .get(format!("{}npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn etags_gzip_and_304() {
    let reg = FakeRegistry::start();
    let http = client();
    let url = format!("{}npg-fixture-a", reg.url());

    let plain = http.get(&url).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let etag = plain.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
    let plain_body = plain.bytes().await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&plain_body).unwrap(),
        reg.packument_json("npg-fixture-a")
    );

    let gz = http
        .get(&url)
        .header("accept-encoding", "gzip, deflate")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let gz_etag = gz.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(gunzip(&gz.bytes().await.unwrap()), plain_body.to_vec());

    for tag in [&etag, &gz_etag] {
        let resp = http
            .get(&url)
            .header("if-none-match", tag.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "{tag}");
    }
    let resp = http
        .get(&url)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Tarballs too.
    let tarball = reg.tarball_url("npg-fixture-a", "2.0.0");
    let resp = http.get(&tarball).send().await.unwrap();
    let tag = resp.headers()["etag"].to_str().unwrap().to_string();
    let resp = http.get(&tarball).header("if-none-match", tag).send().await.unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(reg.tarball_requests("npg-fixture-a", "npg-fixture-a-2.0.0.tgz"), 2);

    // A publish changes the document and its ETag, moves latest and adds a time entry.
    reg.publish("npg-fixture-a", "2.1.0");
    let resp = http
        .get(&url)
        .header("if-none-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.headers()["etag"].to_str().unwrap(), etag);
    let doc: Value = resp.bytes().await.map(|b| js(&b)).unwrap();
    assert_eq!(doc["dist-tags"]["latest"], "2.1.0");
    assert!(doc["time"]["2.1.0"].as_str().unwrap() > "2025-");
    assert_eq!(doc["time"]["modified"], doc["time"]["2.1.0"]);
    let bytes = http
        .get(reg.tarball_url("npg-fixture-a", "2.1.0"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), reg.tarball_bytes("npg-fixture-a", "2.1.0"));

    reg.add_package("npg-late", &["0.1.0", "0.2.0"]);
    let doc: Value = http
        .get(format!("{}npg-late", reg.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| js(&b))
        .unwrap();
    assert_eq!(doc["dist-tags"]["latest"], "0.2.0");
    assert_eq!(doc["versions"].as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn passthrough_endpoints_and_recording() {
    let reg = FakeRegistry::start();
    let http = client();
    let base = reg.url();

    let r = http.get(format!("{base}-/ping")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "{}".to_string()));
    assert_eq!(http.get(format!("{base}-/whoami")).send().await.unwrap().status(), 401);
    let r = http
        .get(format!("{base}-/whoami"))
        .bearer_auth("alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.map(|b| js(&b)).unwrap()["username"], "alice");
    let r: Value = http
        .get(format!("{base}-/v1/search?text=fixture&size=20"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| js(&b))
        .unwrap();
    assert_eq!(r["total"], 2);
    let r: Value = http
        .get(format!("{base}-/package/@npg-test%2fscoped/dist-tags"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| js(&b))
        .unwrap();
    assert_eq!(r, serde_json::json!({"latest": "1.2.0", "next": "2.0.0-beta.1"}));
    let r: Value = http
        .get(format!("{base}npg-fixture-a/latest"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| js(&b))
        .unwrap();
    assert_eq!(r["version"], "2.0.0");

    let audit_body = vec![0x1f, 0x8b, 0x08, 0x00, 1, 2, 3, 4];
    let r = http
        .post(format!("{base}-/npm/v1/security/advisories/bulk"))
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(audit_body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = reg.last_request("/registry/-/npm/v1/security/advisories/bulk").unwrap();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.body, audit_body);
    assert_eq!(rec.header("Content-Encoding"), Some("gzip"));

    let r = http
        .put(format!("{base}npg-new"))
        .bearer_auth("tok")
        .body("{\"name\":\"npg-new\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let rec = reg.last_request("/registry/npg-new").unwrap();
    assert_eq!(
        (rec.method.as_str(), rec.body.as_slice()),
        ("PUT", &b"{\"name\":\"npg-new\"}"[..])
    );
    assert_eq!(rec.header("authorization"), Some("Bearer tok"));
    assert_eq!(
        reg.last_request("/registry/-/v1/search").unwrap().path_and_query,
        "/registry/-/v1/search?text=fixture&size=20"
    );

    assert_eq!(reg.total_requests(), 8);
    reg.reset_counts();
    assert_eq!(reg.total_requests(), 0);
    assert!(reg.last_request("/registry/npg-new").is_none());
}

#[tokio::test]
async fn failures_and_delay() {
    let reg = FakeRegistry::start();
    let url = format!("{}npg-fixture-a", reg.url());
    let http = client();

    reg.set_failure(Failure::Status(503));
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);

    reg.set_failure(Failure::GarbageJson);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());

    reg.set_failure(Failure::ResetConnection);
    // A fresh connection: hyper retries a GET once when a *reused* connection is reset,
    // which would count the request twice.
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let err = fresh.get(&url).send().await.expect_err("reset must fail the request");
    assert!(!err.is_timeout(), "{err:?}");

    reg.set_failure(Failure::Hang);
    let _ = client();
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = quick.get(&url).send().await.expect_err("hang must time out");
    assert!(err.is_timeout(), "{err:?}");

    reg.set_failure(Failure::None);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(reg.packument_requests("npg-fixture-a"), 5);

    reg.set_delay(Duration::from_millis(300));
    let start = std::time::Instant::now();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    // Dropping the registry with a hanging request open must not block.
    reg.set_failure(Failure::Hang);
    let pending = tokio::spawn(async move { quick.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(reg);
    let _ = pending.await;
}
