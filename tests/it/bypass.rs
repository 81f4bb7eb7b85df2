//! No way around the guard: every path shape and every request that reaches a package's bytes
//! goes through the same policy.

use crate::support;
use crate::support::http::get;
use crate::support::npg::NpgProcess;
use crate::support::upstream::FakeRegistry;

const RULES: &str = r#"
packages:
  - name: npg-fixture-a
    versions: ["2.0.0"]
    reason: compromised release
  - name: npg-private
    versions: ["2.0.0"]
    reason: compromised release
  - name: -dash
    reason: typosquat
"#;

fn start(env: &[(&str, &str)]) -> (FakeRegistry, NpgProcess, tempfile::TempDir) {
    support::guarded::start_with(RULES, env)
}

/// Slashes that an upstream may merge or ignore (nginx `merge_slashes`, non-strict routers)
/// name the same tarball or manifest: npg judges them as the canonical path, and nothing that
/// names a package goes to upstream as it came.
#[tokio::test]
async fn extra_slashes_name_the_same_blocked_bytes() {
    let (up, npg, _dir) = start(&[]);
    let file = "npg-fixture-a-2.0.0.tgz";
    for path in [
        format!("/npg-fixture-a/-/{file}/"),
        format!("/npg-fixture-a//-/{file}"),
        format!("/npg-fixture-a/-//{file}"),
        format!("//npg-fixture-a/-/{file}"),
        "/npg-fixture-a/2.0.0/".to_string(),
        "/npg-fixture-a//2.0.0".to_string(),
    ] {
        let r = get(&format!("{}{path}", npg.proxy_url), &[]).await;
        assert_eq!(r.status.as_u16(), 403, "{path}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["versionSpec"], "2.0.0", "{path}");
    }
    let ok = get(
        &format!("{}/npg-fixture-a/-/npg-fixture-a-1.0.0.tgz/", npg.proxy_url),
        &[],
    )
    .await;
    assert_eq!(ok.status.as_u16(), 200);
    assert_eq!(ok.body, up.tarball_bytes("npg-fixture-a", "1.0.0"));
    for path in ["/npg-fixture-a/-/x/npg-fixture-a-2.0.0.tgz", "/npg-fixture-a/2.0.0/x"] {
        let r = get(&format!("{}{path}", npg.proxy_url), &[]).await;
        assert_eq!(r.status.as_u16(), 400, "{path}");
        assert_eq!(r.json()["error"], "Invalid path");
    }
    let relayed: Vec<String> = up
        .all_requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .filter(|p| p.contains("2.0.0"))
        .collect();
    assert!(
        relayed.is_empty(),
        "requests naming the blocked version reached upstream: {relayed:?}"
    );
}

/// A name that starts with `-` is a package, not the registry's `/-/` API (found by fuzzing:
/// `/-dash` was passed through, blocklist and all).
#[tokio::test]
async fn names_starting_with_a_dash_are_guarded() {
    let (up, npg, _dir) = start(&[]);
    up.add_package("-dash", &["1.0.0"]);
    for path in ["/-dash", "/-dash/1.0.0", "/-dash/-/-dash-1.0.0.tgz", "/%2Ddash"] {
        let r = get(&format!("{}{path}", npg.proxy_url), &[]).await;
        assert_eq!(r.status.as_u16(), 403, "{path}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(up.total_requests(), 0, "a blocked package reached upstream");
}

/// A package upstream serves only with the client's credentials goes through the same guard
/// (versions, tags, manifests, tarballs, URLs) and is never kept for anyone else.
#[tokio::test]
async fn credentials_do_not_switch_the_guard_off() {
    let (up, npg, _dir) = start(&[]);
    up.add_package("npg-private", &["1.0.0", "2.0.0"]);
    up.set_private("npg-private", "sekrit");
    let auth = [("authorization", "Bearer sekrit")];
    let url = |path: &str| format!("{}{path}", npg.proxy_url);

    let doc = get(&url("/npg-private"), &auth).await;
    assert_eq!(doc.status.as_u16(), 200, "{}", String::from_utf8_lossy(&doc.body));
    assert_eq!(doc.header("cache-control"), "private, no-cache");
    let json = doc.json();
    let versions: Vec<&String> = json["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["1.0.0"]);
    assert_eq!(json["dist-tags"]["latest"], "1.0.0");
    assert_eq!(
        json["versions"]["1.0.0"]["dist"]["tarball"],
        url("/npg-private/-/npg-private-1.0.0.tgz")
    );
    assert!(doc.header("npm-notice").contains("1 of 2 versions"));

    assert_eq!(get(&url("/npg-private/2.0.0"), &auth).await.status.as_u16(), 403);
    assert_eq!(get(&url("/npg-private/latest"), &auth).await.json()["version"], "1.0.0");
    let tags = get(&url("/-/package/npg-private/dist-tags"), &auth).await.json();
    assert_eq!(tags["latest"], "1.0.0");
    let blocked = get(&url("/npg-private/-/npg-private-2.0.0.tgz"), &auth).await;
    assert_eq!(blocked.status.as_u16(), 403);
    assert_eq!(blocked.json()["versionSpec"], "2.0.0");
    let allowed = get(&url("/npg-private/-/npg-private-1.0.0.tgz"), &auth).await;
    assert_eq!(allowed.status.as_u16(), 200);
    assert_eq!(allowed.body, up.tarball_bytes("npg-private", "1.0.0"));
    assert_eq!(allowed.header("cache-control"), "private, no-cache");
    let unknown = get(&url("/npg-private/-/npg-private-3.0.0.tgz"), &auth).await;
    assert_eq!(
        unknown.status.as_u16(),
        404,
        "a file the packument does not give is not fetched"
    );
    assert!(
        !npg.storage.join("np/npg-private").exists(),
        "a private tarball was cached"
    );

    // Nothing of it is served to anyone else, from any cache.
    for headers in [&[][..], &[("authorization", "Bearer other")][..]] {
        for path in [
            "/npg-private",
            "/npg-private/1.0.0",
            "/npg-private/-/npg-private-1.0.0.tgz",
        ] {
            let r = get(&url(path), headers).await;
            assert_eq!(r.status.as_u16(), 404, "{path} {headers:?}");
        }
    }
    let to_upstream: Vec<_> = up
        .all_requests()
        .into_iter()
        .filter(|r| r.path().contains("2.0.0"))
        .map(|r| r.path_and_query)
        .collect();
    assert!(to_upstream.is_empty(), "{to_upstream:?}");
}

/// With a static certificate, plain HTTP redirects to PROXY_URL's host, never to the host a
/// client names (an open redirect).
#[test]
fn the_https_redirect_never_goes_to_the_clients_host() {
    let up = FakeRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::new("npg redirect CA");
    let issued = ca.issue(&["localhost"]);
    let cert = support::tls::write_file(dir.path(), "cert.pem", &issued.cert_pem);
    let key = support::tls::write_file(dir.path(), "key.pem", &issued.key_pem);
    let https_port = support::free_port().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let npg = NpgProcess::start(
        &up.url(),
        &[
            ("TLS_CERT_FILE", &cert),
            ("TLS_KEY_FILE", &key),
            ("HTTPS_PORT", &https_port),
        ],
    );
    let request = "GET /npm/npg-fixture-a HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let (status, text) = support::http::raw(npg.port, request.as_bytes(), std::time::Duration::from_secs(5));
    assert_eq!(status, 308, "{text}");
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location: {text}"));
    assert_eq!(location, format!("https://127.0.0.1:{https_port}/npm/npg-fixture-a"));
}
