//! Redis without a single point of failure: npg with REDIS_SENTINELS against a real master,
//! replica and three sentinels (`support::sentinel`). The master is SIGKILLed during a loop of
//! real npm installs through two replicas: no install fails, health is back on the new master
//! within a bound, writes (L2, the changes lease and position) land there, and the follower
//! continues from its sequence. In process: a lease is acted on only once a replica has it,
//! and a holder whose lease passed to another across a failover cannot write any more.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use npg::cluster::lock::RedisLock;
use npg::cluster::redis::{RedisState, SharedRedis};
use npg::cluster::sentinel::{HostPort, SentinelTarget, Target};
use npg::metrics::Metrics;

use crate::support;
use crate::support::changes_feed::{FakeChanges, START_SEQ};
use crate::support::clients::{Client, Project};
use crate::support::npg::NpgProcess;
use crate::support::sentinel::{Auth, MASTER_NAME, SentinelSet};
use crate::support::upstream::FakeRegistry;
use crate::support::wait_for;

/// Health must be back on the new master within this long after the kill (sentinels: down
/// after 1 s, then an election; npg: checks every second).
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

fn node(up: &FakeRegistry, feed: &FakeChanges, set: &SentinelSet, name: &str) -> NpgProcess {
    let sentinels = set.sentinels_setting();
    let feed_url = feed.url();
    NpgProcess::start(
        &up.url(),
        &[
            ("ENABLE_REDIS_CACHE", "true"),
            ("REDIS_SENTINELS", sentinels.as_str()),
            ("REDIS_SENTINEL_MASTER", MASTER_NAME),
            ("INSTANCE_NAME", name),
            ("ENABLE_NPM_CHANGES_POLLER", "true"),
            ("REGISTRY_POLL_URL", feed_url.as_str()),
            ("NPM_CHANGES_POLL_INTERVAL", "200"),
        ],
    )
}

async fn get_json(url: &str) -> Value {
    let resp = support::http::client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null)
}

async fn health(npg: &NpgProcess) -> Value {
    get_json(&format!("{}/api/health", npg.base)).await
}

async fn metrics(npg: &NpgProcess) -> String {
    let url = format!("{}/metrics", npg.base);
    support::http::client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Like `wait_for`, false instead of a panic (so the caller can show why).
async fn wait_for_within<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Health is ok and Redis is the master at `port`.
async fn on_master(npg: &NpgProcess, port: u16) -> bool {
    let h = health(npg).await;
    h["status"] == "ok" && h["redis"] == "connected" && h["redis_master"]["address"] == format!("127.0.0.1:{port}")
}

/// `GET key` on the node at `port`: the value, if any.
fn get_key(set: &SentinelSet, port: u16, key: &str) -> Option<String> {
    let reply = set.command(port, &["GET", key]);
    reply
        .split("\r\n")
        .nth(1)
        .filter(|_| !reply.starts_with("$-1"))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_during_installs_fails_none_and_npg_follows_the_failover() {
    let mut set = SentinelSet::start();
    let up = FakeRegistry::start();
    let feed = FakeChanges::start();
    let old = set.master_port();
    let (a, b) = (node(&up, &feed, &set, "a"), node(&up, &feed, &set, "b"));
    for npg in [&a, &b] {
        let found = wait_for_within(Duration::from_secs(15), || on_master(npg, old)).await;
        assert!(found, "npg finds the master: {}", health(npg).await);
        assert_eq!(health(npg).await["redis_master"]["replicas"], 1);
    }
    // The follower leads and stores its position on the master.
    wait_for(Duration::from_secs(15), "the changes position is stored", || async {
        get_key(&set, old, "npg:changes:seq") == Some(START_SEQ.to_string())
    })
    .await;
    feed.push("npg-fixture-b");
    wait_for(Duration::from_secs(5), "the first change is recorded", || async {
        get_key(&set, old, "npg:changes:seq") == Some((START_SEQ + 1).to_string())
    })
    .await;

    // Installs in a loop, alternating the replicas, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let installs = {
        let (stop, done) = (stop.clone(), done.clone());
        let registries = [a.proxy_url.clone(), b.proxy_url.clone()];
        tokio::task::spawn_blocking(move || {
            let projects = registries.map(|r| Project::fixture(Client::Npm, &r));
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let project = &projects[i % 2];
                project.forget_installation();
                let out = project.install();
                if !out.success() {
                    failures.push(format!("install {i}: {}\n{}", out.stdout, out.stderr));
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            failures
        })
    };
    wait_for(Duration::from_secs(60), "two installs before the kill", || {
        let n = done.load(Ordering::Relaxed);
        async move { n >= 2 }
    })
    .await;

    let before = done.load(Ordering::Relaxed);
    let killed = Instant::now();
    set.kill_master();
    let new = set.wait_new_master(old, RECOVERY_BOUND);
    let promoted = killed.elapsed();
    for npg in [&a, &b] {
        wait_for(RECOVERY_BOUND, "npg is ok on the new master", || on_master(npg, new)).await;
    }
    let recovered = killed.elapsed();
    // A few more installs on the new master, then stop.
    let after = done.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(60), "two more installs", || {
        let n = done.load(Ordering::Relaxed);
        async move { n >= after + 2 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let failures = installs.await.unwrap();
    let total = done.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed installs:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "sentinel failover: new master named {promoted:?} after the kill, both npg ok on it after \
         {recovered:?}; {total} installs, {} during the failover, 0 failed",
        after - before
    );

    // Writes land on the new master: L2 ...
    let fresh = get_json(&format!("{}/npg-legacy", a.proxy_url)).await;
    assert_eq!(fresh["name"], "npg-legacy");
    set.command(new, &["DEL", "npg:meta:npg-legacy"]);
    get_json(&format!("{}/@npg-test%2fscoped", a.proxy_url)).await;
    wait_for(Duration::from_secs(5), "L2 written on the new master", || async {
        set.command(new, &["EXISTS", "npg:meta:@npg-test/scoped"]) == ":1\r\n"
    })
    .await;
    // ... the changes lease and the position, continued from where it was.
    wait_for(
        Duration::from_secs(20),
        "a follower leads on the new master",
        || async { get_key(&set, new, "npg:lock:changes").is_some() },
    )
    .await;
    let seq: u64 = get_key(&set, new, "npg:changes:seq").unwrap().parse().unwrap();
    assert_eq!(seq, START_SEQ + 1, "the position survived the failover");
    feed.push("npg-fixture-a");
    wait_for(
        Duration::from_secs(10),
        "the next change is recorded on the new master",
        || async { get_key(&set, new, "npg:changes:seq") == Some((START_SEQ + 2).to_string()) },
    )
    .await;
    let sinces: Vec<u64> = feed.changes_requests().iter().filter_map(|r| r.since).collect();
    assert!(
        sinces.iter().all(|s| *s >= START_SEQ),
        "the follower never went back before its position: {sinces:?}"
    );
    for npg in [&a, &b] {
        let m = metrics(npg).await;
        assert!(m.contains("npg_redis_failovers_total 1"), "{m}");
    }

    // The old master comes back empty and is made a replica: npg stays on the new one.
    set.restart_node(old);
    let took = wait_for(
        Duration::from_secs(30),
        "the sentinels make the old master a replica",
        || async { set.command(old, &["ROLE"]).contains("slave") },
    )
    .await;
    eprintln!("the old master became a replica {took:?} after it came back");
    for npg in [&a, &b] {
        assert!(on_master(npg, new).await, "{}", health(npg).await);
    }
}

/// How an in-process replica finds the master of `set`, with these passwords.
fn target(set: &SentinelSet, master_password: Option<&str>, sentinel_password: Option<&str>) -> Target {
    Target::Sentinels(SentinelTarget {
        sentinels: set
            .sentinel_ports()
            .into_iter()
            .map(|port| HostPort {
                host: "127.0.0.1".into(),
                port,
            })
            .collect(),
        master_name: MASTER_NAME.into(),
        sentinel_password: sentinel_password.map(str::to_string),
        master_password: master_password.map(str::to_string),
        db: 0,
    })
}

/// A connection to `target` with its monitor running; whether it connected within `within`.
async fn connect(target: &Target, instance: &str, metrics: Arc<Metrics>, within: Duration) -> (Arc<SharedRedis>, bool) {
    let shared = SharedRedis::connect(target, "npg:", instance, metrics).unwrap();
    tokio::spawn(shared.monitor());
    let up = wait_for_within(within, || {
        let up = shared.state() == RedisState::Connected;
        async move { up }
    })
    .await;
    (shared, up)
}

/// An in-process replica's connection through the sentinels, once its monitor found the
/// master.
async fn connected(set: &SentinelSet, instance: &str, metrics: Arc<Metrics>) -> Arc<SharedRedis> {
    let (shared, up) = connect(&target(set, None, None), instance, metrics, Duration::from_secs(10)).await;
    assert!(up, "connected through the sentinels");
    shared
}

#[tokio::test]
async fn the_master_and_the_sentinels_with_passwords() {
    let set = SentinelSet::start_with(Auth {
        master: Some("m-secret"),
        sentinel: Some("s-secret"),
    });
    let metrics = || Arc::new(Metrics::default());
    let good = target(&set, Some("m-secret"), Some("s-secret"));
    let (redis, up) = connect(&good, "a", metrics(), Duration::from_secs(10)).await;
    assert!(up, "both passwords given: connected");
    assert_eq!(redis.master(), Some(format!("127.0.0.1:{}", set.master_port())));
    let lock = RedisLock::new(redis, "job", Duration::from_secs(5));
    assert!(lock.try_acquire().await);
    for (master, sentinel, what) in [
        (Some("m-secret"), None, "without the sentinels' password"),
        (Some("wrong"), Some("s-secret"), "with a wrong master password"),
        (None, Some("s-secret"), "without the master password"),
    ] {
        let (_, up) = connect(&target(&set, master, sentinel), "b", metrics(), Duration::from_secs(3)).await;
        assert!(!up, "connected {what}");
    }
}

#[tokio::test]
async fn a_lease_is_acted_on_only_once_a_replica_has_it() {
    let set = SentinelSet::start();
    let metrics = Arc::new(Metrics::default());
    let redis = connected(&set, "a", metrics.clone()).await;
    let master = set.master_port();
    // The monitor learns the replica from ROLE.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let first = RedisLock::new(redis.clone(), "first", Duration::from_secs(30));
    assert!(first.try_acquire().await, "a replica acknowledges: the lease is held");

    set.pause_replica(true);
    let second = RedisLock::new(redis.clone(), "second", Duration::from_secs(30));
    let started = Instant::now();
    assert!(
        !second.try_acquire().await,
        "no replica has it: the lease is not acted on"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(get_key(&set, master, "npg:lock:second"), None, "and it is given back");
    // A fenced write still happens, and is counted as unreplicated.
    assert!(first.set_if_held("changes:seq", "7").await);
    assert_eq!(get_key(&set, master, "npg:changes:seq").as_deref(), Some("7"));
    let rendered = metrics.render();
    assert!(rendered.contains("npg_redis_unreplicated_total 2"), "{rendered}");

    set.pause_replica(false);
    set.wait_synced(Duration::from_secs(10));
    assert!(second.try_acquire().await, "the replica is back: the lease is held");
}

#[tokio::test]
async fn a_holder_whose_lease_passed_on_across_a_failover_cannot_write() {
    let mut set = SentinelSet::start();
    let old = set.master_port();
    let (ra, rb) = (
        connected(&set, "a", Arc::new(Metrics::default())).await,
        connected(&set, "b", Arc::new(Metrics::default())).await,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ttl = Duration::from_secs(4);
    let (a, b) = (
        RedisLock::new(ra.clone(), "job", ttl),
        RedisLock::new(rb.clone(), "job", ttl),
    );
    assert!(a.try_acquire().await);
    assert!(a.set_if_held("changes:seq", "100").await);

    set.kill_master();
    let new = set.wait_new_master(old, RECOVERY_BOUND);
    for r in [&ra, &rb] {
        wait_for(RECOVERY_BOUND, "the replica follows the failover", || {
            let ok = r.state() == RedisState::Connected && r.master() == Some(format!("127.0.0.1:{new}"));
            async move { ok }
        })
        .await;
    }
    // The lease was on the replica before a acted: the new master refuses it to b.
    assert_eq!(get_key(&set, new, "npg:changes:seq").as_deref(), Some("100"));
    if get_key(&set, new, "npg:lock:job").is_some() {
        assert!(!b.try_acquire().await, "b took a lease a still holds");
    }
    // a stops extending (a pause, a partition); its lease runs out and b takes it.
    wait_for(ttl + Duration::from_secs(2), "a's lease runs out", || async {
        get_key(&set, new, "npg:lock:job").is_none()
    })
    .await;
    assert!(b.try_acquire().await);
    assert!(b.set_if_held("changes:seq", "200").await);
    assert!(!a.set_if_held("changes:seq", "150").await, "the stale holder wrote");
    assert!(!a.extend().await, "the stale holder extended b's lease");
    assert_eq!(get_key(&set, new, "npg:changes:seq").as_deref(), Some("200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_under_a_lease_rides_out_a_failover() {
    let mut set = SentinelSet::start();
    let old = set.master_port();
    let ra = connected(&set, "a", Arc::new(Metrics::default())).await;
    let rb = connected(&set, "b", Arc::new(Metrics::default())).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ttl = Duration::from_secs(30);
    let (a, b) = (
        RedisLock::new(ra.clone(), "order", ttl),
        RedisLock::new(rb.clone(), "order", ttl),
    );
    assert!(a.try_acquire().await);
    let started = Instant::now();
    let set_ref = &mut set;
    // The master dies a second before the first extension (a third of the TTL), so that
    // extension gets no answer; the work (an ACME order polling its CA) must go on.
    let work = async {
        tokio::time::sleep_until((started + ttl / 3 - Duration::from_secs(1)).into()).await;
        set_ref.kill_master();
        let followed = wait_for_within(RECOVERY_BOUND, || {
            let ok = ra.state() == RedisState::Connected && ra.master() != Some(format!("127.0.0.1:{old}"));
            async move { ok }
        })
        .await;
        assert!(followed, "a follows the failover");
        tokio::time::sleep(Duration::from_secs(2)).await;
        7
    };
    assert_eq!(
        a.hold_while(work).await,
        Some(7),
        "the work was cut off by the failover"
    );
    eprintln!(
        "work under a lease went on through a failover ({:?})",
        started.elapsed()
    );
    assert!(a.held());
    let new = set.master_port();
    assert_eq!(get_key(&set, new, "npg:lock:order").as_deref(), Some(a.token()));
    assert!(!b.try_acquire().await, "b took the lease a works under");
}

#[tokio::test]
async fn a_manual_failover_is_followed_while_the_old_master_still_answers() {
    let set = SentinelSet::start();
    let old = set.master_port();
    let metrics = Arc::new(Metrics::default());
    let redis = connected(&set, "a", metrics.clone()).await;
    assert_eq!(redis.master(), Some(format!("127.0.0.1:{old}")));
    let reply = crate::support::redis::resp(set.sentinel_ports()[0], &["SENTINEL", "FAILOVER", MASTER_NAME]);
    assert_eq!(reply.as_deref(), Some("+OK\r\n"));
    let new = set.wait_new_master(old, RECOVERY_BOUND);
    // The old master answers on, as a replica: npg must leave it, not keep writing to it.
    let took = wait_for(RECOVERY_BOUND, "npg follows the manual failover", || {
        let ok = redis.state() == RedisState::Connected && redis.master() == Some(format!("127.0.0.1:{new}"));
        async move { ok }
    })
    .await;
    eprintln!("manual failover followed {took:?} after the new master was named");
    wait_for(RECOVERY_BOUND, "the old master is made a replica", || async {
        set.command(old, &["ROLE"]).contains("slave")
    })
    .await;
    assert_eq!(
        redis.master(),
        Some(format!("127.0.0.1:{new}")),
        "npg stays on the new master"
    );
    let lock = RedisLock::new(redis.clone(), "after", Duration::from_secs(30));
    assert!(lock.try_acquire().await);
    assert!(
        get_key(&set, new, "npg:lock:after").is_some(),
        "the lease is on the new master"
    );
    assert!(metrics.render().contains("npg_redis_failovers_total 1"));
}

#[tokio::test]
async fn events_reach_the_other_replica_across_a_failover() {
    use crate::cluster::publish_until_heard;
    use npg::cluster::bus::{Bus, Event};
    let mut set = SentinelSet::start();
    let ra = connected(&set, "a", Arc::new(Metrics::default())).await;
    let rb = connected(&set, "b", Arc::new(Metrics::default())).await;
    let (a, b) = (Bus::new(ra.clone(), "a"), Bus::new(rb.clone(), "b"));
    tokio::spawn(a.subscriber());
    tokio::spawn(b.subscriber());
    let mut rx_b = b.subscribe();
    let before = Event::PackageChanged { name: "before".into() };
    publish_until_heard(&a, &mut rx_b, before).await;

    let old = set.kill_master();
    let new = set.wait_new_master(old, RECOVERY_BOUND);
    let after = Event::PackageChanged { name: "after".into() };
    publish_until_heard(&a, &mut rx_b, after).await;
    assert_eq!(ra.master(), Some(format!("127.0.0.1:{new}")));
}

#[tokio::test]
async fn no_second_acme_order_across_a_failover() {
    use crate::acme::{DOMAIN, ISSUE_TIMEOUT, acme_only, loopback, pebble_at, ports_on, start_nodes_at_once};
    let mut set = SentinelSet::start();
    let up = FakeRegistry::start();
    let ports = ports_on(&[loopback(2), loopback(3)]);
    let pebble = pebble_at(ports);
    let env = acme_only(&pebble)
        .set("ENABLE_REDIS_CACHE", "true")
        .set("REDIS_SENTINELS", set.sentinels_setting())
        .set("REDIS_SENTINEL_MASTER", MASTER_NAME);
    let nodes = start_nodes_at_once(&up, &[2, 3], ports, &env);
    for node in &nodes {
        node.wait_certificate(DOMAIN, ISSUE_TIMEOUT, |_| true).await;
    }
    let issued = pebble.issued_serials();
    assert_eq!(issued.len(), 1, "one order for the cluster");
    let key = format!("npg:acme:cert:{DOMAIN}");

    let old = set.kill_master();
    let new = set.wait_new_master(old, RECOVERY_BOUND);
    // Written with WAIT: the promoted replica has the certificate before npg even follows.
    let reply = set.command(new, &["HGET", &key, "serial"]);
    let serial = reply.split("\r\n").nth(1).filter(|_| !reply.starts_with("$-1"));
    assert_eq!(
        serial.map(crate::support::tls::normalize_serial).as_ref(),
        Some(&issued[0]),
        "the certificate is on the new master: {reply}"
    );
    for node in &nodes {
        let name = &node.name;
        let followed = wait_for_within(RECOVERY_BOUND, || async {
            node.health().await["redis_master"]["address"] == format!("127.0.0.1:{new}")
        })
        .await;
        assert!(followed, "{name} follows the failover: {}", node.health().await);
    }
    // Two certificate checks (ACME_CHECK_INTERVAL 5s) on the new master: nobody orders.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(pebble.issued_serials(), issued, "a second order across the failover");
    let orders = set.command(new, &["GET", "npg:acme:orders"]);
    assert!(
        orders.ends_with("\r\n1\r\n"),
        "orders counted on the new master: {orders}"
    );
}
