//! The cluster primitives against a real redis-server: the lease (`RedisLock`), the event
//! bus (`Bus`) and shared documents (`SharedDocuments`), in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use npg::cluster::bus::{Bus, Event};
use npg::cluster::documents::{BodyError, DocKind, DocStamps, SharedDocuments};
use npg::cluster::lock::RedisLock;
use npg::cluster::redis::{RedisState, SharedRedis};
use npg::cluster::sentinel::Target;
use npg::metrics::Metrics;

use crate::support::redis::RedisServer;

/// A replica's connection, once its monitor has seen Redis answer.
async fn connected(redis: &RedisServer, instance: &str) -> Arc<SharedRedis> {
    let shared = SharedRedis::connect(
        &Target::Url(redis.url()),
        "npg:",
        instance,
        Arc::new(Metrics::default()),
    )
    .unwrap();
    tokio::spawn(shared.monitor());
    wait_until(Duration::from_secs(10), || shared.state() == RedisState::Connected).await;
    shared
}

/// Replicas `a` and `b` after the same lease, `job`.
async fn contenders(server: &RedisServer, ttl: Duration) -> (RedisLock, RedisLock) {
    let (ra, rb) = (connected(server, "a").await, connected(server, "b").await);
    (RedisLock::new(ra, "job", ttl), RedisLock::new(rb, "job", ttl))
}

/// The milliseconds `key` has left (-1: no expiry).
fn pttl(server: &RedisServer, key: &str) -> i64 {
    server
        .command(&["PTTL", key])
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap()
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
    let (a, b) = contenders(&server, Duration::from_secs(30)).await;

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
    let (a, b) = contenders(&server, Duration::from_millis(600)).await;

    assert!(a.try_acquire().await);
    // Extended past several TTLs: still a's.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.extend().await);
        assert!(!b.try_acquire().await);
    }
    let left = pttl(&server, "npg:lock:job");
    assert!(left > 0 && left <= 600, "{left}");

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
async fn hold_while_keeps_the_lease_through_long_work_and_drops_the_work_once_it_is_lost() {
    let server = RedisServer::start();
    let (a, b) = contenders(&server, Duration::from_millis(600)).await;

    assert!(a.try_acquire().await);
    // Work lasting three TTLs: still a's at the end, and b never got in meanwhile.
    let work = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!b.try_acquire().await, "b took the lease a works under");
        }
        7
    };
    assert_eq!(a.hold_while(work).await, Some(7));

    // The lease passes on (as if it expired while a was stuck): the work is dropped.
    server.command(&["SET", "npg:lock:job", "someone-else"]);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let work = async move {
        let _tx = tx;
        std::future::pending::<()>().await
    };
    assert_eq!(a.hold_while(work).await, None);
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert!(rx.await.is_err(), "the work, and what it held, were dropped");
    assert!(!a.held());
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
pub(crate) async fn publish_until_heard(from: &Bus, to: &mut tokio::sync::broadcast::Receiver<Event>, event: Event) {
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

#[tokio::test]
async fn a_shared_document_is_replaced_whole_touched_and_read_within_a_size_cap() {
    let server = RedisServer::start();
    let kind = DocKind {
        stamp: "updated",
        what: "test document",
    };
    let docs = SharedDocuments::new(connected(&server, "a").await, kind);
    assert_eq!(
        docs.stamps("doc").await,
        Some(DocStamps::default()),
        "absent: every field missing"
    );
    assert!(docs.body_gz("doc", 100).await.unwrap().is_none());

    let stamps = DocStamps {
        etag: Some("\"v1\"".into()),
        stamp_ms: Some(10),
        checked_ms: Some(20),
    };
    assert!(docs.put("doc", b"gz-bytes", &stamps, None).await);
    assert_eq!(docs.stamps("doc").await, Some(stamps.clone()));
    assert!(server.command(&["HGET", "npg:doc", "updated"]).contains("\r\n10\r\n"));
    assert_eq!(docs.body_gz("doc", 8).await.unwrap().as_deref(), Some(&b"gz-bytes"[..]));
    assert!(matches!(
        docs.body_gz("doc", 7).await,
        Err(BodyError::TooLarge { max: 7 })
    ));

    docs.touch("doc", 30, Some(Duration::from_secs(60))).await;
    let touched = docs.stamps("doc").await.unwrap();
    assert_eq!((touched.stamp_ms, touched.checked_ms), (Some(10), Some(30)));
    let left = pttl(&server, "npg:doc");
    assert!(left > 0 && left <= 60_000, "{left}");

    // Replaced whole: no field of the old copy survives (an ETag without its body would lie).
    let bare = DocStamps {
        etag: None,
        stamp_ms: Some(40),
        checked_ms: Some(40),
    };
    assert!(docs.put("doc", b"other", &bare, None).await);
    assert_eq!(docs.stamps("doc").await, Some(bare));
    assert_eq!(pttl(&server, "npg:doc"), -1, "no expiry asked");
    docs.delete("doc").await;
    assert_eq!(docs.stamps("doc").await, Some(DocStamps::default()));
}
