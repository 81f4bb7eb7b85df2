//! The second malware source, OpenSSF malicious-packages advisories in OSV format: from a
//! directory (hidden in packuments, tarballs refused with the advisory id, `/api/guard` naming
//! source and advisory, changes picked up, real npm resolving around them) and from a URL
//! (fetched once per interval for a cluster of two replicas on one real Redis, kept on disk).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::feed_server::FakeFeed;
use crate::support::http::get;
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::upstream::FakeRegistry;

const SOURCE: &str = "OpenSSF malicious-packages (OSV)";

/// An OSV record of the malicious-packages kind for one npm package; `affected` adds its
/// `versions` / `ranges` (none: every version).
fn record(id: &str, name: &str, affected: Value) -> Value {
    let mut entry = json!({"package": {"ecosystem": "npm", "name": name}});
    entry
        .as_object_mut()
        .unwrap()
        .extend(affected.as_object().unwrap().clone());
    json!({
        "schema_version": "1.5.0",
        "id": id,
        "modified": "2025-03-01T00:00:00Z",
        "published": "2025-03-01T00:00:00Z",
        "summary": format!("Malicious code in {name} (npm)"),
        "affected": [entry],
        "database_specific": {"malicious-packages-origins": [{"source": "test"}]},
    })
}

/// Writes `record` where the malicious-packages repository keeps it.
fn put(root: &Path, record: &Value) {
    let name = record["affected"][0]["package"]["name"].as_str().unwrap();
    let dir = root.join("osv/malicious/npm").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.json", record["id"].as_str().unwrap()));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// The fixture: a range, a whole package, a withdrawn advisory, a non-MAL id, another
/// ecosystem, and a file that is not a record.
fn fixture(root: &Path) {
    let range = json!({"ranges": [{"type": "SEMVER", "events": [{"introduced": "2.0.0"}, {"fixed": "3.0.0"}]}]});
    put(root, &record("MAL-2025-1001", "npg-fixture-a", range));
    let whole = json!({"ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]});
    put(root, &record("MAL-2025-1002", "npg-legacy", whole));
    let mut withdrawn = record("MAL-2025-1003", "npg-fixture-b", json!({"versions": ["1.0.1"]}));
    withdrawn["withdrawn"] = "2025-03-02T00:00:00Z".into();
    put(root, &withdrawn);
    put(
        root,
        &record("GHSA-aaaa-bbbb-cccc", "npg-fixture-b", json!({"versions": ["1.0.0"]})),
    );
    let mut pypi = record("MAL-2025-1004", "npg-fixture-b", json!({"versions": ["1.0.0"]}));
    pypi["affected"][0]["package"]["ecosystem"] = "PyPI".into();
    put(root, &pypi);
    std::fs::write(root.join("osv/malicious/npm/broken.json"), "{\"id\": ").unwrap();
}

async fn health(npg: &NpgProcess) -> Value {
    get(&format!("{}/api/health", npg.base), &[]).await.json()
}

/// Polls the OSV part of `/api/health` until `ok` holds; returns it.
async fn wait_osv(npg: &NpgProcess, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let osv = health(npg).await["guard"]["osv"].clone();
        if ok(&osv) {
            return osv;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "OSV never became {what}: {osv}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ok_with(entries: u64) -> impl Fn(&Value) -> bool {
    move |s| s["state"] == "ok" && s["entries"] == entries
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_of_advisories_hides_refuses_and_explains() {
    let (up, root) = (FakeRegistry::start(), tempfile::tempdir().unwrap());
    fixture(root.path());
    let npg = NpgProcess::start(
        &up.url(),
        &[
            ("OSV_FEED_DIR", root.path().to_str().unwrap()),
            ("UPDATE_INTERVAL", "300ms"),
        ],
    );
    // Read before serving: the first answer already guards.
    let status = health(&npg).await["guard"]["osv"].clone();
    assert_eq!(
        (
            status["state"].as_str(),
            status["entries"].as_u64(),
            status["source"].as_str()
        ),
        (Some("ok"), Some(2), Some("directory")),
        "{status}"
    );

    let doc = get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await.json();
    assert!(doc["versions"].get("2.0.0").is_none(), "the listed version is served");
    assert!(doc["versions"].get("1.1.0").is_some());
    assert_eq!(doc["dist-tags"]["latest"], "1.1.0");
    let tarball = get(
        &format!("{}/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", npg.proxy_url),
        &[],
    )
    .await;
    assert_eq!(tarball.status, 403);
    let body = String::from_utf8_lossy(&tarball.body).to_string();
    assert!(body.contains("MAL-2025-1001") && body.contains(SOURCE), "{body}");
    assert_eq!(up.tarball_requests("npg-fixture-a", "npg-fixture-a-2.0.0.tgz"), 0);

    let explained = get(&format!("{}/api/guard/npg-fixture-a", npg.base), &[]).await.json();
    let hidden = &explained["hidden"]["2.0.0"];
    assert_eq!(
        (
            hidden["type"].as_str(),
            hidden["source"].as_str(),
            hidden["advisory"].as_str()
        ),
        (Some("malware"), Some(SOURCE), Some("MAL-2025-1001")),
        "{explained}"
    );
    assert_eq!(hidden["reason"], "MAL-2025-1001: Malicious code in npg-fixture-a (npm)");
    let whole = get(&format!("{}/api/guard/npg-legacy", npg.base), &[]).await.json();
    assert_eq!(whole["blocked"]["advisory"], "MAL-2025-1002", "{whole}");
    assert_eq!(get(&format!("{}/npg-legacy", npg.proxy_url), &[]).await.status, 403);
    // Withdrawn, not MAL-, another ecosystem: npg-fixture-b is untouched.
    let b = get(&format!("{}/api/guard/npg-fixture-b", npg.base), &[]).await.json();
    assert_eq!(b["hidden"], json!({}), "{b}");

    let metrics = String::from_utf8(get(&format!("{}/metrics", npg.base), &[]).await.body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"npg_guard_blocks_total{type="malware"}"#) && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Real npm resolves around the listed range.
    let registry = npg.proxy_url.clone();
    tokio::task::spawn_blocking(move || {
        let project = Project::new(Client::Npm, &registry, &[("npg-fixture-a", "^1.0.0 || ^2.0.0")]);
        project.install().assert_success();
        assert_eq!(project.installed_version("npg-fixture-a").as_deref(), Some("1.1.0"));
    })
    .await
    .unwrap();

    // A new advisory in the tree applies without a restart, and drops the cached tarball.
    let cached = format!("{}/npg-fixture-b/-/npg-fixture-b-1.0.1.tgz", npg.proxy_url);
    assert_eq!(get(&cached, &[]).await.status, 200);
    let on_disk = npg.storage.join("np/npg-fixture-b/npg-fixture-b-1.0.1.tgz");
    assert!(on_disk.is_file());
    put(
        root.path(),
        &record("MAL-2025-1005", "npg-fixture-b", json!({"versions": ["1.0.1"]})),
    );
    wait_osv(&npg, "ok with 3 advisories", ok_with(3)).await;
    let started = Instant::now();
    loop {
        let b = get(&format!("{}/npg-fixture-b", npg.proxy_url), &[]).await.json();
        if b["versions"].get("1.0.1").is_none() {
            assert_eq!(b["dist-tags"]["latest"], "1.0.0");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new advisory never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while on_disk.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the newly listed tarball stayed on disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&cached, &[]).await.status, 403);
}

#[tokio::test]
async fn a_missing_directory_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let out = NpgProcess::command("http://127.0.0.1:9/", support::loopback(9), &dir.path().join("storage"))
        .arg("check-config")
        .env("OSV_FEED_DIR", &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("OSV_FEED_DIR"), "{stderr}");
    let both = NpgProcess::command("http://127.0.0.1:9/", support::loopback(9), &dir.path().join("storage"))
        .arg("check-config")
        .env("OSV_FEED_DIR", dir.path())
        .env("OSV_FEED_URL", "http://127.0.0.1:9/osv.json")
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "{both:?}");
}

/// A package-lock.json (v3) holding `npg-fixture-a@<version>`, resolved through the default
/// PROXY_URL (so only the guard can make `npg lockfile check` fail).
fn lockfile(dir: &Path, version: &str) -> std::path::PathBuf {
    let url = format!("http://127.0.0.1:3000/npm/npg-fixture-a/-/npg-fixture-a-{version}.tgz");
    let lock = json!({
        "name": "p", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
        "packages": {
            "": {"name": "p", "version": "1.0.0", "dependencies": {"npg-fixture-a": version}},
            "node_modules/npg-fixture-a": {"version": version, "resolved": url, "integrity": "sha512-AAAA"},
        },
    });
    let path = dir.join(format!("package-lock-{version}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&lock).unwrap()).unwrap();
    path
}

/// `npg lockfile check` offline (no `--npg`) with `env`; (exit code, stdout and stderr).
fn lockfile_check(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_npg"));
    cmd.env_clear().args(["lockfile", "check"]).arg(path);
    cmd.env("BLACKLIST_PATH", path.with_extension("missing.yml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn lockfile_check_offline_reads_the_directory() {
    let root = tempfile::tempdir().unwrap();
    fixture(root.path());
    let env = [
        ("OSV_FEED_DIR", root.path().to_str().unwrap()),
        ("MALWARE_LIST_DIR", root.path().to_str().unwrap()),
    ];
    let (code, text) = lockfile_check(&lockfile(root.path(), "2.0.0"), &env);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("npg-fixture-a@2.0.0: malware, MAL-2025-1001: Malicious code in npg-fixture-a (npm)"),
        "{text}"
    );
    let (code, text) = lockfile_check(&lockfile(root.path(), "1.1.0"), &env);
    assert_eq!(code, Some(0), "{text}");
}

/// Starts npg on `up` with the OSV list at `url`, kept in `list_dir`.
fn start(up: &FakeRegistry, url: &str, list_dir: &Path, extra: &[(&str, &str)]) -> NpgProcess {
    let mut env = vec![
        ("OSV_FEED_URL", url),
        ("MALWARE_LIST_DIR", list_dir.to_str().unwrap()),
        ("UPDATE_INTERVAL", "2000ms"),
        ("ENABLE_SCHEDULED_UPDATES", "true"),
    ];
    env.extend_from_slice(extra);
    NpgProcess::start(&up.url(), &env)
}

#[tokio::test]
async fn a_url_is_fetched_once_per_interval_for_the_cluster() {
    let redis = RedisServer::start();
    let (up, feed) = (FakeRegistry::start(), FakeFeed::start());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    feed.set_entries(json!([record(
        "MAL-2025-2001",
        "npg-fixture-b",
        json!({"versions": ["1.0.1"]})
    )]));
    let redis_url = redis.url();
    let node = |name: &str, dir: &Path| {
        let cluster = [
            ("ENABLE_REDIS_CACHE", "true"),
            ("REDIS_URL", redis_url.as_str()),
            ("INSTANCE_NAME", name),
        ];
        start(&up, &feed.url(), dir, &cluster)
    };
    let (a, b) = (node("a", dir_a.path()), node("b", dir_b.path()));
    let a_status = wait_osv(&a, "ok with 1 advisory", ok_with(1)).await;
    let b_status = wait_osv(&b, "ok with 1 advisory", ok_with(1)).await;
    let downloads = |since: usize| feed.log()[since..].iter().filter(|r| r.status == 200).count();
    assert_eq!(downloads(0), 1, "both replicas downloaded at start: {:?}", feed.log());
    let mut sources = [
        a_status["source"].as_str().unwrap(),
        b_status["source"].as_str().unwrap(),
    ];
    sources.sort();
    assert_eq!(sources, ["redis", "remote"]);
    assert!(redis.command(&["HEXISTS", "npg:malware:osv", "body"]).starts_with(":1"));
    // The Aikido-format feed is its own source: unreachable here, and no worse for it.
    assert_eq!(health(&a).await["guard"]["feed"]["entries"], 0);
    for npg in [&a, &b] {
        let tarball = get(
            &format!("{}/npg-fixture-b/-/npg-fixture-b-1.0.1.tgz", npg.proxy_url),
            &[],
        )
        .await;
        assert_eq!(tarball.status, 403);
        assert!(String::from_utf8_lossy(&tarball.body).contains("MAL-2025-2001"));
    }

    // Two replicas, one fetch per interval between them.
    let before = feed.requests();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let fetched = feed.requests() - before;
    assert!(
        (2..=5).contains(&fetched),
        "{fetched} fetches in 8 s at one per 2 s for the cluster"
    );

    let range = json!({"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"last_affected": "1.1.0"}]}]});
    feed.set_entries(json!([
        record("MAL-2025-2001", "npg-fixture-b", json!({"versions": ["1.0.1"]})),
        record("MAL-2025-2002", "npg-fixture-a", range),
    ]));
    let before = feed.requests();
    for npg in [&a, &b] {
        wait_osv(npg, "ok with 2 advisories", ok_with(2)).await;
        let doc = get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await.json();
        let versions: Vec<_> = doc["versions"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(versions, ["2.0.0"], "last_affected 1.1.0 hides 1.0.0 and 1.1.0");
    }
    assert_eq!(
        downloads(before),
        1,
        "the new list was downloaded once: {:?}",
        feed.log()
    );
    // Each replica keeps its copy beside (not over) the feed's, for a restart without network.
    for dir in [&dir_a, &dir_b] {
        let saved = std::fs::read(dir.path().join("osv/127.0.0.1/malware_predictions.json")).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&saved)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    let url = feed.url();
    drop((a, b, feed, redis));

    // A restart with neither the feed nor Redis still guards, from the kept copy.
    let alone = start(&up, &url, dir_a.path(), &[]);
    let status = health(&alone).await["guard"]["osv"].clone();
    assert_eq!(
        (status["source"].as_str(), status["entries"].as_u64()),
        (Some("disk"), Some(2)),
        "{status}"
    );
    let tarball = format!("{}/npg-fixture-a/-/npg-fixture-a-1.1.0.tgz", alone.proxy_url);
    assert_eq!(get(&tarball, &[]).await.status, 403);
    // `npg lockfile check` offline reads the same kept copy.
    let env = [
        ("OSV_FEED_URL", url.as_str()),
        ("MALWARE_LIST_DIR", dir_a.path().to_str().unwrap()),
    ];
    let (code, text) = lockfile_check(&lockfile(dir_b.path(), "1.1.0"), &env);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("npg-fixture-a@1.1.0: malware, MAL-2025-2002"), "{text}");
}

/// OSV's per-ecosystem form: a zip of one record per file, served at the URL.
#[tokio::test]
async fn a_zip_of_records_from_a_url() {
    use std::io::Write;
    let (up, feed, dir) = (FakeRegistry::start(), FakeFeed::start(), tempfile::tempdir().unwrap());
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let records = [
        record("MAL-2025-3001", "npg-fixture-b", json!({"versions": ["1.0.1"]})),
        record("GHSA-dddd-eeee-ffff", "npg-fixture-a", json!({})),
    ];
    for r in &records {
        zip.start_file(format!("{}.json", r["id"].as_str().unwrap()), options)
            .unwrap();
        zip.write_all(&serde_json::to_vec(r).unwrap()).unwrap();
    }
    feed.set_raw(zip.finish().unwrap().into_inner());
    let npg = start(&up, &feed.url(), dir.path(), &[]);
    wait_osv(&npg, "ok with 1 advisory", ok_with(1)).await;
    let tarball = get(
        &format!("{}/npg-fixture-b/-/npg-fixture-b-1.0.1.tgz", npg.proxy_url),
        &[],
    )
    .await;
    assert_eq!(tarball.status, 403);
    assert!(String::from_utf8_lossy(&tarball.body).contains("MAL-2025-3001"));
    let a = get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    assert_eq!(a.status, 200, "a GHSA advisory is not malware");
}
