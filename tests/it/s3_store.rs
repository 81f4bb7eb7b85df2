//! Tarballs on S3-compatible object storage (`TARBALL_STORE=s3`) against a real S3 server
//! (moto): npm installs fill the bucket in the disk layout; a replica with an empty disk is
//! served from the bucket, then from its local cache; bad bytes never become an object; two
//! replicas filling one file end in one object; a malware purge deletes it; a bucket that dies
//! costs nothing but upstream fetches, and fills resume when it is back; the local cache stays
//! within its bound.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::support;
use crate::support::blob_registry::{Blob, BlobRegistry, blob, sri};
use crate::support::clients::{Client, Project};
use crate::support::feed_server::FakeFeed;
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::s3::S3Server;
use crate::support::upstream::{Failure, FakeRegistry};
use crate::support::{noise, wait_for};

/// The objects an install of the fixture project leaves, under `prefix`.
fn fixture_keys(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = [
        "@n/@npg-test/scoped/scoped-1.2.0.tgz",
        "np/npg-fixture-a/npg-fixture-a-2.0.0.tgz",
        "np/npg-fixture-b/npg-fixture-b-1.0.1.tgz",
        "np/npg-legacy/npg-legacy-1.0.0.tgz",
    ]
    .iter()
    .map(|k| format!("{prefix}{k}"))
    .collect();
    keys.sort();
    keys
}

fn start(up: &str, s3: &S3Server, prefix: &str, extra: &[(&str, &str)]) -> NpgProcess {
    let env = s3.npg_env(prefix);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    NpgProcess::start(up, &all)
}

async fn health(npg: &NpgProcess) -> Value {
    support::http::get(&format!("{}/api/health", npg.base), &[])
        .await
        .json()
}

async fn tarball_requests(up: &FakeRegistry) -> usize {
    ["npg-fixture-a", "npg-fixture-b", "@npg-test/scoped", "npg-legacy"]
        .iter()
        .map(|n| up.tarball_requests_any(n))
        .sum()
}

/// Waits until the bucket holds exactly `want` (a download's upload ends after its clients
/// were served), then checks it.
async fn keys_settle<S: AsRef<str>>(s3: &S3Server, want: &[S]) {
    let want: Vec<String> = want.iter().map(|k| k.as_ref().to_string()).collect();
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        while s3.keys().await != want {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    if settled.await.is_err() {
        assert_eq!(s3.keys().await, want, "the bucket's keys");
    }
}

/// An object once it is uploaded (within 10 s).
async fn uploaded(s3: &S3Server, key: &str) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s3.object(key).await {
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            found => return found,
        }
    }
}

/// Polls `ok` for up to `within`.
async fn eventually(what: &str, within: Duration, ok: impl AsyncFnMut() -> bool) {
    wait_for(within, what, ok).await;
}

#[tokio::test]
async fn npm_fills_the_bucket_and_a_second_replica_is_served_from_it() {
    let (up, s3) = (FakeRegistry::start(), S3Server::start().await);
    let first = start(&up.url(), &s3, "npg/", &[]);
    Project::fixture(Client::Npm, &first.proxy_url)
        .install()
        .assert_success();
    keys_settle(&s3, &fixture_keys("npg/")).await;
    let a = s3.object("npg/np/npg-fixture-a/npg-fixture-a-2.0.0.tgz").await.unwrap();
    assert_eq!(a, up.tarball_bytes("npg-fixture-a", "2.0.0"));
    let local = first.storage.join("np/npg-fixture-a/npg-fixture-a-2.0.0.tgz");
    eventually("kept in the local cache", Duration::from_secs(10), async || {
        local.is_file()
    })
    .await;
    let fills = tarball_requests(&up).await;
    assert_eq!(fills, 4);

    // Another host: empty disk, same bucket. Every tarball comes from the bucket.
    let env = s3.npg_env("npg/");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let disk = tempfile::tempdir().unwrap();
    let second = NpgProcess::start_with_storage(&up.url(), &env, disk.path().to_path_buf(), None);
    Project::fixture(Client::Npm, &second.proxy_url)
        .install()
        .assert_success();
    assert_eq!(
        tarball_requests(&up).await,
        fills,
        "upstream saw no new tarball request"
    );
    assert_eq!(
        second
            .metric("npg_cache_lookups_total{tier=\"bucket\",result=\"hit\"}")
            .await,
        4.0
    );
    let h = health(&second).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["tarball_store"], json!({"kind": "s3", "bucket": "up"}));
    let local = second.storage.join("@n/@npg-test/scoped/scoped-1.2.0.tgz");
    assert_eq!(
        std::fs::read(&local).unwrap(),
        up.tarball_bytes("@npg-test/scoped", "1.2.0"),
        "kept locally"
    );

    // Hits from the local cache: with the bucket gone and memory empty (a restart), the disk
    // serves them.
    drop(second);
    let mut s3 = s3;
    s3.stop();
    let third = NpgProcess::start_with_storage(&up.url(), &env, disk.path().to_path_buf(), None);
    let url = format!("{}/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", third.proxy_url);
    let got = support::http::get(&url, &[]).await;
    assert_eq!((got.status.as_u16(), got.header("x-cache")), (200, "HIT"));
    assert_eq!(got.body, up.tarball_bytes("npg-fixture-a", "2.0.0"));
    assert_eq!(
        third
            .metric("npg_cache_lookups_total{tier=\"local\",result=\"hit\"}")
            .await,
        1.0
    );
    assert_eq!(tarball_requests(&up).await, fills);
}

#[tokio::test]
async fn large_tarballs_go_in_parts_and_stream_back() {
    let (up, s3) = (BlobRegistry::start(), S3Server::start().await);
    // Past the single-put limit (16 MiB): a multipart upload; and one just past what is read whole.
    let (big, medium) = (noise(20 << 20, 1), noise(300 << 10, 2));
    up.set_package(
        "big",
        vec![
            blob("1.0.0", "big-1.0.0.tgz", &big),
            blob("1.0.1", "big-1.0.1.tgz", &medium),
        ],
    );
    let first = start(&up.url(), &s3, "", &[]);
    for (file, bytes) in [("big-1.0.0.tgz", &big), ("big-1.0.1.tgz", &medium)] {
        let got = support::http::get(&format!("{}/big/-/{file}", first.proxy_url), &[]).await;
        assert_eq!(got.body.len(), bytes.len());
        assert_eq!(
            uploaded(&s3, &format!("bi/big/{file}")).await.as_ref(),
            Some(bytes),
            "{file}"
        );
    }
    // Streamed from the bucket to a replica without a local cache, then with one.
    for local_mb in ["0", "64"] {
        let other = start(&up.url(), &s3, "", &[("TARBALL_LOCAL_CACHE_MB", local_mb)]);
        for (file, bytes) in [("big-1.0.0.tgz", &big), ("big-1.0.1.tgz", &medium)] {
            let got = support::http::get(&format!("{}/big/-/{file}", other.proxy_url), &[]).await;
            assert_eq!((got.status.as_u16(), got.header("x-cache")), (200, "HIT"));
            assert_eq!(got.header("content-length"), bytes.len().to_string());
            assert!(got.body == *bytes, "{file}: the bytes of the object");
            let kept = other.storage.join(format!("bi/big/{file}"));
            if local_mb == "0" {
                assert!(!kept.exists(), "no local cache: nothing on disk");
            } else {
                let on_disk = async || std::fs::read(&kept).is_ok_and(|b| b == *bytes);
                eventually("written to the local cache", Duration::from_secs(5), on_disk).await;
            }
        }
        assert_eq!(up.tarball_hits("big", "big-1.0.0.tgz"), 1);
    }
}

/// Someone with write access to the bucket swaps objects: npg serves neither forgery (the
/// small one is checked before a byte goes out, the large one streamed with its last chunk held
/// back), deletes both, and fills them anew from upstream.
#[tokio::test]
async fn a_forged_object_in_the_bucket_is_never_served() {
    let (up, s3) = (BlobRegistry::start(), S3Server::start().await);
    let (big, small) = (noise(2 << 20, 3), noise(20 << 10, 4));
    up.set_package(
        "swap",
        vec![
            blob("1.0.0", "swap-1.0.0.tgz", &big),
            blob("1.0.1", "swap-1.0.1.tgz", &small),
        ],
    );
    let files = [("swap-1.0.0.tgz", &big), ("swap-1.0.1.tgz", &small)];
    for (file, bytes) in files {
        let mut forged = bytes.clone();
        forged[bytes.len() / 2] ^= 0xff;
        s3.put_object(&format!("sw/swap/{file}"), forged).await;
    }
    let npg = start(&up.url(), &s3, "", &[("TARBALL_LOCAL_CACHE_MB", "64")]);
    for (file, bytes) in files {
        let url = format!("{}/swap/-/{file}", npg.proxy_url);
        let mut delivered = None;
        for _ in 0..2 {
            let sent = support::http::client().get(&url).send().await;
            let body = match sent {
                Ok(resp) => resp.bytes().await.ok(),
                Err(_) => None,
            };
            if let Some(body) = body.filter(|b| b.len() == bytes.len()) {
                delivered = Some(body);
                break;
            }
        }
        assert!(
            delivered.is_some_and(|b| b == **bytes),
            "{file}: the forged object was served"
        );
        let key = format!("sw/swap/{file}");
        let refilled = async || s3.object(&key).await.as_ref() == Some(bytes);
        eventually(
            "the object filled anew from upstream",
            Duration::from_secs(10),
            refilled,
        )
        .await;
        let kept = npg.storage.join(format!("sw/swap/{file}"));
        let local = async || std::fs::read(&kept).is_ok_and(|b| b == **bytes);
        eventually("the verified bytes in the local cache", Duration::from_secs(10), local).await;
        assert_eq!(up.tarball_hits("swap", file), 1, "{file}: fetched from upstream once");
    }
    let refused = npg
        .metric("npg_tarball_refused_total{reason=\"bucket_integrity\"}")
        .await;
    assert_eq!(refused, 2.0);
}

/// Upstream down and no packument anywhere (no Redis, a fresh replica): npg judges the
/// tarball by its file name, but has no hash to check the bucket's bytes against, so it does
/// not serve them (its own local cache is another matter: only npg writes it).
#[tokio::test]
async fn without_a_hash_the_bucket_is_not_read() {
    let (up, s3) = (FakeRegistry::start(), S3Server::start().await);
    let filler = start(&up.url(), &s3, "", &[]);
    let path = "npg-fixture-a/-/npg-fixture-a-2.0.0.tgz";
    let filled = support::http::get(&format!("{}/{path}", filler.proxy_url), &[]).await;
    assert_eq!(filled.status.as_u16(), 200);
    assert!(
        uploaded(&s3, "np/npg-fixture-a/npg-fixture-a-2.0.0.tgz")
            .await
            .is_some()
    );
    up.set_failure(Failure::Status(503));
    let fresh = start(&up.url(), &s3, "", &[]);
    let got = support::http::get(&format!("{}/{path}", fresh.proxy_url), &[]).await;
    assert_ne!(
        got.status.as_u16(),
        200,
        "bucket bytes served with nothing to check them against"
    );
    // The replica that filled it serves it from its local cache.
    let local = support::http::get(&format!("{}/{path}", filler.proxy_url), &[]).await;
    assert_eq!(local.status.as_u16(), 200);
}

#[tokio::test]
async fn a_tarball_that_fails_its_integrity_never_becomes_an_object() {
    let (up, s3) = (FakeRegistry::start(), S3Server::start().await);
    let npg = start(&up.url(), &s3, "", &[]);
    let url = format!("{}/npg-corrupt/-/npg-corrupt-1.0.0.tgz", npg.proxy_url);
    let sent = support::http::client().get(&url).send().await;
    let whole = match sent {
        Ok(resp) => resp
            .bytes()
            .await
            .is_ok_and(|b| b == up.tarball_bytes("npg-corrupt", "1.0.0")),
        Err(_) => false,
    };
    assert!(!whole, "a corrupt tarball was delivered whole");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s3.keys().await, Vec::<String>::new());
    assert!(!npg.storage.join("np/npg-corrupt").exists());
    // The same server takes a good one: the bucket was reachable all along.
    let good = format!("{}/npg-legacy/-/npg-legacy-1.0.0.tgz", npg.proxy_url);
    assert_eq!(support::http::get(&good, &[]).await.status, 200);
    keys_settle(&s3, &["np/npg-legacy/npg-legacy-1.0.0.tgz"]).await;
}

#[tokio::test]
async fn two_replicas_filling_one_file_end_in_one_object() {
    let (up, s3) = (BlobRegistry::start(), S3Server::start().await);
    let bytes = noise(200 << 10, 3);
    let blob = Blob {
        version: "1.0.0",
        file: "twice-1.0.0.tgz",
        bytes: bytes.clone(),
        integrity: Some(sri(&bytes)),
    };
    up.set_package("twice", vec![blob]);
    // Chunks paused so both downloads run at once and both upload.
    up.set_pause(Duration::from_millis(100));
    let (a, b) = (start(&up.url(), &s3, "", &[]), start(&up.url(), &s3, "", &[]));
    let (ua, ub) = (
        format!("{}/twice/-/twice-1.0.0.tgz", a.proxy_url),
        format!("{}/twice/-/twice-1.0.0.tgz", b.proxy_url),
    );
    let (ra, rb) = tokio::join!(support::http::get(&ua, &[]), support::http::get(&ub, &[]));
    assert_eq!(
        (ra.header("x-cache"), rb.header("x-cache")),
        ("MISS", "MISS"),
        "both filled"
    );
    assert!(ra.body == bytes && rb.body == bytes, "both clients get the right bytes");
    assert_eq!(up.tarball_hits("twice", "twice-1.0.0.tgz"), 2);
    keys_settle(&s3, &["tw/twice/twice-1.0.0.tgz"]).await;
    assert!(s3.object("tw/twice/twice-1.0.0.tgz").await.unwrap() == bytes);
    for npg in [&a, &b] {
        assert_eq!(
            npg.metric("npg_tarball_bucket_errors_total").await,
            0.0,
            "the second put is no error"
        );
    }

    // The server refuses the second put (put-if-absent), so one upload wins whole.
    use object_store::{ObjectStore, PutMode, PutOptions};
    let key = object_store::path::Path::from("tw/twice/twice-1.0.0.tgz");
    let again = s3
        .client()
        .put_opts(&key, b"other".to_vec().into(), PutOptions::from(PutMode::Create))
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_malware_purge_deletes_the_object() {
    let (up, s3, feed, dir) = (
        FakeRegistry::start(),
        S3Server::start().await,
        FakeFeed::start(),
        tempfile::tempdir().unwrap(),
    );
    feed.set_entries(json!([]));
    let (feed_url, list_dir) = (feed.url(), dir.path().to_str().unwrap().to_string());
    let settings = [
        ("MALWARE_FEED_URL", feed_url.as_str()),
        ("MALWARE_LIST_DIR", list_dir.as_str()),
        ("UPDATE_INTERVAL", "300ms"),
        ("ENABLE_SCHEDULED_UPDATES", "true"),
    ];
    let npg = start(&up.url(), &s3, "", &settings);
    for file in ["npg-fixture-b-1.0.0.tgz", "npg-fixture-b-1.0.1.tgz"] {
        let url = format!("{}/npg-fixture-b/-/{file}", npg.proxy_url);
        assert_eq!(support::http::get(&url, &[]).await.status, 200);
    }
    let keys = [
        "np/npg-fixture-b/npg-fixture-b-1.0.0.tgz",
        "np/npg-fixture-b/npg-fixture-b-1.0.1.tgz",
    ];
    keys_settle(&s3, &keys).await;

    feed.set_entries(json!([{"package_name": "npg-fixture-b", "version": "1.0.1", "reason": "MALWARE"}]));
    let gone = async || s3.keys().await == keys[..1];
    eventually("the listed version's object deleted", Duration::from_secs(10), gone).await;
    assert!(!npg.storage.join(keys[1]).exists(), "and its local copy");
    assert!(npg.storage.join(keys[0]).exists());
}

#[tokio::test]
async fn a_dead_bucket_costs_upstream_fetches_only_and_fills_resume_when_it_is_back() {
    let (up, mut s3) = (FakeRegistry::start(), S3Server::start().await);
    let npg = start(&up.url(), &s3, "", &[("TARBALL_LOCAL_CACHE_MB", "0")]);
    s3.stop();
    let project = Project::fixture(Client::Npm, &npg.proxy_url);
    let started = Instant::now();
    project.install().assert_success();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(tarball_requests(&up).await, 4, "served from upstream");
    let h = health(&npg).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["tarball_store"], json!({"kind": "s3", "bucket": "down"}));
    assert!(npg.metric("npg_tarball_bucket_errors_total").await >= 1.0);
    // Kept in memory meanwhile (no local cache): the same tarball again costs nothing.
    let url = format!("{}/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", npg.proxy_url);
    assert_eq!(support::http::get(&url, &[]).await.status, 200);

    s3.restart().await;
    let back = async || health(&npg).await["tarball_store"]["bucket"] == "up";
    eventually("the probe sees the bucket back", Duration::from_secs(10), back).await;
    assert_eq!(health(&npg).await["status"], "ok");
    let url = format!("{}/npg-fixture-a/-/npg-fixture-a-1.1.0.tgz", npg.proxy_url);
    assert_eq!(support::http::get(&url, &[]).await.status, 200);
    // Fills go to the bucket again.
    keys_settle(&s3, &["np/npg-fixture-a/npg-fixture-a-1.1.0.tgz"]).await;
}

#[tokio::test]
async fn a_bucket_that_hangs_is_waited_for_one_deadline_at_most() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let up = FakeRegistry::start();
    let s3 = S3Server::start().await;
    let mut env = s3.npg_env("");
    env.retain(|(k, _)| k != "S3_ENDPOINT" && k != "S3_TIMEOUT");
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([("S3_ENDPOINT", endpoint.as_str()), ("S3_TIMEOUT", "1s")]);
    let npg = NpgProcess::start(&up.url(), &env);
    for version in ["1.0.0", "1.1.0", "2.0.0"] {
        let url = format!("{}/npg-fixture-a/-/npg-fixture-a-{version}.tgz", npg.proxy_url);
        let started = Instant::now();
        let got = support::http::get(&url, &[]).await;
        assert_eq!(got.body, up.tarball_bytes("npg-fixture-a", version));
        // The first waits for the read (1 s) and the upload is skipped: the bucket is down.
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{version}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(health(&npg).await["tarball_store"]["bucket"], "down");
    drop(silent);
}

#[tokio::test]
async fn the_local_cache_stays_within_its_bound() {
    let (up, s3) = (FakeRegistry::start(), S3Server::start().await);
    let storage = tempfile::tempdir().unwrap();
    // Old files filling the 1 MiB cache almost to the brim.
    let old = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..10 {
        let path = storage.path().join(format!("ol/old-{i}/old-{i}-1.0.0.tgz"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![0u8; 104_800]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(old + Duration::from_secs(i)).unwrap();
    }
    let env = s3.npg_env("");
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("TARBALL_LOCAL_CACHE_MB", "1"));
    let npg = NpgProcess::start_with_storage(&up.url(), &env, storage.path().to_path_buf(), None);
    assert_eq!(
        size(storage.path()),
        1_048_000,
        "under the bound at start: nothing swept"
    );
    Project::fixture(Client::Npm, &npg.proxy_url).install().assert_success();
    let bounded = async || size(storage.path()) <= 1 << 20;
    eventually("the local cache back within 1 MiB", Duration::from_secs(5), bounded).await;
    let total = size(storage.path());
    eprintln!("local cache: {total} bytes for a bound of {} bytes", 1 << 20);
    assert!(total <= (1 << 20) / 10 * 9, "swept down to 90%: {total}");
    assert!(
        storage
            .path()
            .join("np/npg-fixture-a/npg-fixture-a-2.0.0.tgz")
            .is_file(),
        "the newest files stay"
    );
    assert!(
        !storage.path().join("ol/old-0/old-0-1.0.0.tgz").exists(),
        "the least recently used went"
    );
    keys_settle(&s3, &fixture_keys("")).await;
}

/// Bytes of the tarballs under `root` (dot-directories are not the cache's).
fn size(root: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[tokio::test]
async fn npg_import_puts_the_tarballs_in_the_bucket() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = crate::bundle::key_pair(dir.path(), "site.key");
    let (up, _exporter, _lockfile, bundle) = crate::bundle::exported(dir.path(), &key);
    let storage = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_npg"))
        .env_clear()
        .envs(s3.npg_env("site/"))
        .args(["import", bundle.to_str().unwrap(), "--key", public.to_str().unwrap()])
        .arg("--storage-dir")
        .arg(storage.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", crate::warm::text(&out));
    keys_settle(&s3, &fixture_keys("site/")).await;
    let a = s3
        .object("site/np/npg-fixture-a/npg-fixture-a-2.0.0.tgz")
        .await
        .unwrap();
    assert_eq!(a, up.tarball_bytes("npg-fixture-a", "2.0.0"));
    assert!(
        !storage.path().join("np").exists(),
        "the tarballs went to the bucket, not the disk"
    );
}

#[test]
fn check_config_reports_a_bad_bucket_setting_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let check = |env: &[(&str, &str)]| {
        let mut cmd = NpgProcess::command(
            "http://127.0.0.1:9/r/",
            support::loopback(9),
            &dir.path().join("storage"),
        );
        cmd.arg("check-config").envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let said = [out.stdout, out.stderr].concat();
        (out.status.code(), String::from_utf8_lossy(&said).into_owned())
    };
    let keys = [
        ("AWS_ACCESS_KEY_ID", "AKIDSECRET"),
        ("AWS_SECRET_ACCESS_KEY", "hunter2"),
    ];
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        ("S3_BUCKET", [&[("TARBALL_STORE", "s3")][..], &keys].concat()),
        (
            "S3_CREDENTIALS_FILE",
            vec![
                ("TARBALL_STORE", "s3"),
                ("S3_BUCKET", "npg"),
                ("S3_CREDENTIALS_FILE", "/nonexistent/creds"),
            ],
        ),
        ("AWS_ACCESS_KEY_ID", vec![("TARBALL_STORE", "s3"), ("S3_BUCKET", "npg")]),
    ];
    for (setting, env) in cases {
        let (code, err) = check(&env);
        assert_eq!(code, Some(2), "{setting}: {err}");
        assert!(err.contains(setting), "{setting}: {err}");
        assert!(!err.contains("hunter2") && !err.contains("AKIDSECRET"), "{err}");
    }
    let good = [&[("TARBALL_STORE", "s3"), ("S3_BUCKET", "npg")][..], &keys].concat();
    let (code, err) = check(&good);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("hunter2") && !err.contains("AKIDSECRET"), "{err}");
}

#[tokio::test]
async fn a_cluster_on_one_bucket_fetches_each_file_from_upstream_once() {
    let (up, s3, redis) = (BlobRegistry::start(), S3Server::start().await, RedisServer::start());
    let bytes = noise(300 << 10, 4);
    let blob = Blob {
        version: "1.0.0",
        file: "shared-1.0.0.tgz",
        bytes: bytes.clone(),
        integrity: Some(sri(&bytes)),
    };
    up.set_package("shared", vec![blob]);
    // 64 KiB chunks 100 ms apart: every replica's miss comes while the first download runs.
    up.set_pause(Duration::from_millis(100));
    let url = redis.url();
    let cluster = [("REDIS_URL", url.as_str()), ("ENABLE_REDIS_CACHE", "true")];
    let replicas: Vec<NpgProcess> = (0..3).map(|_| start(&up.url(), &s3, "", &cluster)).collect();
    let gets = replicas.iter().flat_map(|npg| {
        let url = format!("{}/shared/-/shared-1.0.0.tgz", npg.proxy_url);
        [0, 1].map(move |_| {
            let url = url.clone();
            async move { support::http::get(&url, &[]).await }
        })
    });
    let replies = futures_util::future::join_all(gets).await;
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert!(reply.body == bytes, "every client gets the right bytes");
    }
    assert_eq!(
        up.tarball_hits("shared", "shared-1.0.0.tgz"),
        1,
        "one upstream fetch for the cluster"
    );
    keys_settle(&s3, &["sh/shared/shared-1.0.0.tgz"]).await;
    let mut followed = 0.0;
    for npg in &replicas {
        followed += npg.metric("npg_tarball_downloads_total{role=\"follow\"}").await;
    }
    assert!(followed >= 2.0, "the other replicas waited for the object: {followed}");
}

/// A client has the whole verified tarball without waiting for its upload to the bucket: here
/// the bucket hangs once the download began, and the upload waits out S3_TIMEOUT (2 s).
#[tokio::test]
async fn a_download_does_not_wait_for_its_upload() {
    let (up, s3) = (BlobRegistry::start(), S3Server::start().await);
    let bytes = noise(1 << 20, 11);
    up.set_package("slowly", vec![blob("1.0.0", "slowly-1.0.0.tgz", &bytes)]);
    up.set_pause(Duration::from_millis(30));
    let npg = start(&up.url(), &s3, "npg/", &[]);
    let url = format!("{}/slowly/-/slowly-1.0.0.tgz", npg.proxy_url);
    let started = Instant::now();
    let fetch = tokio::spawn(async move { support::http::get(&url, &[]).await });
    wait_for(Duration::from_secs(10), "the download from upstream", async || {
        up.tarball_hits("slowly", "slowly-1.0.0.tgz") > 0
    })
    .await;
    s3.signal("STOP");
    let reply = fetch.await.unwrap();
    let took = started.elapsed();
    s3.signal("CONT");
    assert_eq!(reply.status, 200);
    assert!(reply.body == bytes, "the verified bytes");
    assert!(
        took < Duration::from_millis(1800),
        "the client waited for the upload: {took:?}"
    );
}

/// An upload still running when npg is told to stop is finished before it exits: what was
/// fetched lands in the bucket (a 24 MB upload to moto outlasts an exit that does not wait).
#[tokio::test]
async fn a_stopping_npg_finishes_its_uploads() {
    let (up, s3) = (BlobRegistry::start(), S3Server::start().await);
    let bytes = noise(24 << 20, 12);
    up.set_package("last", vec![blob("1.0.0", "last-1.0.0.tgz", &bytes)]);
    let mut npg = start(&up.url(), &s3, "", &[]);
    let url = format!("{}/last/-/last-1.0.0.tgz", npg.proxy_url);
    assert!(support::http::get(&url, &[]).await.body == bytes);
    npg.signal("TERM");
    assert!(npg.wait_exit(Duration::from_secs(20)).is_some(), "npg exits");
    assert!(
        s3.object("la/last/last-1.0.0.tgz").await == Some(bytes),
        "the upload was finished"
    );
}
