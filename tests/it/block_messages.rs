//! What users see when the guard refuses something: the reason in the status line (checked on
//! the wire, hostile reasons included), the guidance in the body, and the exact message each
//! real client prints for each case (README "Point your clients at it" shows them).

use std::time::Instant;

use crate::support;
use crate::support::clients::{Client, ClientOutput, Project};
use crate::support::guarded::{wait_hidden, write};
use crate::support::npg::NpgProcess;
use crate::support::upstream::FakeRegistry;

const RULES: &str = r#"
packages:
  - name: npg-legacy
    reason: unmaintained
  - name: npg-hostile
    reason: "bad\r\nX-Injected: 1"
patterns:
  - pattern: "^evil-"
    reason: typosquatting
"#;

/// RULES plus a version rule: what the policy becomes after a lockfile was written.
fn with_blocked_version() -> String {
    RULES.replace(
        "packages:\n",
        "packages:\n  - name: npg-fixture-a\n    versions: ['2.0.0']\n    reason: compromised release\n",
    )
}

/// npg with RULES, the release-age gate at 3 days, a malware feed (persisted, as if fetched
/// earlier) listing `npg-fixture-b@1.0.0`, and `npg-fresh` published just now.
fn start() -> (FakeRegistry, NpgProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let blocklist = dir.path().join("blacklist.yml");
    write(&blocklist, RULES);
    let storage = dir.path().join("storage");
    let feed = storage.join(".malware-list/127.0.0.1");
    std::fs::create_dir_all(&feed).unwrap();
    let listed = r#"[{"package_name":"npg-fixture-b","version":"1.0.0","reason":"MALWARE"}]"#;
    std::fs::write(feed.join("malware_predictions.json"), listed).unwrap();
    let up = FakeRegistry::start();
    up.publish("npg-fresh", "1.0.0");
    let env = [
        ("BLACKLIST_PATH", blocklist.to_str().unwrap()),
        ("MIN_RELEASE_AGE", "3d"),
    ];
    let npg = NpgProcess::start_with_storage(&up.url(), &env, storage, None);
    (up, npg, dir)
}

/// The status line and the headers of a raw HTTP/1.1 GET.
fn head(npg: &NpgProcess, path: &str) -> String {
    let (_, text) = support::http::raw_get(npg.port, &format!("/npm/{path}"));
    text.split("\r\n\r\n").next().unwrap().to_string()
}

#[test]
fn the_status_line_says_why() {
    let (_up, npg, _dir) = start();
    let cases = [
        ("npg-legacy", "403 Blocked: npg-legacy (unmaintained)"),
        (
            "evil-lodash",
            "403 Blocked: evil-lodash (pattern ^evil-: typosquatting)",
        ),
        (
            "npg-fixture-b/-/npg-fixture-b-1.0.0.tgz",
            "403 Blocked: npg-fixture-b@1.0.0 (malware per 127.0.0.1: MALWARE)",
        ),
        (
            "npg-fixture-b/1.0.0",
            "403 Blocked: npg-fixture-b@1.0.0 (malware per 127.0.0.1: MALWARE)",
        ),
        // A range only a hidden version satisfies.
        (
            "npg-fixture-b/%3C1.0.1",
            "404 Blocked: npg-fixture-b@1.0.0 (malware per 127.0.0.1: MALWARE)",
        ),
        ("npg-fresh", "404 Held: npg-fresh (release-age gate until "),
        // A reason cannot end the line: no header is injected.
        ("npg-hostile", "403 Blocked: npg-hostile (bad??X-Injected: 1)"),
    ];
    for (path, line) in cases {
        let head = head(&npg, path);
        assert!(head.starts_with(&format!("HTTP/1.1 {line}")), "{path}: {head}");
        assert!(!head.to_ascii_lowercase().contains("\r\nx-injected"), "{head}");
    }
    let ok = head(&npg, "npg-fixture-a");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
}

#[tokio::test]
async fn the_bodies_say_which_rule_and_what_to_do() {
    let (_up, npg, _dir) = start();
    let get = async |path: &str| support::http::get(&format!("{}/{path}", npg.proxy_url), &[]).await;
    let body = get("npg-fixture-b/-/npg-fixture-b-1.0.0.tgz").await.json();
    assert_eq!(body["type"], "malware");
    assert_eq!(body["source"], "127.0.0.1");
    assert_eq!(
        body["error"],
        "npg-fixture-b@1.0.0 is listed as malware by 127.0.0.1 (MALWARE). Use another version, or ask \
         your npg administrator. GET /api/guard/npg-fixture-b on npg shows what is hidden and why."
    );
    let fresh = get("npg-fresh").await.json();
    let error = fresh["error"].as_str().unwrap();
    assert!(
        error.starts_with("Every version of npg-fresh is hidden by npg's policy; npg-fresh@1.0.0 is held by the release-age gate until "),
        "{fresh}"
    );
    assert!(
        error.contains(", minimum age 3 days). It is served once old enough"),
        "{fresh}"
    );
    assert_eq!(fresh["type"], "age");
    assert!(fresh["until"].as_str().unwrap().ends_with('Z'), "{fresh}");
}

/// The cases users meet, in the order `shows_why` runs them.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// A lockfile written before the block pins the blocked version (a frozen install).
    LockfilePinsBlocked,
    /// `add npg-fixture-a@2.0.0`: the version is hidden from the packument.
    HiddenVersion,
    /// `add npg-legacy`: the whole package is blocked.
    PackageBlocked,
    /// `add npg-fresh`: its only version is held by the release-age gate.
    AllHeldByAge,
}

/// Runs every case with `client`; returns each case's output (stdout and stderr).
fn run_cases(client: Client) -> Vec<(Case, ClientOutput)> {
    let (_up, npg, dir) = start();
    let locked = Project::new(client, &npg.proxy_url, &[("npg-fixture-a", "^2.0.0")]);
    locked.install().assert_success();
    write(&dir.path().join("blacklist.yml"), &with_blocked_version());
    npg.signal("HUP");
    wait_hidden(&npg, "npg-fixture-a", "2.0.0");
    locked.forget_installation();
    let mut outputs = vec![(Case::LockfilePinsBlocked, locked.install_frozen())];
    let fresh = Project::new(client, &npg.proxy_url, &[]);
    for (case, spec) in [
        (Case::HiddenVersion, "npg-fixture-a@2.0.0"),
        (Case::PackageBlocked, "npg-legacy"),
        (Case::AllHeldByAge, "npg-fresh"),
    ] {
        outputs.push((case, fresh.add(spec)));
    }
    outputs
}

/// Runs the cases and checks each failed and printed its substrings (in `Case` order).
fn assert_shows(client: Client, expected: [&[&str]; 4]) {
    let started = Instant::now();
    let outputs = run_cases(client);
    for ((case, out), needles) in outputs.iter().zip(expected) {
        eprintln!("==== {} {case:?}\n{out}", client.name());
        out.assert_failure();
        let text = format!("{}{}", out.stdout, out.stderr);
        for needle in needles {
            assert!(text.contains(needle), "{case:?}: `{needle}` not printed\n{out}");
        }
    }
    eprintln!("{} cases took {:.1?}", client.name(), started.elapsed());
}

#[test]
fn npm_shows_why() {
    assert_shows(
        Client::Npm,
        [
            &[
                "403 Blocked: npg-fixture-a@2.0.0 (compromised release) - GET ",
                "npg-fixture-a@2.0.0 is blocked by the blocklist (compromised release). Use another version",
            ],
            // From the packument's policyRestrictions.
            &[
                "Could not download npg-fixture-a@2.0.0 due to policy violations:",
                "npg-fixture-a@2.0.0 is blocked by the blocklist (compromised release)",
            ],
            &["403 Blocked: npg-legacy (unmaintained) - GET "],
            &[
                "404 Held: npg-fresh (release-age gate until ",
                "npg-fresh@1.0.0 is held by the release-age gate until ",
            ],
        ],
    );
}

#[test]
fn pnpm_shows_why() {
    assert_shows(
        Client::Pnpm,
        [
            &[
                "ERR_PNPM_FETCH_403",
                "Blocked: npg-fixture-a@2.0.0 (compromised release) - 403",
            ],
            // pnpm reads no reason from a packument: the version is just missing.
            &[
                "ERR_PNPM_NO_MATCHING_VERSION",
                "No matching version found for npg-fixture-a@2.0.0",
            ],
            &["ERR_PNPM_FETCH_403", "Blocked: npg-legacy (unmaintained) - 403"],
            &["ERR_PNPM_FETCH_404", "Held: npg-fresh (release-age gate until "],
        ],
    );
}

#[test]
fn yarn1_shows_why() {
    assert_shows(
        Client::Yarn1,
        [
            // yarn 1 prints the standard phrase of a tarball's status and never reads its body.
            &["npg-fixture-a-2.0.0.tgz: Request failed \"403 Forbidden\""],
            &["Couldn't find any versions for \"npg-fixture-a\" that matches \"2.0.0\""],
            // The body's `error`.
            &["npg-legacy is blocked by the blocklist (unmaintained). Use another package"],
            &["npg-fresh@1.0.0 is held by the release-age gate until "],
        ],
    );
}

#[test]
fn yarn4_shows_why() {
    assert_shows(
        Client::Yarn4,
        [
            &["Response Code: 403 (Blocked: npg-fixture-a@2.0.0 (compromised release))"],
            &["npg-fixture-a@npm:2.0.0: No candidates found"],
            &["Response Code: 403 (Blocked: npg-legacy (unmaintained))"],
            &["Response Code: 404 (Held: npg-fresh (release-age gate until "],
        ],
    );
}
