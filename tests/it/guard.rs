//! The guard through a real npg: blocked packages and versions, filtered packuments in both
//! forms, reloads without restart, the release-age quarantine, and real npm installs.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::guarded::{start_with, write};
use crate::support::http::{ABBREVIATED, Reply};
use crate::support::npg::NpgProcess;

async fn get(url: &str, accept: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    support::http::get(url, &headers).await
}

/// Polls until `check` holds (reloads are asynchronous).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 10 s");
}

const RULES: &str = r#"
packages:
  - name: npg-legacy
    reason: unmaintained
  - name: npg-fixture-a
    versions: ["2.0.0"]
    reason: compromised release
patterns:
  - pattern: "^evil-"
    reason: typosquatting
"#;

#[tokio::test]
async fn whole_packages_are_refused_without_asking_upstream() {
    let (up, npg, _dir) = start_with(RULES, &[]);
    let r = get(&format!("{}/npg-legacy", npg.proxy_url), None).await;
    assert_eq!(r.status.as_u16(), 403);
    let body = r.json();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("npg-legacy is blocked by the blocklist (unmaintained). Use another package"),
        "{body}"
    );
    assert_eq!(body["reason"], "unmaintained");
    assert_eq!(body["package"], "npg-legacy");
    assert_eq!(body["type"], "package");
    let r = get(&format!("{}/evil-lodash", npg.proxy_url), None).await;
    assert_eq!(r.status.as_u16(), 403);
    assert_eq!(r.json()["type"], "pattern");
    assert_eq!(r.json()["pattern"], "^evil-");
    let tarball = get(&format!("{}/npg-legacy/-/npg-legacy-1.0.0.tgz", npg.proxy_url), None).await;
    assert_eq!(tarball.status.as_u16(), 403);
    assert_eq!(up.packument_requests("npg-legacy"), 0);
    assert_eq!(up.requests("/registry/evil-lodash"), 0);
    let metrics = String::from_utf8(get(&format!("{}/metrics", npg.base), None).await.body).unwrap();
    assert!(
        metrics.contains("npg_guard_blocks_total{type=\"package\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("npg_guard_blocks_total{type=\"pattern\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn blocked_versions_are_filtered_from_both_forms() {
    let (up, npg, _dir) = start_with(RULES, &[]);
    let url = format!("{}/npg-fixture-a", npg.proxy_url);
    for accept in [None, Some(ABBREVIATED)] {
        let r = get(&url, accept).await;
        assert_eq!(r.status, 200);
        let doc = r.json();
        assert!(doc["versions"].get("2.0.0").is_none(), "{accept:?}");
        assert!(doc["versions"].get("1.1.0").is_some());
        assert!(doc["time"].get("2.0.0").is_none(), "{accept:?}");
        assert!(doc["time"].get("1.1.0").is_some());
        assert_eq!(
            doc["dist-tags"]["latest"], "1.1.0",
            "latest moved to the highest allowed older version"
        );
        assert!(
            r.header("npm-notice").contains("1 of 3 versions"),
            "{}",
            r.header("npm-notice")
        );
    }
    let original = up.packument_json("npg-fixture-a");
    assert_eq!(original["dist-tags"]["latest"], "2.0.0");

    let tarball = get(&format!("{url}/-/npg-fixture-a-2.0.0.tgz"), None).await;
    assert_eq!(tarball.status.as_u16(), 403);
    let body = tarball.json();
    assert_eq!(body["type"], "version");
    assert_eq!(body["version"], "2.0.0");
    assert_eq!(body["versionSpec"], "2.0.0");
    assert_eq!(get(&format!("{url}/-/npg-fixture-a-1.1.0.tgz"), None).await.status, 200);

    assert_eq!(
        get(&format!("{url}/2.0.0"), None).await.status,
        403,
        "version manifests are no bypass"
    );
    assert_eq!(get(&format!("{url}/latest"), None).await.json()["version"], "1.1.0");
    assert_eq!(get(&format!("{url}/%5E2.0.0"), None).await.status, 404);
    let tags = get(&format!("{}/-/package/npg-fixture-a/dist-tags", npg.proxy_url), None).await;
    assert_eq!(tags.json()["latest"], "1.1.0", "dist-tags are no bypass");

    let explain = get(&format!("{}/api/guard/npg-fixture-a", npg.base), None).await.json();
    assert_eq!(explain["hidden"]["2.0.0"]["type"], "version");
    assert_eq!(explain["hidden"]["2.0.0"]["reason"], "compromised release");
    assert_eq!(explain["versions_served"], 2);
    let explain = get(&format!("{}/api/guard/evil-x", npg.base), None).await.json();
    assert_eq!(explain["blocked"]["type"], "pattern");
}

#[tokio::test]
async fn every_version_hidden_is_a_404_that_says_why() {
    let rules = "packages:\n  - name: npg-fixture-b\n    versions: ['*']\n    reason: all bad\n";
    let (_up, npg, _dir) = start_with(rules, &[]);
    let r = get(&format!("{}/npg-fixture-b", npg.proxy_url), None).await;
    assert_eq!(r.status, 404);
    let body = r.json();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Every version of npg-fixture-b is hidden"),
        "{body}"
    );
    assert_eq!(body["reason"], "all bad");
    assert_eq!(body["type"], "version");
}

#[tokio::test]
async fn reloads_without_restart_and_keeps_old_rules_on_a_bad_file() {
    let (_up, npg, dir) = start_with("", &[]);
    let path = dir.path().join("blacklist.yml");
    let url = format!("{}/npg-fixture-a", npg.proxy_url);
    let tgz = format!("{url}/-/npg-fixture-a-2.0.0.tgz");
    assert_eq!(get(&url, None).await.json()["dist-tags"]["latest"], "2.0.0");
    assert_eq!(get(&tgz, None).await.status, 200);
    assert!(npg.storage.join("np/npg-fixture-a/npg-fixture-a-2.0.0.tgz").is_file());

    // SIGHUP: a cached packument and a tarball on disk must not outlive the decision.
    write(&path, RULES);
    npg.signal("HUP");
    eventually("SIGHUP reload", async || get(&tgz, None).await.status == 403).await;
    assert_eq!(get(&url, None).await.json()["dist-tags"]["latest"], "1.1.0");

    // A bad file is refused and the rules stay.
    write(&path, "packages:\n  - name: [unclosed\n");
    npg.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&tgz, None).await.status, 403);
    let health = get(&format!("{}/api/health", npg.base), None).await.json();
    assert_eq!(health["guard"]["blocklist_rules"], 3);

    // A changed file is picked up without a signal.
    write(&path, "packages: []\n");
    eventually("file-change reload", async || get(&tgz, None).await.status == 200).await;
    assert_eq!(get(&url, None).await.json()["dist-tags"]["latest"], "2.0.0");
}

#[test]
fn a_malformed_blocklist_stops_start_up_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blacklist.yml");
    let start = || {
        NpgProcess::command(
            "http://127.0.0.1:9/",
            support::loopback(support::free_port()),
            &dir.path().join("s"),
        )
        .env("BLACKLIST_PATH", &path)
        .output()
        .unwrap()
    };
    std::fs::write(&path, "packages:\n  - name: x\n    versions: ['not a range!']\n").unwrap();
    let out = start();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BLACKLIST_PATH") && stderr.contains("not a range!"),
        "{stderr}"
    );
    std::fs::write(&path, "packages:\n  - nam: x\n").unwrap();
    let out = start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("line 2"), "{stderr}");
}

#[tokio::test]
async fn release_age_quarantine() {
    let (up, npg, _dir) = start_with(
        "",
        &[
            ("MIN_RELEASE_AGE", "3d"),
            ("MIN_RELEASE_AGE_EXCLUDE", "/^@npg-test\\//"),
        ],
    );
    up.publish("npg-fixture-b", "1.1.0");
    up.publish("@npg-test/scoped", "1.3.0");
    let doc = get(&format!("{}/npg-fixture-b", npg.proxy_url), None).await.json();
    assert!(
        doc["versions"].get("1.1.0").is_none(),
        "published just now: quarantined"
    );
    assert_eq!(doc["dist-tags"]["latest"], "1.0.1");
    let tgz = get(
        &format!("{}/npg-fixture-b/-/npg-fixture-b-1.1.0.tgz", npg.proxy_url),
        None,
    )
    .await;
    assert_eq!(tgz.status, 403);
    assert_eq!(tgz.json()["type"], "age");
    let scoped = get(&format!("{}/@npg-test%2fscoped", npg.proxy_url), None).await.json();
    assert_eq!(scoped["dist-tags"]["latest"], "1.3.0", "excluded by pattern");
}

#[tokio::test]
async fn the_age_boundary_passing_changes_the_decision() {
    let (up, npg, _dir) = start_with("", &[("MIN_RELEASE_AGE", "2s")]);
    up.publish("npg-fixture-b", "1.1.0");
    let url = format!("{}/npg-fixture-b", npg.proxy_url);
    assert_eq!(get(&url, None).await.json()["dist-tags"]["latest"], "1.0.1");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = get(&url, None).await;
    assert_eq!(r.header("x-cache"), "HIT", "re-rendered from the cached document");
    assert_eq!(r.json()["dist-tags"]["latest"], "1.1.0");
    assert_eq!(up.packument_requests("npg-fixture-b"), 1);
}

/// npm resolves a range to the newest allowed version and fails on a pinned blocked one.
#[tokio::test(flavor = "multi_thread")]
async fn npm_installs_the_safe_version() {
    let (_up, npg, _dir) = start_with(RULES, &[]);
    let registry = npg.proxy_url.clone();
    tokio::task::spawn_blocking(move || {
        let project = Project::new(Client::Npm, &registry, &[("npg-fixture-a", "^1.0.0 || ^2.0.0")]);
        project.install().assert_success();
        assert_eq!(project.installed_version("npg-fixture-a").as_deref(), Some("1.1.0"));

        let pinned = Project::new(Client::Npm, &registry, &[("npg-fixture-a", "2.0.0")]);
        let out = pinned.install();
        out.assert_failure();
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("Could not download npg-fixture-a@2.0.0 due to policy violations")
                && text.contains("npg-fixture-a@2.0.0 is blocked by the blocklist (compromised release)"),
            "{out}"
        );

        let blocked = Project::new(Client::Npm, &registry, &[("npg-legacy", "^1.0.0")]);
        let out = blocked.install();
        out.assert_failure();
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(text.contains("403") && text.contains("unmaintained"), "{out}");
    })
    .await
    .unwrap();
}
