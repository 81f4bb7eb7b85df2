//! A blocklist that vanishes (deleted, moved) or turns bad while npg runs keeps the last good
//! rules, and `/api/health` says so (`degraded`, `guard.blocklist.state: error`) until a good
//! file is back.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::guarded::{start_with, write};

const RULES: &str = "packages:\n  - name: npg-fixture-a\n    versions: ['2.0.0']\n    reason: compromised release\n";

async fn status(url: &str) -> u16 {
    support::http::get(url, &[]).await.status.as_u16()
}

/// Polls `/api/health` until `check` holds on it; returns it.
async fn health_until(base: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let health = support::http::get(&format!("{base}/api/health"), &[]).await.json();
        if check(&health) {
            return health;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_vanished_or_bad_blocklist_keeps_the_rules_and_degrades_health() {
    let (_up, npg, dir) = start_with(RULES, &[]);
    let path = dir.path().join("blacklist.yml");
    let tgz = format!("{}/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", npg.proxy_url);
    assert_eq!(status(&tgz).await, 403);
    let health = health_until(&npg.base, "start", |h| h["status"] == "ok").await;
    assert_eq!(health["guard"]["blocklist"]["state"], "ok", "{health}");

    // Deleted: the rules stay, health says why (the watcher sees it within 2 s).
    std::fs::remove_file(&path).unwrap();
    let health = health_until(&npg.base, "deletion", |h| h["status"] == "degraded").await;
    let blocklist = &health["guard"]["blocklist"];
    assert_eq!(blocklist["state"], "error", "{health}");
    assert!(blocklist["error"].as_str().unwrap().contains("is gone"), "{health}");
    assert!(blocklist["since_ms"].as_u64().unwrap() > 0, "{health}");
    assert!(
        health["problems"][0].as_str().unwrap().starts_with("blocklist:"),
        "{health}"
    );
    assert_eq!(health["guard"]["blocklist_rules"], 1);
    assert_eq!(status(&tgz).await, 403, "the last good rules still apply");

    // Restored: ok again.
    write(&path, RULES);
    let health = health_until(&npg.base, "restore", |h| h["status"] == "ok").await;
    assert_eq!(health["guard"]["blocklist"]["state"], "ok", "{health}");
    assert!(health["guard"]["blocklist"].get("error").is_none(), "{health}");
    assert_eq!(status(&tgz).await, 403);

    // A bad file: the old rules stay, and that shows in health too.
    write(&path, "packages:\n  - name: [unclosed\n");
    let health = health_until(&npg.base, "bad file", |h| h["status"] == "degraded").await;
    assert!(
        health["guard"]["blocklist"]["error"].as_str().unwrap().contains("line"),
        "{health}"
    );
    assert_eq!(status(&tgz).await, 403);

    // An empty file is a policy: no rules, ok.
    write(&path, "");
    health_until(&npg.base, "empty file", |h| h["status"] == "ok").await;
    assert_eq!(status(&tgz).await, 200);
}
