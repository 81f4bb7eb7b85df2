//! `npg lockfile check` on lockfiles the real clients wrote against another registry (the fake
//! upstream, directly): blocked entries listed with exit 1 through a running npg and offline,
//! URLs that bypass npg listed, exit 2 on unreadable input, and `--rewrite` giving a lockfile
//! the same client installs frozen through npg (npg then holds the tarballs: it saw them).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::guarded::{start_with, write};
use crate::support::npg::NpgProcess;

const RULES: &str = "packages:\n  - name: npg-fixture-b\n    versions: ['1.0.1']\n    reason: compromised release\n";
const DEPENDENCIES: &[(&str, &str)] = &[("npg-fixture-a", "^2.0.0")];
const BLOCKED_LINE: &str = "npg-fixture-b@1.0.1: version, compromised release";

pub(crate) fn lockfile_check(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_npg"));
    cmd.env_clear().arg("lockfile").arg("check").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run npg lockfile check")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until npg no longer hides anything of `npg-fixture-b` (the blocklist reloaded).
async fn wait_unblocked(npg: &NpgProcess) {
    let url = format!("{}/api/guard/npg-fixture-b", npg.base);
    let started = Instant::now();
    while support::http::get(&url, &[]).await.json()["hidden"] != serde_json::json!({}) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the blocklist was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn check_and_rewrite(client: Client) {
    let (up, npg, dir) = start_with(RULES, &[]);
    let direct = Project::new(client, &up.url(), DEPENDENCIES);
    direct.install().assert_success();
    let lockfile = direct.lockfile_path();
    let path = lockfile.to_str().unwrap();
    let original = std::fs::read_to_string(&lockfile).unwrap();
    // The upstream's address, as written (npm, yarn 1, pnpm) or encoded (yarn berry).
    let port = up.addr().port();
    let upstream_named =
        |text: &str| text.contains(&format!("127.0.0.1:{port}")) || text.contains(&format!("127.0.0.1%3A{port}"));
    // The fake's tarballs are not where the registry convention puts them, so every client
    // records their absolute URLs (yarn 1 and npm would anyway).
    assert!(upstream_named(&original), "{original}");

    // Through npg: the blocked entry listed, the URLs of another registry too.
    let out = lockfile_check(&["--npg", &npg.base, path], &[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{path}: {BLOCKED_LINE}")), "{shown}");
    assert_eq!(stdout.matches("compromised").count(), 1, "{shown}");
    assert!(stdout.contains("resolved outside npg"), "{shown}");

    // Offline with the same blocklist; the release age cannot be judged there, and it says so.
    let blocklist = dir.path().join("blacklist.yml");
    let offline_env = [
        ("BLACKLIST_PATH", blocklist.to_str().unwrap()),
        ("MALWARE_LIST_DIR", dir.path().to_str().unwrap()),
        ("MIN_RELEASE_AGE", "3d"),
    ];
    let out = lockfile_check(&[path], &offline_env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(BLOCKED_LINE),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MIN_RELEASE_AGE, install scripts and signatures not judged"),
        "{}",
        text(&out)
    );

    // The block lifted: clean, and --rewrite points the URLs at npg.
    write(&blocklist, "");
    wait_unblocked(&npg).await;
    let out = lockfile_check(&["--npg", &npg.base, "--rewrite", path], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rewritten = std::fs::read_to_string(&lockfile).unwrap();
    assert!(!upstream_named(&rewritten), "{rewritten}");
    assert_eq!(rewritten.lines().count(), original.lines().count(), "only URLs change");
    let out = lockfile_check(&["--npg", &npg.base, path], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The client installs the rewritten lockfile frozen through npg: npg fetched every tarball.
    let through_npg = Project::new(client, &npg.proxy_url, DEPENDENCIES);
    std::fs::write(through_npg.lockfile_path(), &rewritten).unwrap();
    through_npg.install_frozen().assert_success();
    for file in [
        "npg-fixture-a/npg-fixture-a-2.0.0.tgz",
        "npg-fixture-b/npg-fixture-b-1.0.1.tgz",
    ] {
        assert!(
            npg.storage.join("np").join(file).is_file(),
            "{file} did not go through npg; the lockfile:\n{rewritten}"
        );
    }
}

#[tokio::test]
async fn npm_lockfile() {
    check_and_rewrite(Client::Npm).await;
}

#[tokio::test]
async fn yarn1_lockfile() {
    check_and_rewrite(Client::Yarn1).await;
}

#[tokio::test]
async fn pnpm_lockfile() {
    check_and_rewrite(Client::Pnpm).await;
}

#[tokio::test]
async fn yarn_berry_lockfile() {
    check_and_rewrite(Client::Yarn4).await;
}

#[test]
fn unreadable_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("package-lock.json");
    std::fs::write(&garbage, "{ not json").unwrap();
    let unknown = dir.path().join("Gemfile.lock");
    std::fs::write(&unknown, "GEM\n").unwrap();
    let missing = dir.path().join("yarn.lock");
    let env = [("BLACKLIST_PATH", "/nonexistent/blacklist.yml")];
    for file in [&garbage, &unknown, &missing] {
        let out = lockfile_check(&[file.to_str().unwrap()], &env);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(file.to_str().unwrap()),
            "{}",
            text(&out)
        );
    }
    // npg unreachable: nothing judged is not clean.
    let npm = dir.path().join("npm-shrinkwrap.json");
    std::fs::write(
        &npm,
        r#"{"lockfileVersion": 3, "packages": {"node_modules/a": {"version": "1.0.0"}}}"#,
    )
    .unwrap();
    let out = lockfile_check(&["--npg", "http://127.0.0.1:9", npm.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a@1.0.0: not judged"),
        "{}",
        text(&out)
    );
}
