//! The install-script policy through a real npg and real npm: a version that adds an install
//! script is held like a young one (on every path: packument, tarball, guard API, a tarball
//! on disk with upstream down), exemptions and lifting by age, `block-all`, and a tarball
//! whose package.json runs a script its manifest does not declare (refused whole, whatever
//! the policy: the manifest is what the guard judged).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::npg::NpgProcess;
use crate::support::upstream::{Failure, FakeRegistry, Postinstall};

async fn get(url: &str) -> support::http::Reply {
    support::http::get(url, &[]).await
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn quarantine(up: &FakeRegistry, extra: &[(&str, &str)]) -> NpgProcess {
    let mut env = vec![("INSTALL_SCRIPT_POLICY", "quarantine")];
    env.extend_from_slice(extra);
    NpgProcess::start(&up.url(), &env)
}

/// `npg-fixture-b`: 1.0.0 without scripts, 1.0.1 with a postinstall; 1.0.2 keeps it.
#[tokio::test]
async fn quarantine_holds_the_script_adder_and_its_followers_on_every_path() {
    let up = FakeRegistry::start();
    up.publish_with_script("npg-fixture-b", "1.0.2", now_secs() - 86_400, Postinstall::Declared);
    let npg = quarantine(&up, &[]);

    let guard = get(&format!("{}/api/guard/npg-fixture-b", npg.base)).await.json();
    assert_eq!(guard["install_script_policy"], "quarantine", "{guard}");
    assert_eq!(guard["hidden"]["1.0.1"]["type"], "install-script", "{guard}");
    assert_eq!(
        guard["hidden"]["1.0.1"]["reason"], "adds install scripts that 1.0.0 did not run",
        "{guard}"
    );
    assert_eq!(
        guard["hidden"]["1.0.2"]["type"], "install-script",
        "a follower of a held version: {guard}"
    );
    assert_eq!(guard["dist_tags"]["latest"], "1.0.0", "{guard}");

    let doc = get(&format!("{}/npg-fixture-b", npg.proxy_url)).await;
    assert!(
        doc.header("npm-notice").contains("install-script: 2"),
        "{:?}",
        doc.headers
    );
    assert!(doc.json()["versions"].get("1.0.1").is_none());

    let tarball = get(&format!("{}/npg-fixture-b/-/npg-fixture-b-1.0.1.tgz", npg.proxy_url)).await;
    assert_eq!(tarball.status, 403);
    let body = tarball.json();
    assert_eq!(body["type"], "install-script", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("INSTALL_SCRIPT_ALLOW"),
        "{body}"
    );
    assert_eq!(up.tarball_requests("npg-fixture-b", "npg-fixture-b-1.0.1.tgz"), 0);

    let health = get(&format!("{}/api/health", npg.base)).await.json();
    assert_eq!(health["guard"]["install_script_policy"], "quarantine", "{health}");
    let metrics = String::from_utf8(get(&format!("{}/metrics", npg.base)).await.body).unwrap();
    assert!(
        metrics.contains(r#"npg_guard_blocks_total{type="install-script"}"#),
        "{metrics}"
    );

    let registry = npg.proxy_url.clone();
    tokio::task::spawn_blocking(move || {
        let project = Project::new(Client::Npm, &registry, &[("npg-fixture-b", "^1.0.0")]);
        project.install().assert_success();
        assert_eq!(project.installed_version("npg-fixture-b").as_deref(), Some("1.0.0"));

        let pinned = Project::new(Client::Npm, &registry, &[("npg-fixture-b", "1.0.1")]);
        let out = pinned.install();
        out.assert_failure();
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("Could not download npg-fixture-b@1.0.1 due to policy violations")
                && text.contains("held by the install-script policy (adds install scripts that 1.0.0 did not run)"),
            "{out}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn allowed_packages_and_old_enough_versions_are_served() {
    let up = FakeRegistry::start();
    // A script-adder published an hour ago: held for 14 days from its publication.
    let published = now_secs() - 3600;
    up.add_package("npg-new-adder", &["1.0.0"]);
    up.publish_with_script("npg-new-adder", "1.1.0", published, Postinstall::Declared);
    up.add_package("npg-allowed", &["1.0.0"]);
    up.publish_with_script("npg-allowed", "1.1.0", published, Postinstall::Declared);
    let npg = quarantine(
        &up,
        &[
            ("INSTALL_SCRIPT_QUARANTINE", "14d"),
            ("INSTALL_SCRIPT_ALLOW", "/^npg-allow/"),
        ],
    );

    let fixture = get(&format!("{}/api/guard/npg-fixture-b", npg.base)).await.json();
    assert!(
        fixture["hidden"].as_object().unwrap().is_empty(),
        "published in 2024: lifted: {fixture}"
    );
    let new = get(&format!("{}/api/guard/npg-new-adder", npg.base)).await.json();
    let until = (published + 14 * 86_400) as u64 * 1000;
    let until = humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(until));
    assert_eq!(new["hidden"]["1.1.0"]["until"], until.to_string(), "{new}");
    let allowed = get(&format!("{}/api/guard/npg-allowed", npg.base)).await.json();
    assert!(allowed["hidden"].as_object().unwrap().is_empty(), "{allowed}");
    assert_eq!(
        allowed["install_script_policy"],
        serde_json::Value::Null,
        "exempt: {allowed}"
    );

    let registry = npg.proxy_url.clone();
    tokio::task::spawn_blocking(move || {
        let project = Project::new(
            Client::Npm,
            &registry,
            &[("npg-allowed", "^1.0.0"), ("npg-new-adder", "^1.0.0")],
        );
        project.install().assert_success();
        assert_eq!(project.installed_version("npg-allowed").as_deref(), Some("1.1.0"));
        assert_eq!(project.installed_version("npg-new-adder").as_deref(), Some("1.0.0"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn block_all_holds_every_version_with_scripts() {
    let up = FakeRegistry::start();
    up.publish_with_script(
        "npg-always-scripts",
        "1.0.0",
        now_secs() - 30 * 86_400,
        Postinstall::Declared,
    );
    let npg = NpgProcess::start(&up.url(), &[("INSTALL_SCRIPT_POLICY", "block-all")]);
    let guard = get(&format!("{}/api/guard/npg-fixture-b", npg.base)).await.json();
    assert_eq!(guard["hidden"]["1.0.1"]["reason"], "has install scripts", "{guard}");
    let all = get(&format!("{}/npg-always-scripts", npg.proxy_url)).await;
    assert_eq!(all.status, 404, "every version hidden");
    assert!(
        String::from_utf8_lossy(&all.body).contains("install-script policy"),
        "{}",
        String::from_utf8_lossy(&all.body)
    );
}

/// A tarball cached while the policy was off is not served by its file name when the policy
/// is on and upstream is down (no packument to tell whether the version adds a script).
#[tokio::test]
async fn a_cached_tarball_is_not_judged_by_its_name_alone() {
    let up = FakeRegistry::start();
    let storage = tempfile::tempdir().unwrap();
    let file = "npg-fixture-b/-/npg-fixture-b-1.0.1.tgz";
    {
        let off = NpgProcess::start_with_storage(&up.url(), &[], storage.path().to_path_buf(), None);
        assert_eq!(get(&format!("{}/{file}", off.proxy_url)).await.status, 200);
    }
    up.set_failure(Failure::Status(503));
    let on = NpgProcess::start_with_storage(
        &up.url(),
        &[("INSTALL_SCRIPT_POLICY", "quarantine")],
        storage.path().to_path_buf(),
        None,
    );
    let reply = get(&format!("{}/{file}", on.proxy_url)).await;
    assert_ne!(reply.status, 200, "served a tarball the policy may hold");
}

#[tokio::test]
async fn a_tarball_running_an_undeclared_script_is_refused_and_never_cached() {
    let up = FakeRegistry::start();
    up.add_package("npg-confused", &["1.0.0"]);
    up.publish_with_script(
        "npg-confused",
        "1.0.1",
        now_secs() - 30 * 86_400,
        Postinstall::Undeclared,
    );
    // The policy is off: the refusal does not depend on it (a cached file outlives a policy).
    let npg = NpgProcess::start(&up.url(), &[]);
    let file = "npg-confused/-/npg-confused-1.0.1.tgz";
    for _ in 0..2 {
        let reply = get(&format!("{}/{file}", npg.proxy_url)).await;
        assert!(
            reply.status != 200 || reply.body != up.tarball_bytes("npg-confused", "1.0.1"),
            "served it whole"
        );
    }
    assert_eq!(
        up.tarball_requests("npg-confused", "npg-confused-1.0.1.tgz"),
        2,
        "never cached"
    );
    assert!(!npg.storage.join("np/npg-confused/npg-confused-1.0.1.tgz").exists());
    let metrics = String::from_utf8(get(&format!("{}/metrics", npg.base)).await.body).unwrap();
    assert!(
        metrics.contains(r#"npg_tarball_refused_total{reason="undeclared_script"} 2"#),
        "{metrics}"
    );
    // Its clean sibling is served.
    let clean = get(&format!("{}/npg-confused/-/npg-confused-1.0.0.tgz", npg.proxy_url)).await;
    assert_eq!(clean.status, 200);

    let registry = npg.proxy_url.clone();
    tokio::task::spawn_blocking(move || {
        let project = Project::new(Client::Npm, &registry, &[("npg-confused", "1.0.1")]);
        project.install().assert_failure();
        assert_eq!(project.installed_version("npg-confused"), None);
    })
    .await
    .unwrap();
}
