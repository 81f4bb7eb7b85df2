//! Typosquats through a real npg and real npm: with a small popular list (TYPOSQUAT_LIST), a
//! name one edit from a popular one is refused on every path in `block` mode (packument,
//! tarball asked directly, even one cached earlier, `/api/guard`, the lockfile check), served
//! with a notice npm prints in `warn` mode, and served plainly when TYPOSQUAT_ALLOW exempts it.
//! (A bad TYPOSQUAT_LIST or TYPOSQUAT_ALLOW stopping start-up: `check_config.rs`.)

use std::path::Path;

use crate::lockfile_check::lockfile_check;
use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::npg::NpgProcess;
use crate::support::upstream::FakeRegistry;

const POPULAR: &str = "npg-widgets";
const SQUAT: &str = "npg-wigdets";
const SQUAT_TARBALL: &str = "npg-wigdets/-/npg-wigdets-1.0.0.tgz";

/// The fake registry serving the popular name and its squat, and the list naming the first.
fn registry(dir: &Path) -> (FakeRegistry, String) {
    let list = dir.join("popular.txt");
    std::fs::write(&list, format!("# test list\n{POPULAR}\nnpg-fixture-a\n")).unwrap();
    let up = FakeRegistry::start();
    up.add_package(POPULAR, &["1.0.0"]);
    up.add_package(SQUAT, &["1.0.0"]);
    (up, list.to_str().unwrap().to_string())
}

fn start(up: &FakeRegistry, list: &str, storage: &Path, env: &[(&str, &str)]) -> NpgProcess {
    let mut all = vec![("TYPOSQUAT_LIST", list), ("ENABLE_SCHEDULED_UPDATES", "false")];
    all.extend_from_slice(env);
    NpgProcess::start_with_storage(&up.url(), &all, storage.to_path_buf(), None)
}

async fn get(url: &str) -> support::http::Reply {
    support::http::get(url, &[]).await
}

async fn metrics(npg: &NpgProcess) -> String {
    String::from_utf8(get(&format!("{}/metrics", npg.base)).await.body).unwrap()
}

#[tokio::test]
async fn block_refuses_a_squat_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let (up, list) = registry(dir.path());
    let npg = start(
        &up,
        &list,
        &dir.path().join("storage"),
        &[("TYPOSQUAT_POLICY", "block")],
    );

    let project = Project::new(Client::Npm, &npg.proxy_url, &[]);
    let out = project.add(SQUAT);
    out.assert_failure();
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        printed.contains("403 Blocked: npg-wigdets (possible typosquat: looks like npg-widgets, one edit away)"),
        "{out}"
    );
    project.add(POPULAR).assert_success();
    assert_eq!(up.packument_requests(SQUAT), 0, "refused without asking upstream");

    let tarball = get(&format!("{}/{SQUAT_TARBALL}", npg.proxy_url)).await;
    assert_eq!(tarball.status.as_u16(), 403);
    let body = tarball.json();
    assert_eq!(body["type"], "typosquat");
    assert_eq!(body["like"], POPULAR);
    assert_eq!(
        body["error"],
        "npg-wigdets is a possible typosquat (looks like npg-widgets, one edit away). Check the name; if it \
         is the package you want, ask your npg administrator to exempt it (TYPOSQUAT_ALLOW). \
         GET /api/guard/npg-wigdets on npg shows what is hidden and why."
    );
    assert_eq!(up.tarball_requests_any(SQUAT), 0);

    let report = get(&format!("{}/api/guard/{SQUAT}", npg.base)).await.json();
    assert_eq!(report["blocked"]["type"], "typosquat", "{report}");
    assert_eq!(
        report["typosquat"],
        serde_json::json!({"like": POPULAR, "how": "edit", "policy": "block"})
    );
    let popular = get(&format!("{}/api/guard/{POPULAR}", npg.base)).await.json();
    assert_eq!(popular["blocked"], serde_json::Value::Null, "{popular}");
    assert_eq!(popular["typosquat"], serde_json::Value::Null, "{popular}");

    let health = get(&format!("{}/api/health", npg.base)).await.json();
    assert_eq!(
        health["guard"]["typosquat"],
        serde_json::json!({"policy": "block", "names": 2, "list": list})
    );
    let metrics = metrics(&npg).await;
    assert!(
        metrics.contains(r#"npg_guard_blocks_total{type="typosquat"} "#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"npg_typosquat_suspects_total{action="block"} "#),
        "{metrics}"
    );
}

#[tokio::test]
async fn warn_serves_a_squat_with_a_notice_npm_prints() {
    let dir = tempfile::tempdir().unwrap();
    let (up, list) = registry(dir.path());
    let npg = start(&up, &list, &dir.path().join("storage"), &[("TYPOSQUAT_POLICY", "warn")]);

    let project = Project::new(Client::Npm, &npg.proxy_url, &[]);
    let out = project.add(SQUAT);
    out.assert_success();
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        printed.contains("npm notice npg: npg-wigdets looks like npg-widgets, one edit away: possible typosquat"),
        "{out}"
    );
    assert_eq!(project.installed_version(SQUAT).as_deref(), Some("1.0.0"));

    // Not storable: npm prints notices only from responses it did not keep.
    let squat = get(&format!("{}/{SQUAT}", npg.proxy_url)).await;
    assert_eq!(squat.status.as_u16(), 200);
    assert_eq!(squat.header("cache-control"), "no-store");
    let popular = get(&format!("{}/{POPULAR}", npg.proxy_url)).await;
    assert_eq!(popular.status.as_u16(), 200);
    assert_eq!(popular.header("npm-notice"), "", "no notice for the popular name");
    assert_eq!(popular.header("cache-control"), "public, no-cache");
    let report = get(&format!("{}/api/guard/{SQUAT}", npg.base)).await.json();
    assert_eq!(report["blocked"], serde_json::Value::Null, "{report}");
    assert_eq!(report["typosquat"]["policy"], "warn", "{report}");
    let metrics = metrics(&npg).await;
    assert!(
        metrics.contains(r#"npg_typosquat_suspects_total{action="warn"} "#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"type="typosquat""#), "nothing blocked: {metrics}");
}

#[tokio::test]
async fn the_allow_list_exempts_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let (up, list) = registry(dir.path());
    let env = [("TYPOSQUAT_POLICY", "block"), ("TYPOSQUAT_ALLOW", "/^npg-wig/")];
    let npg = start(&up, &list, &dir.path().join("storage"), &env);

    let project = Project::new(Client::Npm, &npg.proxy_url, &[]);
    let out = project.add(SQUAT);
    out.assert_success();
    assert!(!out.stderr.contains("typosquat"), "{out}");
    let report = get(&format!("{}/api/guard/{SQUAT}", npg.base)).await.json();
    assert_eq!(report["typosquat"], serde_json::Value::Null, "{report}");
}

/// The rule is the name's, not the cache's: a squat served earlier (warn) and cached is
/// refused once the policy blocks, its tarball too, and lockfiles naming it are flagged.
#[tokio::test]
async fn a_cached_squat_is_refused_once_blocked_and_lockfiles_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let (up, list) = registry(dir.path());
    let storage = dir.path().join("storage");
    let mut warning = start(&up, &list, &storage, &[("TYPOSQUAT_POLICY", "warn")]);
    let project = Project::new(Client::Npm, &warning.proxy_url, &[(SQUAT, "^1.0.0")]);
    project.install().assert_success();
    warning.signal("TERM");
    warning.wait_exit(std::time::Duration::from_secs(10));

    up.reset_counts();
    let npg = start(&up, &list, &storage, &[("TYPOSQUAT_POLICY", "block")]);
    let tarball = get(&format!("{}/{SQUAT_TARBALL}", npg.proxy_url)).await;
    assert_eq!(tarball.status.as_u16(), 403);
    assert_eq!(tarball.json()["type"], "typosquat");
    assert_eq!(up.total_requests(), 0, "judged by name, without upstream");

    let lockfile = project.lockfile_path();
    let path = lockfile.to_str().unwrap();
    let line = "npg-wigdets@1.0.0: typosquat, looks like npg-widgets, one edit away";
    let online = lockfile_check(&["--npg", &npg.base, path], &[]);
    assert_eq!(online.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&online.stdout).contains(line), "{online:?}");
    let offline_env = [
        ("TYPOSQUAT_POLICY", "block"),
        ("TYPOSQUAT_LIST", list.as_str()),
        ("MALWARE_LIST_DIR", dir.path().to_str().unwrap()),
    ];
    let offline = lockfile_check(&[path], &offline_env);
    assert_eq!(offline.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&offline.stdout).contains(line), "{offline:?}");
}
