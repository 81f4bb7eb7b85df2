//! A sick upstream never stalls an install, and misses are remembered.
//!
//! - npm and pnpm install 60 packages whose cached packuments have expired while the upstream
//!   accepts connections and never answers: stale copies are served after a short grace
//!   (stale-while-revalidate), so the install takes about as long as with a healthy upstream.
//!   The breaker then holds upstream as down: health says `degraded`, misses get 503 at once,
//!   and everything recovers on its own when upstream answers again.
//! - The breaker is shared by the cluster (Redis): a replica that never asked knows.
//! - Unknown packages, and refreshes for unknown versions, cost one upstream fetch per
//!   METADATA_MISS_TTL for the whole cluster; a publish through npg forgets the miss.

use std::time::{Duration, Instant};

use crate::support::clients::{Client, Project};
use crate::support::http::{get, send};
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::upstream::{Failure, FakeRegistry};

const PACKAGES: usize = 60;

fn dependencies() -> Vec<(String, String)> {
    (0..PACKAGES)
        .map(|i| (format!("sick-{i:02}"), "^1.0.0".to_string()))
        .collect()
}

fn install(client: Client, npg: &NpgProcess, deps: &[(String, String)]) -> Duration {
    let deps: Vec<(&str, &str)> = deps.iter().map(|(n, r)| (n.as_str(), r.as_str())).collect();
    let out = Project::new(client, &npg.proxy_url, &deps).install();
    out.assert_success();
    out.elapsed
}

async fn health(npg: &NpgProcess) -> serde_json::Value {
    get(&format!("{}/api/health", npg.base), &[]).await.json()
}

/// Polls until `check` holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sick_install(client: Client) -> (FakeRegistry, NpgProcess) {
    let up = FakeRegistry::start();
    let deps = dependencies();
    for (name, _) in &deps {
        up.add_package(name, &["1.0.0"]);
    }
    let npg = NpgProcess::start(&up.url(), &[("METADATA_TTL", "2s"), ("UPSTREAM_TIMEOUT", "3s")]);
    install(client, &npg, &deps);
    // Every packument expired; upstream healthy: each one is revalidated.
    std::thread::sleep(Duration::from_millis(2500));
    let warm = install(client, &npg, &deps);
    up.set_failure(Failure::Hang);
    std::thread::sleep(Duration::from_millis(2500));
    let sick = install(client, &npg, &deps);
    eprintln!(
        "{}: {PACKAGES} packages, expired metadata: healthy upstream {warm:?}, hanging upstream {sick:?}",
        client.name()
    );
    assert!(
        sick <= warm * 2,
        "{}: a hanging upstream stalled the install: {sick:?} against {warm:?} when healthy",
        client.name()
    );
    (up, npg)
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_install_does_not_stall_on_a_hanging_upstream_and_recovers() {
    let (up, npg) = tokio::task::spawn_blocking(|| sick_install(Client::Npm)).await.unwrap();

    eventually(Duration::from_secs(15), "health says degraded", async || {
        health(&npg).await["status"] == "degraded"
    })
    .await;
    let h = health(&npg).await;
    assert_eq!(h["upstream"]["breaker"]["state"], "open", "{h}");
    assert!(h["problems"][0].as_str().unwrap().contains("upstream is down"), "{h}");

    // Down: a miss fails at once, with a clear body and when to come back.
    let started = Instant::now();
    let miss = get(&format!("{}/never-cached", npg.proxy_url), &[]).await;
    assert_eq!(miss.status, 503, "{}", String::from_utf8_lossy(&miss.body));
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(miss.json()["error"], "Upstream unavailable");
    assert!(miss.header("retry-after").parse::<u64>().unwrap() >= 1);
    let metrics = String::from_utf8(get(&format!("{}/metrics", npg.base), &[]).await.body).unwrap();
    assert!(metrics.contains("npg_upstream_breaker_state 1"), "{metrics}");
    assert!(
        metrics.contains("npg_stale_served_total{why=\"revalidating\"}"),
        "{metrics}"
    );

    // Upstream is back: the next probe closes the breaker, new packages are found.
    up.set_failure(Failure::None);
    up.add_package("sick-new", &["1.0.0"]);
    eventually(Duration::from_secs(60), "a miss is served again", async || {
        get(&format!("{}/sick-new", npg.proxy_url), &[]).await.status == 200
    })
    .await;
    assert_eq!(health(&npg).await["status"], "ok");
}

#[test]
fn pnpm_install_does_not_stall_on_a_hanging_upstream() {
    sick_install(Client::Pnpm);
}

#[tokio::test]
async fn the_breaker_and_misses_are_shared_by_the_cluster() {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let url = redis.url();
    let env = |name| {
        [
            ("ENABLE_REDIS_CACHE", "true"),
            ("REDIS_URL", url.as_str()),
            ("INSTANCE_NAME", name),
            ("UPSTREAM_TIMEOUT", "1s"),
        ]
    };
    let a = NpgProcess::start(&up.url(), &env("a"));
    let b = NpgProcess::start(&up.url(), &env("b"));
    eventually(Duration::from_secs(10), "both replicas see Redis", async || {
        health(&a).await["redis"] == "connected" && health(&b).await["redis"] == "connected"
    })
    .await;

    // An unknown package: one upstream fetch for the cluster.
    for npg in [&a, &a, &a, &b, &b] {
        assert_eq!(
            get(&format!("{}/no-such-package", npg.proxy_url), &[]).await.status,
            404
        );
    }
    assert_eq!(up.packument_requests("no-such-package"), 1);
    // Unknown versions: one refresh for the cluster per METADATA_MISS_TTL, even spaced
    // beyond the 2 s a replica keeps from asking again anyway.
    assert_eq!(get(&format!("{}/npg-fixture-b", a.proxy_url), &[]).await.status, 200);
    for (i, npg) in [&a, &b, &a].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let r = get(&format!("{}/npg-fixture-b/99.0.{i}", npg.proxy_url), &[]).await;
        assert_eq!(r.status, 404);
    }
    assert_eq!(
        up.packument_requests("npg-fixture-b"),
        2,
        "the first fetch and one refresh"
    );

    // A publish through npg forgets what was remembered.
    up.publish("no-such-package", "1.0.0");
    let put = send(
        reqwest::Method::PUT,
        &format!("{}/no-such-package", b.proxy_url),
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(put.status, 201);
    assert_eq!(get(&format!("{}/no-such-package", a.proxy_url), &[]).await.status, 200);

    // Upstream hangs: a trips its breaker after three timeouts; b, which never asked, knows.
    up.set_failure(Failure::Hang);
    for i in 0..3 {
        let r = get(&format!("{}/cold-{i}", a.proxy_url), &[]).await;
        assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    }
    eventually(Duration::from_secs(3), "b knows upstream is down", async || {
        health(&b).await["status"] == "degraded"
    })
    .await;
    let asked = up.total_requests();
    let started = Instant::now();
    assert_eq!(get(&format!("{}/cold-b", b.proxy_url), &[]).await.status, 503);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(up.total_requests(), asked, "b did not ask upstream");
}

/// Relayed requests are the client's: upstream failing them (a garbage audit body, a search
/// upstream cannot answer) must not take upstream down for everyone. npg's own reads do.
#[tokio::test]
async fn only_npgs_own_reads_open_the_breaker() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[]);
    up.set_failure(Failure::Status(500));
    for _ in 0..5 {
        let r = get(&format!("{}/-/v1/search?text=x", npg.proxy_url), &[]).await;
        assert_eq!(r.status, 500, "relayed as upstream answered");
    }
    assert_eq!(health(&npg).await["status"], "ok", "clients cannot trip the breaker");
    for i in 0..3 {
        assert_eq!(get(&format!("{}/cold-{i}", npg.proxy_url), &[]).await.status, 502);
    }
    assert_eq!(health(&npg).await["status"], "degraded");
    let r = get(&format!("{}/-/v1/search?text=x", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 503, "while down, relayed reads are refused at once too");
}
