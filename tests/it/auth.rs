//! Access control (AUTH_TOKENS_FILE): real npg processes against the fake upstream, and the real
//! npm with and without `_authToken` in its `.npmrc`.
//!
//! Without a token: 401 with `WWW-Authenticate: Bearer`; a token lacking the permission: 403;
//! `/-/ping` and `/api/health` stay open (health without details); `/metrics` needs admin,
//! `/api/guard` a reader; the file reloads on change and a broken file keeps the previous table; npg's
//! token never reaches the upstream.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::http::{Reply, get, send};
use crate::support::npg::{NpgProcess, hash_token as hash};
use crate::support::upstream::FakeRegistry;

const READ: &str = "npg-test-read-7f3a9c";
const PUBLISH: &str = "npg-test-publish-2b8e41";
const ADMIN: &str = "npg-test-admin-d05c66";

fn line(token: &str, name: &str, perms: &str) -> String {
    format!("{} {name} {perms}\n", hash(token))
}

struct Setup {
    upstream: FakeRegistry,
    npg: NpgProcess,
    tokens: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// npg with three tokens: `ci` (read), `alice` (publish), `ops` (admin).
    fn start() -> Setup {
        let upstream = FakeRegistry::start();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        let text = format!(
            "# npg tokens\n\n{}{}{}",
            line(READ, "ci", "read"),
            line(PUBLISH, "alice", "read,publish"),
            line(ADMIN, "ops", "admin")
        );
        std::fs::write(&tokens, text).unwrap();
        let npg = NpgProcess::start(&upstream.url(), &[("AUTH_TOKENS_FILE", tokens.to_str().unwrap())]);
        Setup {
            upstream,
            npg,
            tokens,
            _dir: dir,
        }
    }

    async fn get_as(&self, path: &str, token: Option<&str>) -> Reply {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
        get(&format!("{}{path}", self.npg.base), &headers).await
    }

    async fn publish_as(&self, name: &str, token: &str) -> Reply {
        let body = serde_json::json!({ "name": name, "versions": {} }).to_string();
        let url = format!("{}/{name}", self.npg.proxy_url);
        let bearer = format!("Bearer {token}");
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        send(Method::PUT, &url, &headers, body.into_bytes()).await
    }

    /// The upstream never saw any Authorization header (npg's tokens are npg's).
    fn assert_no_token_upstream(&self) {
        for req in self.upstream.all_requests() {
            assert_eq!(
                req.header("authorization"),
                None,
                "{} {}",
                req.method,
                req.path_and_query
            );
        }
    }

    fn upstream_puts(&self) -> usize {
        self.upstream
            .all_requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count()
    }
}

#[tokio::test]
async fn without_a_valid_token_401_with_a_bearer_challenge() {
    let s = Setup::start();
    for token in [None, Some("wrong-token"), Some("")] {
        let r = s.get_as("/npm/npg-fixture-a", token).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.header("www-authenticate"), "Bearer realm=\"npg\"");
        let body = r.json();
        assert!(body["error"].is_string() && body["reason"].is_string(), "{body}");
    }
    let basic = [("authorization", "Basic dXNlcjpucGctdGVzdC1yZWFkLTdmM2E5Yw==")];
    let r = get(&format!("{}/npg-fixture-a", s.npg.proxy_url), &basic).await;
    assert_eq!(r.status, 401, "only Bearer tokens are accepted");
    assert_eq!(s.upstream.total_requests(), 0, "nothing reached upstream");
    let metrics = String::from_utf8(s.get_as("/metrics", Some(ADMIN)).await.body).unwrap();
    assert!(
        metrics.contains("npg_auth_denied_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("npg_auth_denied_total{reason=\"invalid\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_read_token_reads_and_cannot_publish() {
    let s = Setup::start();
    let r = s.get_as("/npm/npg-fixture-a", Some(READ)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("cache-control").starts_with("private"),
        "{}",
        r.header("cache-control")
    );
    let file = s.upstream.tarball_file("npg-fixture-a", "2.0.0");
    let r = s.get_as(&format!("/npm/npg-fixture-a/-/{file}"), Some(READ)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, s.upstream.tarball_bytes("npg-fixture-a", "2.0.0"));
    let r = s.publish_as("npg-auth-new", READ).await;
    assert_eq!(r.status, 403);
    assert!(r.json()["reason"].as_str().unwrap().contains("publish"), "{}", r.json());
    assert_eq!(s.upstream_puts(), 0);
    let metrics = String::from_utf8(s.get_as("/metrics", Some(ADMIN)).await.body).unwrap();
    assert!(
        metrics.contains("npg_auth_denied_total{reason=\"forbidden\"} 1"),
        "{metrics}"
    );
    s.assert_no_token_upstream();
}

#[tokio::test]
async fn a_publish_token_passes_writes_through_without_itself() {
    let s = Setup::start();
    let r = s.publish_as("npg-auth-new", PUBLISH).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.upstream_puts(), 1);
    let r = s.publish_as("npg-auth-new", ADMIN).await;
    assert_eq!(r.status, 201, "admin implies publish");
    s.assert_no_token_upstream();
}

#[tokio::test]
async fn npg_endpoints_need_admin_and_health_stays_open() {
    let s = Setup::start();
    let path = "/metrics";
    assert_eq!(s.get_as(path, None).await.status, 401, "{path}");
    assert_eq!(s.get_as(path, Some(PUBLISH)).await.status, 403, "{path}");
    assert_eq!(s.get_as(path, Some(ADMIN)).await.status, 200, "{path}");
    // The guard's explanation is a reader's, as its refusals are (`npg lockfile check` in CI).
    let path = "/api/guard/npg-fixture-a";
    assert_eq!(s.get_as(path, None).await.status, 401, "{path}");
    assert_eq!(s.get_as(path, Some(READ)).await.status, 200, "{path}");
    for path in ["/-/ping", "/npm/-/ping"] {
        assert_eq!(s.get_as(path, None).await.status, 200, "{path}");
    }
    for token in [None, Some("wrong"), Some(READ)] {
        let r = s.get_as("/api/health", token).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), serde_json::json!({"status": "ok"}), "{token:?}: no details");
    }
    let r = s.get_as("/api/health", Some(ADMIN)).await;
    assert_eq!(r.json()["status"], "ok");
    assert!(r.json()["guard"].is_object(), "{}", r.json());
}

/// Polls `path` as `token` until it answers `status`, for at most ten seconds.
async fn wait_for(s: &Setup, path: &str, token: &str, status: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if s.get_as(path, Some(token)).await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn the_file_reloads_and_a_broken_one_keeps_the_table() {
    let s = Setup::start();
    let late = "npg-test-late-91ce20";
    assert_eq!(s.get_as("/npm/npg-fixture-a", Some(late)).await.status, 401);
    let mut text = std::fs::read_to_string(&s.tokens).unwrap();
    text.push_str(&line(late, "late", "read"));
    std::fs::write(&s.tokens, &text).unwrap();
    assert!(
        wait_for(&s, "/npm/npg-fixture-a", late, 200).await,
        "the appended token works"
    );
    // A broken line, and the revocation of `ci` with it: nothing of that file applies.
    let broken = text.replace(&line(READ, "ci", "read"), "") + "this is not an entry\n";
    std::fs::write(&s.tokens, broken).unwrap();
    let metrics = "/metrics";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = String::from_utf8(s.get_as(metrics, Some(ADMIN)).await.body).unwrap();
        if body.contains("npg_auth_reload_errors_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no reload error counted: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.get_as("/npm/npg-fixture-a", Some(READ)).await.status,
        200,
        "previous table kept"
    );
    assert_eq!(s.get_as("/npm/npg-fixture-a", Some(late)).await.status, 200);
}

#[test]
fn a_malformed_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# ok\n{}{} ci write\n", line(READ, "ci", "read"), hash(ADMIN)),
    )
    .unwrap();
    let storage = dir.path().join("storage");
    let out = NpgProcess::command("http://127.0.0.1:9/", support::loopback(9), &storage)
        .arg("check-config")
        .env("AUTH_TOKENS_FILE", &tokens)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("AUTH_TOKENS_FILE") && stderr.contains(tokens.to_str().unwrap()),
        "{stderr}"
    );
    assert!(stderr.contains("line 3") && stderr.contains("write"), "{stderr}");
}

/// The fixture project for the real npm, with `token` (if any) in its `.npmrc`.
fn npm_project(s: &Setup, token: Option<&str>) -> Project {
    let project = Project::fixture(Client::Npm, &s.npg.proxy_url);
    if let Some(token) = token {
        project.set_token(token);
    }
    project
}

#[test]
fn pnpm_and_yarn_install_with_their_token() {
    let s = Setup::start();
    for client in [Client::Pnpm, Client::Yarn1, Client::Yarn4] {
        let project = Project::fixture(client, &s.npg.proxy_url);
        project.set_token(READ);
        project.install().assert_success();
        assert_eq!(
            project.installed_version("npg-fixture-a").as_deref(),
            Some("2.0.0"),
            "{client:?}"
        );
    }
    s.assert_no_token_upstream();
}

#[test]
fn npm_install_needs_the_token() {
    let s = Setup::start();
    let out = npm_project(&s, None).install();
    out.assert_failure();
    assert!(out.stderr.contains("E401"), "{out}");
    assert_eq!(s.upstream.total_requests(), 0);
    let project = npm_project(&s, Some(READ));
    project.install().assert_success();
    assert_eq!(project.installed_version("npg-fixture-a").as_deref(), Some("2.0.0"));
    let whoami = project.run(&["whoami"]);
    assert_eq!(whoami.assert_success().stdout.trim(), "ci", "npg answers whoami itself");
    s.assert_no_token_upstream();
}

#[test]
fn npm_publish_needs_the_publish_permission() {
    let s = Setup::start();
    let publish = |token: &str| {
        let project = npm_project(&s, Some(token));
        let manifest = serde_json::json!({"name": "npg-auth-published", "version": "1.0.0", "license": "MIT"});
        std::fs::write(project.dir().join("package.json"), manifest.to_string()).unwrap();
        std::fs::write(project.dir().join("index.js"), "module.exports = 1;\n").unwrap();
        project.run(&["publish"])
    };
    let out = publish(READ);
    out.assert_failure();
    assert!(out.stderr.contains("403"), "{out}");
    assert_eq!(s.upstream_puts(), 0, "the refused publish never reached upstream");
    publish(PUBLISH).assert_success();
    assert_eq!(s.upstream_puts(), 1);
    s.assert_no_token_upstream();
}
