//! A cold tarball miss asks upstream for the tarball while the packument is on its way (one
//! round trip, not two), and what that early answer carries reaches a client only as any
//! download does: after the guard judged the version by its packument, from the URL the
//! packument gives, checked against `dist.integrity`.

use std::time::{Duration, Instant};

use crate::support::blob_registry::{BlobRegistry, blob, sri};
use crate::support::npg::NpgProcess;
use crate::support::{self, tls};

/// How long upstream holds a packument for a tarball request: a proxy that asks for the
/// tarball only after the packument waits this long.
const HOLD: Duration = Duration::from_secs(3);

const USED: &str = "npg_tarball_early_requests_total{result=\"used\"}";
const UNUSED: &str = "npg_tarball_early_requests_total{result=\"unused\"}";

async fn fetch(npg: &NpgProcess, name: &str, file: &str) -> support::http::Reply {
    support::http::get(&format!("{}/{name}/-/{file}", npg.proxy_url), &[]).await
}

#[tokio::test]
async fn a_cold_miss_asks_for_the_tarball_while_its_packument_is_on_its_way() {
    let up = BlobRegistry::start();
    up.use_npm_layout();
    let (one, fleet) = (support::noise(300_000, 1), support::noise(200_000, 2));
    up.set_package("one", vec![blob("1.0.0", "one-1.0.0.tgz", &one)]);
    up.set_package("fleet", vec![blob("1.0.0", "fleet-1.0.0.tgz", &fleet)]);
    up.hold_packuments(HOLD);
    let npg = NpgProcess::start(&up.url(), &[]);

    let started = Instant::now();
    let reply = fetch(&npg, "one", "one-1.0.0.tgz").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200);
    assert!(reply.body == one, "the bytes upstream serves");
    assert!(
        took < HOLD - Duration::from_millis(500),
        "took {took:?}: the tarball was asked only after the packument"
    );
    assert_eq!(up.tarball_hits("one", "one-1.0.0.tgz"), 1);
    assert_eq!(npg.metric(USED).await, 1.0);
    // A hit asks nobody.
    assert!(fetch(&npg, "one", "one-1.0.0.tgz").await.body == one);
    assert_eq!(up.tarball_hits("one", "one-1.0.0.tgz"), 1);

    // Eight clients at once on a cold package: one early request, one download, no waste.
    let started = Instant::now();
    let clients = (0..8).map(|_| fetch(&npg, "fleet", "fleet-1.0.0.tgz"));
    for reply in futures_util::future::join_all(clients).await {
        assert_eq!(reply.status, 200);
        assert!(reply.body == fleet);
    }
    assert!(
        started.elapsed() < HOLD - Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.tarball_hits("fleet", "fleet-1.0.0.tgz"), 1, "{:?}", up.asked());
    assert_eq!(npg.metric(USED).await, 2.0);
    assert_eq!(npg.metric(UNUSED).await, 0.0);
}

#[tokio::test]
async fn an_early_answer_reaches_clients_only_through_the_guard_and_the_integrity_check() {
    let up = BlobRegistry::start();
    // Tarballs elsewhere than npm's layout, with other bytes planted where it would put them.
    let (genuine, decoy) = (support::noise(100_000, 3), support::noise(100_000, 4));
    up.set_package("moved", vec![blob("1.0.0", "moved-1.0.0.tgz", &genuine)]);
    up.put_file("/registry/moved/-/moved-1.0.0.tgz", decoy.clone());
    up.use_npm_layout();
    let bent = support::noise(100_000, 5);
    let mut bent_blob = blob("1.0.0", "bent-1.0.0.tgz", &bent);
    bent_blob.integrity = Some(sri(b"other bytes"));
    up.set_package("bent", vec![bent_blob]);
    let listed = support::noise(1000, 6);
    up.set_package("listed", vec![blob("1.0.0", "listed-1.0.0.tgz", &listed)]);
    let plain = support::noise(1000, 7);
    up.set_package("plain", vec![blob("1.0.0", "plain-1.0.0.tgz", &plain)]);
    up.set_published(&humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
    let fresh = support::noise(1000, 8);
    up.set_package("fresh", vec![blob("1.0.0", "fresh-1.0.0.tgz", &fresh)]);
    up.hold_packuments(Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let blocklist = "packages:\n  - name: listed\n    versions: ['1.0.0']\n    reason: compromised\n";
    let blocklist = tls::write_file(dir.path(), "blacklist.yml", blocklist);
    let env = [
        ("BLACKLIST_PATH", blocklist.to_str().unwrap()),
        ("MIN_RELEASE_AGE", "3d"),
        ("MIN_RELEASE_AGE_EXCLUDE", "moved,bent,listed,plain"),
    ];
    let npg = NpgProcess::start(&up.url(), &env);

    // Held back by the release age, which only the packument tells: asked early, never served.
    let reply = fetch(&npg, "fresh", "fresh-1.0.0.tgz").await;
    assert_eq!(reply.status, 403, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(up.tarball_hits("fresh", "fresh-1.0.0.tgz"), 1, "asked early");
    assert!(!stored(&npg, "fresh", "fresh-1.0.0.tgz"));
    assert_eq!(npg.metric(UNUSED).await, 1.0);

    // Blocked by the version's name: not even asked.
    let reply = fetch(&npg, "listed", "listed-1.0.0.tgz").await;
    assert_eq!(reply.status, 403);
    assert_eq!(up.tarball_hits("listed", "listed-1.0.0.tgz"), 0, "{:?}", up.asked());

    // Bytes that do not match the integrity: no client gets them whole, nothing is kept.
    let reply = fetch(&npg, "bent", "bent-1.0.0.tgz").await;
    assert!(
        reply.status != 200 || reply.body != bent,
        "a bad tarball was served whole"
    );
    assert!(!stored(&npg, "bent", "bent-1.0.0.tgz"));
    assert_eq!(npg.metric(USED).await, 1.0, "the early answer went through the check");

    // The packument puts the tarball elsewhere: the early answer (the decoy) is dropped.
    let reply = fetch(&npg, "moved", "moved-1.0.0.tgz").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == genuine, "served the bytes where the packument says");
    assert_eq!(up.hits("/files/moved/-/moved-1.0.0.tgz"), 1);
    assert_eq!(up.hits("/registry/moved/-/moved-1.0.0.tgz"), 1, "asked early");
    assert_eq!(npg.metric(UNUSED).await, 2.0);
    // An upstream that put the last tarball elsewhere is not asked early again...
    let started = Instant::now();
    assert!(fetch(&npg, "plain", "plain-1.0.0.tgz").await.body == plain);
    assert!(started.elapsed() >= Duration::from_secs(1), "asked early after all");
    assert_eq!(npg.metric(USED).await + npg.metric(UNUSED).await, 3.0);
}

/// Whether npg keeps `file` of `name` in its storage dir.
fn stored(npg: &NpgProcess, name: &str, file: &str) -> bool {
    walk(&npg.storage).iter().any(|p| p.ends_with(format!("{name}/{file}")))
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        match path.is_dir() {
            true => found.extend(walk(&path)),
            false => found.push(path),
        }
    }
    found
}
