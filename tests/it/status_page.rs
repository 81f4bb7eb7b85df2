//! The operators' views against three replicas sharing a real Redis, each serving HTTPS with a
//! test CA's certificate: the status page rendered by Debian's headless Chromium (its DOM
//! checked, a screenshot kept in `target/artifacts/status-page.png`), its JSON, `npg status`
//! in the terminal, and who may see what (the admin token; private names).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::npg::{NpgProcess, hash_token as hash};
use crate::support::redis::RedisServer;
use crate::support::upstream::FakeRegistry;
use crate::support::{self, tls, wait_for};

const BLOCKLIST: &str =
    "packages:\n  - name: npg-legacy\n    reason: unmaintained\n  - name: \"@corp/secret\"\n    reason: retired\n";

struct Cluster {
    redis: RedisServer,
    _up: FakeRegistry,
    nodes: Vec<Node>,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

struct Node {
    _npg: NpgProcess,
    https: u16,
}

impl Node {
    fn https_base(&self) -> String {
        format!("https://127.0.0.1:{}", self.https)
    }
}

/// Three replicas (npg1..npg3) on one Redis and one fake upstream, HTTPS with a certificate
/// for `npg.test` and 127.0.0.1, the blocklist above, plus `env`.
fn cluster(env: &[(&str, &str)]) -> Cluster {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::TestCa::new("npg status test CA");
    let issued = ca.issue(&["npg.test", "127.0.0.1"]);
    let cert = tls::write_file(dir.path(), "cert.pem", &issued.cert_pem);
    let key = tls::write_file(dir.path(), "key.pem", &issued.key_pem);
    let ca_path = tls::write_file(dir.path(), "ca.pem", &ca.cert_pem);
    let blocklist = tls::write_file(dir.path(), "blacklist.yml", BLOCKLIST);
    let redis_url = redis.url();
    let nodes = (1..=3)
        .map(|i| {
            let https = support::free_port();
            let (name, https_port) = (format!("npg{i}"), https.to_string());
            let proxy_url = format!("https://npg.test:{https}/npm");
            let mut all = vec![
                ("INSTANCE_NAME", name.as_str()),
                ("REDIS_URL", redis_url.as_str()),
                ("ENABLE_REDIS_CACHE", "true"),
                ("BLACKLIST_PATH", blocklist.to_str().unwrap()),
                ("ENABLE_SCHEDULED_UPDATES", "false"),
                ("TLS_CERT_FILE", cert.to_str().unwrap()),
                ("TLS_KEY_FILE", key.to_str().unwrap()),
                ("HTTPS_PORT", https_port.as_str()),
                ("PROXY_URL", proxy_url.as_str()),
            ];
            all.extend_from_slice(env);
            Node {
                _npg: NpgProcess::start(&up.url(), &all),
                https,
            }
        })
        .collect();
    Cluster {
        redis,
        _up: up,
        nodes,
        ca: ca_path,
        dir,
    }
}

fn client(ca: &Path) -> reqwest::Client {
    tls::install_provider();
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

async fn expect(client: &reqwest::Client, url: &str, headers: &[(&str, &str)], status: u16) -> String {
    let (got, _, body) = get(client, url, headers).await;
    assert_eq!(got, status, "{url}: {body}");
    body
}

/// Headless Chromium from Debian on `url`, with every name but loopback's unresolvable and its
/// background services off (no traffic leaves the machine); `--dump-dom` or `--screenshot`.
fn chromium(url: &str, what: &[&str], profile: &Path) -> String {
    let binary = support::require_binary("chromium");
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--ignore-certificate-errors",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-pings",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1280,1500",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(what)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "chromium failed on {url}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `npg status` with `args`: exit code and stdout (a pipe: never a terminal).
fn npg_status(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_npg"))
        .arg("status")
        .args(args)
        .env_clear()
        .output()
        .expect("run npg status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
    )
}

fn replica<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == name)
        .unwrap_or_else(|| panic!("{name} missing in {report}"))
}

#[tokio::test]
async fn the_page_shows_the_cluster_in_a_real_browser_and_npg_status_in_the_terminal() {
    let c = cluster(&[]);
    let http = client(&c.ca);
    let (one, two) = (c.nodes[0].https_base(), c.nodes[1].https_base());
    // traffic on npg1: a packument and a tarball, twice each (hits), and a refusal
    for _ in 0..2 {
        expect(&http, &format!("{one}/npm/npg-fixture-a"), &[], 200).await;
        expect(
            &http,
            &format!("{one}/npm/npg-fixture-a/-/npg-fixture-a-1.0.0.tgz"),
            &[],
            200,
        )
        .await;
    }
    expect(&http, &format!("{one}/npm/npg-legacy"), &[], 403).await;
    expect(&http, &format!("{two}/npm/npg-fixture-b"), &[], 200).await;
    // a replica stopped two minutes ago, and an entry no replica wrote
    let old = serde_json::json!({
        "instance": "npg-old", "version": "0.0.9", "started_ms": 1, "status": "ok", "problems": [],
        "seen_ms": npg_now_ms() - 120_000, "requests_per_second": 0.0, "requests": 7,
    });
    c.redis.command(&["HSET", "npg:replicas", "npg-old", &old.to_string()]);
    c.redis.command(&["HSET", "npg:replicas", "npg-broken", "<not json>"]);

    let url = format!("{one}/api/status");
    let mut report = Value::Null;
    wait_for(Duration::from_secs(30), "npg1 sees every replica", async || {
        report = serde_json::from_str(&expect(&http, &url, &[], 200).await).unwrap();
        report["replicas"].as_array().unwrap().len() == 4
    })
    .await;
    for name in ["npg1", "npg2", "npg3"] {
        let r = replica(&report, name);
        assert_eq!(
            (r["status"].as_str(), r["gone"].as_bool()),
            (Some("ok"), Some(false)),
            "{report}"
        );
    }
    assert_eq!(replica(&report, "npg-old")["gone"], true, "{report}");
    assert!(
        c.redis
            .command(&["HEXISTS", "npg:replicas", "npg-broken"])
            .contains('0'),
        "unreadable entry kept"
    );
    assert!(report["traffic"]["requests"].as_u64().unwrap() >= 5, "{report}");
    let l1 = report["traffic"]["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "l1")
        .unwrap();
    assert!(l1["hits"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["guard"]["blocks"]["package"], 1, "{report}");
    assert_eq!(report["guard"]["last_block"]["package"], "npg-legacy", "{report}");
    assert_eq!(report["guard"]["blocklist_rules"], 2, "{report}");
    assert_eq!(report["tls"]["mode"], "static", "{report}");
    let certificate = &report["tls"]["certificates"][0];
    assert_eq!(certificate["not_after"], "4096-01-01T00:00:00Z", "{report}");
    assert_eq!(
        certificate["next_renewal"], "-",
        "static files are not renewed: {report}"
    );
    assert!(report["upstream"]["requests"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["upstream"]["breaker"], "closed", "{report}");

    // the page in a real browser: every section, with the numbers of the report
    let profile = c.dir.path().join("chromium");
    let dom = chromium(&format!("{one}/status"), &["--dump-dom"], &profile);
    for section in ["replicas", "traffic", "upstream", "guard", "certificates", "changes"] {
        assert!(
            dom.contains(&format!("id=\"{section}\"")),
            "section {section} missing:\n{dom}"
        );
    }
    for text in [
        "npg1",
        "npg2",
        "npg3",
        "npg-old",
        ">gone<",
        "npg-legacy",
        "blocked by the blocklist",
        "4096-01-01",
    ] {
        assert!(dom.contains(text), "{text} missing:\n{dom}");
    }
    assert!(dom.contains("<polyline"), "no chart drawn:\n{dom}");
    assert!(!dom.contains("no such route"), "{dom}");
    let artefacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = artefacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &format!("{one}/"),
        &[&format!("--screenshot={}", shot.display())],
        &profile,
    );
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "screenshot of {} bytes",
        png.len()
    );

    // the terminal: the whole cluster from any replica, plain in a pipe; 1 as one is gone
    let ca = c.ca.to_str().unwrap();
    let (code, out) = npg_status(&[&one, "--ca-file", ca]);
    assert_eq!(code, 1, "a gone replica is not healthy:\n{out}");
    assert!(out.contains("3 replicas up (Redis connected); seen from npg1"), "{out}");
    for line in [
        "npg2      ok",
        "npg3      ok",
        "npg-old   gone",
        "last block: npg-legacy",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    assert!(!out.contains('\x1b'), "colour codes in a pipe:\n{out}");
    let (_, json) = npg_status(&[&two, "--ca-file", ca, "--json"]);
    let parsed: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(parsed["replicas"].as_array().unwrap().len(), 4, "{parsed}");
    c.redis.command(&["HDEL", "npg:replicas", "npg-old"]);
    let (code, out) = npg_status(&[&one, "--ca-file", ca]);
    assert_eq!(code, 0, "{out}");
}

/// npg's clock, as the replicas write `seen_ms`.
fn npg_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn private_names_are_for_admins_and_the_page_asks_a_browser_for_the_token() {
    // access control off: anyone sees the page, but not the name of a package fetched with
    // credentials
    let up = FakeRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let blocklist = tls::write_file(dir.path(), "blacklist.yml", BLOCKLIST);
    let open = NpgProcess::start(&up.url(), &[("BLACKLIST_PATH", blocklist.to_str().unwrap())]);
    let http = support::http::client();
    let base = &open.base;
    expect(
        &http,
        &format!("{base}/npm/@corp/secret"),
        &[("authorization", "Bearer upstream-token")],
        403,
    )
    .await;
    let report: Value = serde_json::from_str(&expect(&http, &format!("{base}/api/status"), &[], 200).await).unwrap();
    let block = &report["guard"]["last_block"];
    assert_eq!(block["package"], "@corp/(private)", "{report}");
    assert!(!report.to_string().contains("secret\""), "{report}");
    let page = expect(&http, &format!("{base}/"), &[], 200).await;
    assert!(
        page.contains("@corp/(private)") && !page.contains("@corp/secret"),
        "{page}"
    );
    expect(&http, &format!("{base}/npm/npg-legacy"), &[], 403).await;
    let report: Value = serde_json::from_str(&expect(&http, &format!("{base}/api/status"), &[], 200).await).unwrap();
    assert_eq!(
        report["guard"]["last_block"]["package"], "npg-legacy",
        "a public name is shown: {report}"
    );

    // access control on: the admin token only, as Bearer or as a browser's Basic password
    let tokens = dir.path().join("tokens");
    let text = format!(
        "{} ci read\n{} ops admin\n",
        hash("read-token-1"),
        hash("admin-token-1")
    );
    std::fs::write(&tokens, text).unwrap();
    let guarded = NpgProcess::start(
        &up.url(),
        &[
            ("BLACKLIST_PATH", blocklist.to_str().unwrap()),
            ("AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ],
    );
    let base = &guarded.base;
    expect(
        &http,
        &format!("{base}/npm/@corp/secret"),
        &[("authorization", "Bearer read-token-1")],
        403,
    )
    .await;
    for path in ["/", "/status"] {
        let (status, headers, body) = get(&http, &format!("{base}{path}"), &[]).await;
        assert_eq!(status, 401, "{body}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Basic realm="),
            "a browser must be asked: {challenge}"
        );
        assert!(!body.contains("npg1") && !body.contains("@corp"), "{body}");
        expect(
            &http,
            &format!("{base}{path}"),
            &[("authorization", "Bearer read-token-1")],
            403,
        )
        .await;
    }
    expect(&http, &format!("{base}/api/status"), &[], 401).await;
    // "ops:admin-token-1", as a browser sends it
    let basic = "Basic b3BzOmFkbWluLXRva2VuLTE=";
    let (status, headers, page) = get(&http, &format!("{base}/status"), &[("authorization", basic)]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("@corp/secret"), "an admin sees the name: {page}");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    let report = expect(
        &http,
        &format!("{base}/api/status"),
        &[("authorization", "Bearer admin-token-1")],
        200,
    )
    .await;
    assert!(report.contains("@corp/secret"), "{report}");
    let (code, out) = npg_status(&[base, "--token", "read-token-1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 403"), "{out}");
    let (code, out) = npg_status(&[base]);
    assert!(code == 1 && out.contains("give an admin token"), "{out}");
    let (code, out) = npg_status(&[base, "--token", "admin-token-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("last block: @corp/secret"), "{out}");
}
