//! `npg warm`: a cold npg warmed from a lockfile a real client wrote serves that client's
//! frozen install with the upstream failing; a second warm finds everything cached; a
//! blocked entry is reported as blocked (exit 1); unreadable input exits 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::clients::{Client, FIXTURE_RESOLUTION, Project};
use crate::support::guarded::start_with;
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::upstream::{Failure, FakeRegistry};

/// Runs `npg <args>` with nothing of the test's environment.
pub fn npg(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_npg"));
    cmd.env_clear().args(args);
    cmd.output().expect("run npg")
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The fixture project's lockfile as `client` writes it through a first npg, pointed at
/// `npg` instead, written in `dir`.
pub fn fixture_lockfile(client: Client, up: &FakeRegistry, npg: &NpgProcess, dir: &Path) -> PathBuf {
    let first = NpgProcess::start(&up.url(), &[]);
    let project = Project::fixture(client, &first.proxy_url);
    project.install().assert_success();
    let text = project.lockfile_text().replace(&first.proxy_url, &npg.proxy_url);
    let path = dir.join(client.lockfile());
    std::fs::write(&path, text).unwrap();
    path
}

/// A frozen install of the fixture project from `lockfile` through `registry`.
pub fn install_from(client: Client, registry: &str, lockfile: &Path) {
    let project = Project::fixture(client, registry);
    std::fs::copy(lockfile, project.lockfile_path()).unwrap();
    project.install_frozen().assert_success();
    assert_eq!(project.installed_version("npg-fixture-a").as_deref(), Some("2.0.0"));
    let transitive = project.installed_dependency_version("npg-fixture-a", "npg-fixture-b");
    assert_eq!(transitive.as_deref(), Some("1.0.1"));
}

async fn warm_then_upstream_fails(client: Client) {
    let up = FakeRegistry::start();
    let npg_ = NpgProcess::start(&up.url(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let lockfile = fixture_lockfile(client, &up, &npg_, dir.path());
    let path = lockfile.to_str().unwrap();
    let entries = FIXTURE_RESOLUTION.len();

    let out = npg(&["warm", "--npg", &npg_.base, path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary = format!("{entries} entries: {entries} fetched, 0 already cached, 0 blocked, 0 failed");
    assert!(text(&out).contains(&summary), "{}", text(&out));
    // Not a terminal: a plain line per entry.
    assert!(text(&out).contains(&format!("[{entries}/{entries}]")), "{}", text(&out));
    assert!(npg_.storage.join("np/npg-fixture-a/npg-fixture-a-2.0.0.tgz").is_file());

    // Safe to re-run: everything is already there.
    let tarballs_asked = up.tarball_requests_any("npg-fixture-a");
    let out = npg(&["warm", "--npg", &npg_.base, "--concurrency", "2", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary = format!("{entries} entries: 0 fetched, {entries} already cached, 0 blocked, 0 failed");
    assert!(text(&out).contains(&summary), "{}", text(&out));
    assert_eq!(up.tarball_requests_any("npg-fixture-a"), tarballs_asked);

    // The upstream fails: the client installs from what the warm-up cached.
    up.set_failure(Failure::Status(503));
    install_from(client, &npg_.proxy_url, &lockfile);
}

#[tokio::test]
async fn npm_lockfile_warmed() {
    warm_then_upstream_fails(Client::Npm).await;
}

#[tokio::test]
async fn pnpm_lockfile_warmed() {
    warm_then_upstream_fails(Client::Pnpm).await;
}

/// No npg running: `--direct` fills STORAGE_DIR and Redis through npg's own code, and the
/// replica started afterwards installs from them with the upstream failing.
#[tokio::test]
async fn direct_warm_fills_storage_and_redis_before_any_npg_runs() {
    let up = FakeRegistry::start();
    let redis = RedisServer::start();
    let storage = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let placeholder = NpgProcess::start(&up.url(), &[]);
    let lockfile = fixture_lockfile(Client::Npm, &up, &placeholder, dir.path());
    drop(placeholder);
    up.reset_counts();

    let redis_url = redis.url();
    let cluster = [("ENABLE_REDIS_CACHE", "true"), ("REDIS_URL", redis_url.as_str())];
    let addr = crate::support::loopback(crate::support::free_port());
    let mut cmd = NpgProcess::command(&up.url(), addr, storage.path());
    cmd.envs(cluster).args(["warm", "--direct", lockfile.to_str().unwrap()]);
    let out = cmd.output().unwrap();
    let entries = FIXTURE_RESOLUTION.len();
    let summary = format!("{entries} entries: {entries} fetched, 0 already cached, 0 blocked, 0 failed");
    assert!(text(&out).contains(&summary), "{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        storage
            .path()
            .join("np/npg-fixture-a/npg-fixture-a-2.0.0.tgz")
            .is_file()
    );
    assert!(
        redis.command(&["EXISTS", "npg:meta:npg-fixture-a"]).starts_with(":1"),
        "the packument in Redis"
    );

    up.set_failure(Failure::Status(503));
    let npg_ = NpgProcess::start_with_storage(&up.url(), &cluster, storage.path().to_path_buf(), None);
    let text = std::fs::read_to_string(&lockfile)
        .unwrap()
        .replace(&placeholder_url(&lockfile), &npg_.proxy_url);
    std::fs::write(&lockfile, text).unwrap();
    let registry = npg_.proxy_url.clone();
    tokio::task::spawn_blocking(move || install_from(Client::Npm, &registry, &lockfile))
        .await
        .unwrap();
}

/// The npg URL a fixture lockfile names (the part of a `resolved` URL before `/npg-fixture-a/`).
fn placeholder_url(lockfile: &Path) -> String {
    let text = std::fs::read_to_string(lockfile).unwrap();
    let at = text.find("/npg-fixture-a/-/").expect("a resolved URL");
    let start = text[..at].rfind("\"http").expect("its start") + 1;
    text[start..at].to_string()
}

#[tokio::test]
async fn blocked_entries_are_reported() {
    let rules = "packages:\n  - name: npg-fixture-b\n    versions: ['1.0.1']\n    reason: compromised release\n";
    let (up, npg_, _dir) = start_with(rules, &[]);
    // A lockfile written before the block, straight from the upstream.
    let project = Project::new(Client::Npm, &up.url(), &[("npg-fixture-a", "^2.0.0")]);
    project.install().assert_success();
    let lockfile = project.lockfile_path();
    let out = npg(&["warm", "--npg", &npg_.base, lockfile.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("npg-fixture-b@1.0.1: blocked: version, compromised release"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("3 entries: 2 fetched, 0 already cached, 1 blocked, 0 failed"),
        "{}",
        text(&out)
    );
    assert!(!npg_.storage.join("np/npg-fixture-b").exists());
}

#[test]
fn unreachable_npg_and_unreadable_input_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("package-lock.json");
    std::fs::write(&garbage, "{ not json").unwrap();
    let out = npg(&["warm", "--npg", "http://127.0.0.1:9", garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let lock =
        r#"{"lockfileVersion": 3, "packages": {"node_modules/a": {"version": "1.0.0", "integrity": "sha512-AAAA"}}}"#;
    std::fs::write(&garbage, lock).unwrap();
    let out = npg(&["warm", "--npg", "http://127.0.0.1:9", garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("a@1.0.0: failed: npg unreachable"),
        "{}",
        text(&out)
    );
}
