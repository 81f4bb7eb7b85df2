//! Registry signatures through a real npg: the fake registry signs every version with its own
//! key and publishes it at `-/npm/v1/keys`; npg checks `dist.signatures` against it under
//! SIGNATURE_POLICY, serves the keys to clients, and real `npm audit signatures` agrees.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::http::ABBREVIATED;
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::upstream::{Failure, FakeRegistry};

const KEYS_PATH: &str = "/registry/-/npm/v1/keys";

async fn json(url: &str) -> Value {
    support::http::get(url, &[]).await.json()
}

/// npg under SIGNATURE_POLICY=`policy`, once it holds the registry's keys.
async fn start(up: &FakeRegistry, policy: &str, env: &[(&str, &str)]) -> NpgProcess {
    let mut all = vec![("SIGNATURE_POLICY", policy)];
    all.extend_from_slice(env);
    let npg = NpgProcess::start(&up.url(), &all);
    keys_in_force(&npg, 1).await;
    npg
}

/// Waits until `/api/health` says `count` keys are in force; returns its signatures part.
async fn keys_in_force(npg: &NpgProcess, count: u64) -> Value {
    let started = Instant::now();
    loop {
        let health = json(&format!("{}/api/health", npg.base)).await;
        let signatures = health["guard"]["signatures"].clone();
        if signatures["keys"]["count"] == count {
            return signatures;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "keys not in force: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `npm audit signatures` in an installed project, npm's TUF lookup offline.
fn audit(project: &Project) -> String {
    let out = project.run(&["audit", "signatures"]);
    format!("{}{}", out.stdout, out.stderr)
}

fn npm_project(registry: &str, deps: &[(&str, &str)]) -> Project {
    let shim = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/offline-tuf.cjs");
    Project::new(Client::Npm, registry, deps).with_env("NODE_OPTIONS", format!("--require {shim}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_audit_signatures_verifies_through_npg() {
    let up = FakeRegistry::start();
    let npg = start(&up, "warn", &[]).await;
    let keys = support::http::get(&format!("{}/-/npm/v1/keys", npg.proxy_url), &[]).await;
    assert_eq!(keys.status.as_u16(), 200);
    assert_eq!(keys.json()["keys"][0]["keyid"], up.keyid().as_str());
    for accept in ["application/json", ABBREVIATED] {
        let doc = support::http::get(&format!("{}/npg-fixture-a", npg.proxy_url), &[("accept", accept)]).await;
        let signatures = &doc.json()["versions"]["2.0.0"]["dist"]["signatures"];
        let upstream = &up.packument_json("npg-fixture-a")["versions"]["2.0.0"]["dist"]["signatures"];
        assert!(upstream.is_array());
        assert_eq!(signatures, upstream, "dist.signatures served intact ({accept})");
    }
    let asked = up.requests(KEYS_PATH);
    let registry = npg.proxy_url.clone();
    let text = tokio::task::spawn_blocking(move || {
        let project = npm_project(&registry, &[("npg-fixture-a", "2.0.0")]);
        project.install().assert_success();
        audit(&project)
    })
    .await
    .unwrap();
    assert!(text.contains("3 packages have verified registry signatures"), "{text}");
    assert!(!text.contains("invalid"), "{text}");
    assert_eq!(up.requests(KEYS_PATH), asked, "npm got the keys from npg's copy");
    let report = json(&format!("{}/api/guard/npg-fixture-a", npg.base)).await;
    assert_eq!(report["signatures"]["policy"], "warn");
    assert_eq!(report["signatures"]["counts"]["valid"], 3, "{report}");
    assert_eq!(report["signatures"]["versions"]["2.0.0"]["state"], "valid");
}

#[tokio::test(flavor = "multi_thread")]
async fn warn_serves_an_altered_signature_and_npm_reports_it_invalid() {
    let up = FakeRegistry::start();
    up.alter_signature("npg-fixture-b", "1.0.1");
    let npg = start(&up, "warn", &[]).await;
    let registry = npg.proxy_url.clone();
    let text = tokio::task::spawn_blocking(move || {
        let project = npm_project(&registry, &[("npg-fixture-b", "1.0.1")]);
        project.install().assert_success();
        audit(&project)
    })
    .await
    .unwrap();
    assert!(
        text.contains("1 package has an invalid registry signature") && text.contains("npg-fixture-b@1.0.1"),
        "{text}"
    );
    let report = json(&format!("{}/api/guard/npg-fixture-b", npg.base)).await;
    let state = &report["signatures"]["versions"]["1.0.1"];
    assert_eq!(state["state"], "invalid", "{report}");
    assert!(state["reason"].as_str().unwrap().contains("does not match"), "{report}");
    assert_eq!(report["hidden"], serde_json::json!({}), "warn hides nothing");
    let metrics = String::from_utf8(support::http::get(&format!("{}/metrics", npg.base), &[]).await.body).unwrap();
    assert!(
        metrics.contains(r#"npg_signature_checks_total{state="invalid"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hide_invalid_hides_the_altered_version_and_refuses_its_tarball() {
    let up = FakeRegistry::start();
    up.alter_signature("npg-fixture-a", "2.0.0");
    up.remove_signature("npg-fixture-a", "1.0.0");
    let npg = start(&up, "hide-invalid", &[]).await;
    let doc = json(&format!("{}/npg-fixture-a", npg.proxy_url)).await;
    assert_eq!(doc["dist-tags"]["latest"], "1.1.0", "{doc}");
    assert!(doc["versions"]["2.0.0"].is_null());
    assert!(
        doc["versions"]["1.0.0"].is_object(),
        "unsigned is served under hide-invalid"
    );
    assert!(doc["policyRestrictions"]["versions"]["2.0.0"].is_object(), "{doc}");
    let report = json(&format!("{}/api/guard/npg-fixture-a", npg.base)).await;
    assert_eq!(report["hidden"]["2.0.0"]["type"], "signature", "{report}");
    assert_eq!(
        report["signatures"]["versions"]["1.0.0"]["state"], "unsigned",
        "{report}"
    );
    let tarball = format!("{}/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", npg.proxy_url);
    let refused = support::http::get(&tarball, &[]).await;
    assert_eq!(refused.status.as_u16(), 403);
    let body = refused.json();
    assert_eq!(body["type"], "signature");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("refused by the signature policy (invalid registry signature"),
        "{body}"
    );
    let registry = npg.proxy_url.clone();
    tokio::task::spawn_blocking(move || {
        let project = npm_project(&registry, &[("npg-fixture-a", "^1.0.0 || ^2.0.0")]);
        project.install().assert_success();
        assert_eq!(project.installed_version("npg-fixture-a").as_deref(), Some("1.1.0"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn hide_unsigned_also_hides_versions_without_a_signature() {
    let up = FakeRegistry::start();
    up.remove_signature("npg-fixture-a", "2.0.0");
    let npg = start(&up, "hide-unsigned", &[]).await;
    let doc = json(&format!("{}/npg-fixture-a", npg.proxy_url)).await;
    assert_eq!(doc["dist-tags"]["latest"], "1.1.0", "{doc}");
    let message = doc["policyRestrictions"]["message"].as_str().unwrap();
    assert!(
        message.contains("npg-fixture-a@2.0.0 is refused by the signature policy (no registry signature)"),
        "{doc}"
    );
    // npg-legacy has no integrity, so no signature: nothing of it is left.
    let legacy = support::http::get(&format!("{}/npg-legacy", npg.proxy_url), &[]).await;
    assert_eq!(legacy.status.as_u16(), 404, "{}", String::from_utf8_lossy(&legacy.body));
}

#[tokio::test]
async fn without_a_keys_endpoint_nothing_is_verified_nor_hidden() {
    let up = FakeRegistry::start();
    up.set_keys_published(false);
    let npg = NpgProcess::start(&up.url(), &[("SIGNATURE_POLICY", "hide-invalid")]);
    let started = Instant::now();
    let health = loop {
        let health = json(&format!("{}/api/health", npg.base)).await;
        if health["guard"]["signatures"]["keys"]["state"] == "ok" {
            break health;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let signatures = &health["guard"]["signatures"];
    assert_eq!(
        signatures["summary"], "no keys (the registry publishes none)",
        "{health}"
    );
    assert_eq!(signatures["keys"]["none_published"], true);
    assert!(
        health["problems"].to_string().contains("registry signatures: no keys"),
        "{health}"
    );
    let doc = json(&format!("{}/npg-fixture-a", npg.proxy_url)).await;
    assert_eq!(doc["dist-tags"]["latest"], "2.0.0");
    let report = json(&format!("{}/api/guard/npg-fixture-a", npg.base)).await;
    assert_eq!(report["signatures"]["counts"]["unknown_key"], 3, "{report}");
    let keys = support::http::get(&format!("{}/-/npm/v1/keys", npg.proxy_url), &[]).await;
    assert_eq!(keys.status.as_u16(), 404, "the upstream's answer, passed through");
}

#[tokio::test]
async fn kept_keys_verify_after_a_restart_without_upstream() {
    let up = FakeRegistry::start();
    up.alter_signature("npg-fixture-a", "2.0.0");
    let lists = tempfile::tempdir().unwrap();
    let dir = lists.path().to_str().unwrap();
    let env = [("MALWARE_LIST_DIR", dir)];
    drop(start(&up, "hide-invalid", &env).await);
    up.set_failure(Failure::Status(503));
    let npg = NpgProcess::start(&up.url(), &[&[("SIGNATURE_POLICY", "hide-invalid")][..], &env].concat());
    let signatures = keys_in_force(&npg, 1).await;
    assert_eq!(signatures["keys"]["source"], "disk", "{signatures}");
    let keys = support::http::get(&format!("{}/-/npm/v1/keys", npg.proxy_url), &[]).await;
    assert_eq!(keys.status.as_u16(), 200, "served from npg's copy while upstream fails");
    assert_eq!(keys.json()["keys"][0]["keyid"], up.keyid().as_str());
    up.set_failure(Failure::None);
    let doc = json(&format!("{}/npg-fixture-a", npg.proxy_url)).await;
    assert_eq!(doc["dist-tags"]["latest"], "1.1.0", "{doc}");
    let report = json(&format!("{}/api/guard/npg-fixture-a", npg.base)).await;
    assert_eq!(report["hidden"]["2.0.0"]["type"], "signature", "{report}");
}

#[tokio::test]
async fn two_replicas_fetch_the_keys_once_per_interval() {
    let up = FakeRegistry::start();
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("ENABLE_REDIS_CACHE", "true"),
        ("REDIS_URL", url.as_str()),
        ("SIGNATURE_KEYS_INTERVAL", "2s"),
    ];
    let started = Instant::now();
    let a = start(&up, "warn", &env).await;
    let b = start(&up, "warn", &env).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let intervals = started.elapsed().as_secs_f64() / 2.0;
    let fetched = up.requests(KEYS_PATH) as f64;
    // Each replica on its own would fetch at start and every interval: twice as many.
    assert!(
        fetched <= intervals + 2.0 && fetched >= intervals - 1.0,
        "{fetched} fetches in {intervals:.1} intervals"
    );
    let mut sources = Vec::new();
    for npg in [&a, &b] {
        sources.push(keys_in_force(npg, 1).await["keys"]["source"].clone());
    }
    assert!(sources.contains(&Value::from("redis")), "{sources:?}");
}

/// An upstream that re-signs with its own key and publishes that key: with SIGNATURE_KEYS_FILE
/// npg verifies against the pinned key only (every version now has an unknown key: hidden),
/// and never asks upstream for keys.
#[tokio::test]
async fn pinned_keys_are_the_only_keys() {
    let up = FakeRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let pinned = dir.path().join("keys.json");
    let genuine = support::http::get(&format!("{}-/npm/v1/keys", up.url()), &[]).await;
    std::fs::write(&pinned, &genuine.body).unwrap();
    let pinned_env = [("SIGNATURE_KEYS_FILE", pinned.to_str().unwrap())];
    let npg = NpgProcess::start(
        &up.url(),
        &[&[("SIGNATURE_POLICY", "hide-invalid")][..], &pinned_env].concat(),
    );
    let signatures = keys_in_force(&npg, 1).await;
    assert_eq!(signatures["keys"]["source"], "file", "{signatures}");
    let report = json(&format!("{}/api/guard/npg-fixture-a", npg.base)).await;
    assert_eq!(report["signatures"]["counts"]["valid"], 3, "{report}");

    let genuine_keyid = up.keyid();
    let forged = up.rotate_signer();
    assert_ne!(forged, genuine_keyid, "a new key");
    let fresh = NpgProcess::start(
        &up.url(),
        &[&[("SIGNATURE_POLICY", "hide-invalid")][..], &pinned_env].concat(),
    );
    keys_in_force(&fresh, 1).await;
    let report = json(&format!("{}/api/guard/npg-fixture-a", fresh.base)).await;
    assert_eq!(report["signatures"]["counts"]["unknown_key"], 3, "{report}");
    assert_eq!(report["hidden"]["2.0.0"]["type"], "signature", "{report}");
    assert_eq!(up.requests(KEYS_PATH), 1, "only the test asked upstream for keys");
    let keys = json(&format!("{}/-/npm/v1/keys", fresh.proxy_url)).await;
    assert_eq!(
        keys["keys"][0]["keyid"],
        genuine_keyid.as_str(),
        "npg serves the pinned keys"
    );

    // Unpinned, the same npg takes the upstream's word (the control).
    let unpinned = start(&up, "hide-invalid", &[]).await;
    let report = json(&format!("{}/api/guard/npg-fixture-a", unpinned.base)).await;
    assert_eq!(report["signatures"]["counts"]["valid"], 3, "{report}");
}

/// Keys in force do not go away because upstream stops publishing them.
#[tokio::test]
async fn keys_are_not_dropped_when_upstream_stops_publishing_them() {
    let up = FakeRegistry::start();
    up.alter_signature("npg-fixture-a", "2.0.0");
    let npg = start(&up, "hide-invalid", &[("SIGNATURE_KEYS_INTERVAL", "300ms")]).await;
    up.set_keys_published(false);
    let started = Instant::now();
    let health = loop {
        let health = json(&format!("{}/api/health", npg.base)).await;
        if health["guard"]["signatures"]["keys"]["state"] == "error" {
            break health;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let keys = &health["guard"]["signatures"]["keys"];
    assert_eq!(keys["count"], 1, "{health}");
    assert!(
        keys["last_error"].as_str().unwrap().contains("stopped publishing"),
        "{health}"
    );
    let report = json(&format!("{}/api/guard/npg-fixture-a", npg.base)).await;
    assert_eq!(
        report["hidden"]["2.0.0"]["type"], "signature",
        "still verified: {report}"
    );
}

/// A tarball cached under `warn` is not served by its file name alone once `hide-invalid`
/// is in force and upstream is down (no packument to tell its signature).
#[tokio::test]
async fn a_cached_tarball_is_not_judged_by_its_name_alone() {
    let up = FakeRegistry::start();
    up.alter_signature("npg-fixture-a", "2.0.0");
    let storage = tempfile::tempdir().unwrap();
    let file = "npg-fixture-a/-/npg-fixture-a-2.0.0.tgz";
    {
        let warn = NpgProcess::start_with_storage(
            &up.url(),
            &[("SIGNATURE_POLICY", "warn")],
            storage.path().to_path_buf(),
            None,
        );
        keys_in_force(&warn, 1).await;
        let reply = support::http::get(&format!("{}/{file}", warn.proxy_url), &[]).await;
        assert_eq!(reply.status.as_u16(), 200);
    }
    up.set_failure(Failure::Status(503));
    let hide = NpgProcess::start_with_storage(
        &up.url(),
        &[("SIGNATURE_POLICY", "hide-invalid")],
        storage.path().to_path_buf(),
        None,
    );
    assert_eq!(keys_in_force(&hide, 1).await["keys"]["source"], "disk");
    let reply = support::http::get(&format!("{}/{file}", hide.proxy_url), &[]).await;
    assert_ne!(reply.status.as_u16(), 200, "served a tarball the policy may hide");
}
