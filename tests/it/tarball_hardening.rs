//! Tarballs under attack and failure: a full disk never turns the integrity check off, a
//! tarball is judged by the version its packument gives it whatever its file name, concurrent
//! misses make one download that a client who stops reading cannot stall, and bytes with no
//! hash to check are not served.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support;
use crate::support::blob_registry::{BlobRegistry, blob, sri};
use crate::support::feed_server::FakeFeed;
use crate::support::noise;
use crate::support::npg::NpgProcess;

/// The status and, when it arrives whole, the body; `None` when it broke off.
async fn fetch(url: &str) -> (u16, Option<Vec<u8>>) {
    let resp = support::http::client().get(url).send().await.expect("npg answers");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.ok().map(|b| b.to_vec()))
}

/// A 2 MiB tmpfs, unmounted when dropped (needs root, as the cluster tests do).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "npg-test", dir.path().to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount a tmpfs: this test needs root (as .ci/run runs it)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes until the disk refuses.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).and_then(|_| f.flush()).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_never_turns_the_integrity_check_off() {
    let up = BlobRegistry::start();
    let good = noise(1 << 20, 1);
    let mut bad = blob("2.0.0", "big-2.0.0.tgz", noise(1 << 20, 2));
    bad.integrity = Some(sri(b"what was published"));
    up.set_package("big", vec![blob("1.0.0", "big-1.0.0.tgz", good.clone()), bad]);
    let disk = SmallDisk::mount();
    let storage = disk.path().join("storage");
    let npg = NpgProcess::start_with_storage(&up.url(), &[], storage.clone(), None);
    disk.fill();

    let (status, body) = fetch(&format!("{}/big/-/big-2.0.0.tgz", npg.proxy_url)).await;
    assert!(
        status != 200 || body.is_none(),
        "a tarball that does not match its integrity was sent whole ({status})"
    );
    // Several at once: those that joined a download whose temp file failed fetch their own.
    let url = format!("{}/big/-/big-1.0.0.tgz", npg.proxy_url);
    let clients = (0..4).map(|_| fetch(&url));
    for (status, body) in futures_util::future::join_all(clients).await {
        assert_eq!(status, 200);
        assert!(
            body.as_ref() == Some(&good),
            "a verified tarball is served on a full disk"
        );
    }
    let metrics = support::http::get(&format!("{}/metrics", npg.base), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("npg_tarball_store_errors_total ") && !l.ends_with(" 0")),
        "the failed writes are counted"
    );
    drop(npg);
}

fn cached(storage: &Path, name: &str, file: &str) -> PathBuf {
    storage.join(&name[..2]).join(name).join(file)
}

/// Polls until `url` answers `status`.
async fn wait_status(url: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(url).await.0 != status {
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `dist.tarball` may end in any file name: `bundle-1.0.0.tgz`, or a name that claims another
/// version. The packument says which version a file is; blocks and purges go by that.
#[tokio::test]
async fn a_tarball_is_judged_by_its_version_not_its_file_name() {
    let up = BlobRegistry::start();
    up.set_package(
        "odd",
        vec![
            blob("1.0.0", "bundle-1.0.0.tgz", noise(4096, 3)),
            blob("2.0.0", "odd-9.9.9.tgz", noise(4096, 4)),
            blob("3.0.0", "odd-3.0.0.tgz", noise(4096, 5)),
        ],
    );
    let (feed, lists) = (FakeFeed::start(), tempfile::tempdir().unwrap());
    feed.set_entries(json!([]));
    let npg = NpgProcess::start(
        &up.url(),
        &[
            ("MALWARE_FEED_URL", &feed.url()),
            ("MALWARE_LIST_DIR", lists.path().to_str().unwrap()),
            ("UPDATE_INTERVAL", "300ms"),
            ("ENABLE_SCHEDULED_UPDATES", "true"),
        ],
    );
    let url = |file: &str| format!("{}/odd/-/{file}", npg.proxy_url);
    for file in ["bundle-1.0.0.tgz", "odd-9.9.9.tgz", "odd-3.0.0.tgz"] {
        assert_eq!(fetch(&url(file)).await.0, 200, "{file}");
        assert!(cached(&npg.storage, "odd", file).is_file(), "{file} cached");
    }

    let entry = |v: &str| json!({"package_name": "odd", "version": v, "reason": "MALWARE"});
    feed.set_entries(json!([entry("1.0.0"), entry("2.0.0")]));
    wait_status(&url("bundle-1.0.0.tgz"), 403).await;
    assert_eq!(
        fetch(&url("odd-9.9.9.tgz")).await.0,
        403,
        "a name that claims another version"
    );
    for file in ["bundle-1.0.0.tgz", "odd-9.9.9.tgz"] {
        assert!(!cached(&npg.storage, "odd", file).exists(), "{file} was not purged");
    }
    assert_eq!(fetch(&url("odd-3.0.0.tgz")).await.0, 200);
    assert!(cached(&npg.storage, "odd", "odd-3.0.0.tgz").is_file());
}

#[tokio::test]
async fn concurrent_misses_make_one_download() {
    let up = BlobRegistry::start();
    let bytes = noise(2 << 20, 6);
    up.set_package("busy", vec![blob("1.0.0", "busy-1.0.0.tgz", bytes.clone())]);
    up.set_pause(Duration::from_millis(50));
    let npg = NpgProcess::start(&up.url(), &[]);
    let url = format!("{}/busy/-/busy-1.0.0.tgz", npg.proxy_url);
    let mut clients = Vec::new();
    for i in 0..20 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            // Some arrive while the download is under way.
            tokio::time::sleep(Duration::from_millis(i * 15)).await;
            fetch(&url).await
        }));
    }
    for client in clients {
        let (status, body) = client.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.as_deref() == Some(&bytes[..]), "a client got other bytes");
    }
    assert_eq!(up.tarball_hits("busy", "busy-1.0.0.tgz"), 1, "one download for all");
    let temp = std::fs::read_dir(npg.storage.join(".tmp")).unwrap().count();
    assert_eq!(temp, 0, "temp files left");
}

/// A client that asks and never reads holds its own connection, not the shared download.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_the_others() {
    let up = BlobRegistry::start();
    let bytes = noise(16 << 20, 7);
    up.set_package("wide", vec![blob("1.0.0", "wide-1.0.0.tgz", bytes.clone())]);
    up.set_pause(Duration::from_millis(2));
    let npg = NpgProcess::start(&up.url(), &[]);
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", npg.port)).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        b"GET /npm/wide/-/wide-1.0.0.tgz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, body) = fetch(&format!("{}/wide/-/wide-1.0.0.tgz", npg.proxy_url)).await;
    assert_eq!(status, 200);
    assert!(body.as_deref() == Some(&bytes[..]));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(up.tarball_hits("wide", "wide-1.0.0.tgz"), 1);
    drop(stalled);
}

#[tokio::test]
async fn bytes_without_a_hash_to_check_are_not_served() {
    let up = BlobRegistry::start();
    let mut unchecked = blob("1.0.0", "bare-1.0.0.tgz", noise(4096, 8));
    unchecked.integrity = None;
    up.set_package("bare", vec![unchecked]);
    let npg = NpgProcess::start(&up.url(), &[]);
    let reply = support::http::get(&format!("{}/bare/-/bare-1.0.0.tgz", npg.proxy_url), &[]).await;
    assert_eq!(reply.status.as_u16(), 502);
    assert_eq!(reply.json()["error"], "Unverifiable tarball");
    assert_eq!(up.tarball_hits("bare", "bare-1.0.0.tgz"), 0);
}

/// Made-up versions and file names of a cached package do not turn into upstream fetches: a
/// copy validated in the last seconds answers them.
#[tokio::test]
async fn made_up_names_do_not_amplify_into_upstream_fetches() {
    let up = support::upstream::FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[]);
    let base = format!("{}/npg-fixture-a", npg.proxy_url);
    assert_eq!(fetch(&base).await.0, 200);
    for i in 0..20 {
        assert_eq!(fetch(&format!("{base}/-/npg-fixture-a-9.{i}.0.tgz")).await.0, 404);
        assert_eq!(fetch(&format!("{base}/9.{i}.0")).await.0, 404);
    }
    let fetches = up.packument_requests("npg-fixture-a");
    assert!(fetches <= 3, "{fetches} packument fetches for 40 made-up names");
}

/// A large cached tarball goes to many clients at once from one shared copy, or, when the
/// memory for copies is spent (`TARBALL_MEMORY_MB=0`), in chunks read for each client: the
/// same bytes either way.
#[tokio::test]
async fn large_cached_tarballs_are_the_same_bytes_shared_or_streamed() {
    let up = BlobRegistry::start();
    let bytes = noise(3 << 20, 7);
    up.set_package("big", vec![blob("1.0.0", "big-1.0.0.tgz", bytes.clone())]);
    for memory in ["32", "0"] {
        let npg = NpgProcess::start(&up.url(), &[("TARBALL_MEMORY_MB", memory)]);
        let url = format!("{}/big/-/big-1.0.0.tgz", npg.proxy_url);
        assert_eq!(fetch(&url).await, (200, Some(bytes.clone())), "the miss");
        let clients = (0..8).map(|_| fetch(&url));
        for (status, body) in futures_util::future::join_all(clients).await {
            assert_eq!(status, 200);
            assert!(
                body.as_ref() == Some(&bytes),
                "TARBALL_MEMORY_MB={memory}: the bytes cached"
            );
        }
    }
}
