//! `npg check-config` runs the start-up's own checks: each bad setting that stops `serve`
//! makes it exit 2 naming the setting, a good configuration exits 0. And the text logs carry
//! no colour codes when stderr is not a terminal.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::npg::NpgProcess;

fn npg(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = NpgProcess::command(
        "http://127.0.0.1:9/registry/",
        support::loopback(9),
        &dir.join("storage"),
    );
    cmd.args(args).env("BLACKLIST_PATH", dir.join("blacklist.yml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run npg")
}

/// A bad case: the setting the error must name, the `blacklist.yml` to write (if any), env.
type Case = (&'static str, Option<&'static str>, Vec<(&'static str, String)>);

fn bad_cases(dir: &Path) -> Vec<Case> {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.join("tokens"), "not a token line\n").unwrap();
    std::fs::write(dir.join("popular.txt"), "react\nNot A Name\n").unwrap();
    vec![
        (
            "BLACKLIST_PATH",
            Some("packages:\n  - name: x\n    versions: ['not a range!']\n"),
            vec![],
        ),
        ("BLACKLIST_PATH", Some("packages: [\n"), vec![]),
        (
            "MIN_RELEASE_AGE_EXCLUDE",
            None,
            vec![
                ("MIN_RELEASE_AGE", "72h".into()),
                ("MIN_RELEASE_AGE_EXCLUDE", "/[/".into()),
            ],
        ),
        (
            "MIN_RELEASE_AGE_EXCLUDE",
            None,
            vec![("MIN_RELEASE_AGE_EXCLUDE", "/[/".into())],
        ),
        (
            "INSTALL_SCRIPT_ALLOW",
            None,
            vec![("INSTALL_SCRIPT_ALLOW", "esbuild,/[/".into())],
        ),
        (
            "INSTALL_SCRIPT_POLICY",
            None,
            vec![("INSTALL_SCRIPT_POLICY", "maybe".into())],
        ),
        (
            "SIGNATURE_KEYS_FILE",
            None,
            vec![("SIGNATURE_KEYS_FILE", path("garbage.pem"))],
        ),
        ("AUTH_TOKENS_FILE", None, vec![("AUTH_TOKENS_FILE", path("tokens"))]),
        (
            "TLS_CERT_FILE",
            None,
            vec![
                ("TLS_CERT_FILE", path("garbage.pem")),
                ("TLS_KEY_FILE", path("garbage.pem")),
            ],
        ),
        (
            "NPG_SECRET_KEY_FILE",
            None,
            vec![
                ("NPG_DOMAIN", "npg.test".into()),
                ("NPG_SECRET_KEY_FILE", path("garbage.pem")),
            ],
        ),
        (
            "UPSTREAM_AUTH_FILE",
            None,
            vec![("UPSTREAM_AUTH_FILE", path("missing"))],
        ),
        ("TYPOSQUAT_LIST", None, vec![("TYPOSQUAT_LIST", path("popular.txt"))]),
        ("TYPOSQUAT_ALLOW", None, vec![("TYPOSQUAT_ALLOW", "/(/".into())]),
        (
            "REDIS_URL and REDIS_SENTINELS exclude each other",
            None,
            vec![
                ("REDIS_URL", "redis://127.0.0.1:6379/0".into()),
                ("REDIS_SENTINELS", "127.0.0.1:26379".into()),
                ("REDIS_SENTINEL_MASTER", "main".into()),
            ],
        ),
        (
            "REDIS_SENTINEL_MASTER: required",
            None,
            vec![("REDIS_SENTINELS", "127.0.0.1:26379,127.0.0.1:26380".into())],
        ),
        (
            "REDIS_SENTINEL_MASTER: set without REDIS_SENTINELS",
            None,
            vec![
                ("ENABLE_REDIS_CACHE", "true".into()),
                ("REDIS_SENTINEL_MASTER", "main".into()),
            ],
        ),
        (
            "REDIS_SENTINELS",
            None,
            vec![("REDIS_SENTINELS", "sentinel-without-port".into())],
        ),
        (
            "REDIS_SENTINEL_PASSWORD_FILE",
            None,
            vec![
                ("REDIS_SENTINELS", "127.0.0.1:26379".into()),
                ("REDIS_SENTINEL_MASTER", "main".into()),
                ("REDIS_SENTINEL_PASSWORD_FILE", path("missing")),
            ],
        ),
    ]
}

#[test]
fn check_config_refuses_what_the_server_refuses() {
    let files = tempfile::tempdir().unwrap();
    for (setting, file, env) in bad_cases(files.path()) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = file {
            std::fs::write(dir.path().join("blacklist.yml"), text).unwrap();
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // `serve` (no subcommand) stops before listening with the same message.
        for args in [&["check-config"][..], &[]] {
            let out = npg(args, dir.path(), &env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "npg {args:?} with a bad {setting}: {stderr}"
            );
            assert!(stderr.contains(setting), "npg {args:?}: {stderr}");
        }
    }
}

#[test]
fn check_config_accepts_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("blacklist.yml"),
        "packages:\n  - name: x\n    versions: ['>=2']\npatterns:\n  - pattern: '^evil-'\n",
    )
    .unwrap();
    let env = [
        ("MIN_RELEASE_AGE", "72h"),
        ("MIN_RELEASE_AGE_EXCLUDE", "trusted,/^@corp\\//"),
    ];
    let out = npg(&["check-config"], dir.path(), &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration is valid"), "{stdout}");
}

#[test]
fn check_config_accepts_sentinels() {
    let dir = with_empty_blocklist();
    std::fs::write(dir.path().join("sentinel-pw"), "s3cret\n").unwrap();
    let pw = dir.path().join("sentinel-pw");
    let env = [
        ("REDIS_SENTINELS", "127.0.0.1:26379, 127.0.0.1:26380,[::1]:26381"),
        ("REDIS_SENTINEL_MASTER", "main"),
        ("REDIS_SENTINEL_PASSWORD_FILE", pw.to_str().unwrap()),
        ("REDIS_PASSWORD", "master-secret"),
        ("REDIS_DB", "2"),
    ];
    let out = npg(&["check-config"], dir.path(), &env);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    for secret in ["s3cret", "master-secret"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{stdout}{stderr}");
    }
}

/// What the disk looked like: every path under `dir`.
fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A directory with an empty blocklist in it.
fn with_empty_blocklist() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blacklist.yml"), "packages: []\n").unwrap();
    dir
}

#[test]
fn check_config_writes_nothing_to_disk() {
    let dir = with_empty_blocklist();
    // STORAGE_DIR does not exist yet: it may be created, so the check passes, but only
    // `serve` creates it. ACME settings too, which keep their state under STORAGE_DIR.
    let env = [
        ("NPG_DOMAIN", "npg.test"),
        ("ACME_DIRECTORY_URL", "https://127.0.0.1:14000/dir"),
    ];
    let passes_untouched = || {
        let before = tree(dir.path());
        let out = npg(&["check-config"], dir.path(), &env);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(tree(dir.path()), before, "check-config changed the disk");
    };
    passes_untouched();
    // An existing STORAGE_DIR is left as found as well.
    std::fs::create_dir(dir.path().join("storage")).unwrap();
    passes_untouched();
}

#[test]
fn check_config_refuses_a_storage_dir_that_is_a_file() {
    let dir = with_empty_blocklist();
    std::fs::write(dir.path().join("storage"), "a file\n").unwrap();
    let out = npg(&["check-config"], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("STORAGE_DIR"), "{stderr}");
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut child = NpgProcess::command("http://127.0.0.1:9/registry/", support::loopback(port), dir.path())
        .env("LOG_LEVEL", "info")
        .env("LOG_FORMAT", "text")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn npg");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let done = line.contains("npg listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(text.contains("npg listening") && text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe:\n{text:?}");
}
