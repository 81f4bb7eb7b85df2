//! The cluster primitives against a real redis-server: the lease (`RedisLock`) and the event
//! bus (`Bus`), in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use npg::cluster::bus::{Bus, Event};
use npg::cluster::lock::RedisLock;
use npg::cluster::redis::{RedisState, SharedRedis};
use npg::metrics::Metrics;

use crate::support::redis::RedisServer;

/// A replica's connection, once its monitor has seen Redis answer.
async fn connected(redis: &RedisServer, instance: &str) -> Arc<SharedRedis> {
    let shared = SharedRedis::connect(&redis.url(), "npg:", instance, Arc::new(Metrics::default())).unwrap();
    tokio::spawn(shared.monitor());
    wait_until(Duration::from_secs(10), || shared.state() == RedisState::Connected).await;
    shared
}

async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_holder_at_a_time_and_only_the_holder_releases() {
    let server = RedisServer::start();
    let (ra, rb) = (connected(&server, "a").await, connected(&server, "b").await);
    let a = RedisLock::new(ra, "job", Duration::from_secs(30));
    let b = RedisLock::new(rb, "job", Duration::from_secs(30));

    assert!(a.try_acquire().await);
    assert!(a.held());
    assert!(!b.try_acquire().await, "b took a held lock");
    assert!(!b.held());
    assert!(!b.extend().await, "b extended a's lock");
    assert!(a.try_acquire().await, "re-acquiring our own lock must succeed");
    let stored = server.command(&["GET", "npg:lock:job"]);
    assert!(stored.contains(a.token()), "{stored}");
    assert!(a.token().starts_with("a:"), "{}", a.token());

    b.release().await;
    assert!(!b.try_acquire().await, "b's release dropped a's lock");
    a.release().await;
    assert!(!a.held());
    assert!(b.try_acquire().await, "free after the holder released");
    assert!(!a.try_acquire().await);
}

#[tokio::test]
async fn an_expired_lease_passes_on_and_extend_keeps_it() {
    let server = RedisServer::start();
    let (ra, rb) = (connected(&server, "a").await, connected(&server, "b").await);
    let a = RedisLock::new(ra, "job", Duration::from_millis(600));
    let b = RedisLock::new(rb, "job", Duration::from_millis(600));

    assert!(a.try_acquire().await);
    // Extended past several TTLs: still a's.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.extend().await);
        assert!(!b.try_acquire().await);
    }
    let pttl: i64 = server
        .command(&["PTTL", "npg:lock:job"])
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 600, "{pttl}");

    // a stops extending (as if it died): b gets it after the TTL, and a cannot extend any more.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(b.try_acquire().await);
    assert!(!a.extend().await);
    assert!(!a.held());
    assert!(
        !a.set_if_held("changes:seq", "1").await,
        "a wrote while b held the lock"
    );
    assert!(b.set_if_held("changes:seq", "2").await);
    assert!(server.command(&["GET", "npg:changes:seq"]).contains("\r\n2\r\n"));
}

#[tokio::test]
async fn without_redis_a_single_node_always_holds_and_a_dead_redis_holds_nothing() {
    let disabled = SharedRedis::disabled(Arc::new(Metrics::default()));
    let lock = RedisLock::new(disabled, "job", Duration::from_secs(1));
    assert!(lock.try_acquire().await);
    assert!(lock.extend().await);
    lock.release().await;

    let mut server = RedisServer::start();
    let shared = connected(&server, "a").await;
    server.stop();
    let lock = RedisLock::new(shared.clone(), "job", Duration::from_secs(1));
    // The first command may still be tried (and fail); either way the lock is not held.
    assert!(!lock.try_acquire().await);
    assert!(!lock.try_acquire().await);
    assert_ne!(shared.state(), RedisState::Connected);
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .ok()
        .map(|r| r.unwrap())
}

/// Publishes until the other side hears it: subscriptions start asynchronously, and pub/sub
/// drops what nobody listens to.
async fn publish_until_heard(from: &Bus, to: &mut tokio::sync::broadcast::Receiver<Event>, event: Event) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        from.publish(event.clone()).await;
        if let Ok(Ok(got)) = tokio::time::timeout(Duration::from_millis(200), to.recv()).await {
            assert_eq!(got, event);
            return;
        }
        assert!(Instant::now() < deadline, "{event:?} never arrived");
    }
}

#[tokio::test]
async fn replicas_hear_each_other_but_not_themselves_even_after_a_redis_restart() {
    let mut server = RedisServer::start();
    let a = Bus::new(connected(&server, "a").await, "a");
    let b = Bus::new(connected(&server, "b").await, "b");
    tokio::spawn(a.subscriber());
    tokio::spawn(b.subscriber());
    let (mut rx_a, mut rx_b) = (a.subscribe(), b.subscribe());

    let changed = Event::PackageChanged {
        name: "left-pad".into(),
    };
    publish_until_heard(&a, &mut rx_b, changed.clone()).await;
    publish_until_heard(
        &b,
        &mut rx_a,
        Event::FeedUpdated {
            etag: Some("\"v1\"".into()),
        },
    )
    .await;
    // Both subscriptions are live now (late duplicates of the retries are dropped first): each
    // event arrives once, at the other side only.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx_a.try_recv().is_ok() || rx_b.try_recv().is_ok() {}
    a.publish(changed.clone()).await;
    assert_eq!(next_event(&mut rx_b).await, Some(changed.clone()));
    assert_eq!(next_event(&mut rx_a).await, None, "a heard its own event");

    server.restart();
    let after = Event::PackageChanged {
        name: "@scope/after".into(),
    };
    publish_until_heard(&b, &mut rx_a, after.clone()).await;
    publish_until_heard(&a, &mut rx_b, after).await;
}

#[tokio::test]
async fn without_redis_publish_is_a_no_op() {
    let bus = Bus::new(SharedRedis::disabled(Arc::new(Metrics::default())), "solo");
    tokio::spawn(bus.subscriber());
    let mut rx = bus.subscribe();
    bus.publish(Event::PackageChanged { name: "x".into() }).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err()
    );
}
