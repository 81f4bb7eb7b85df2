//! The changes follower, end to end: real npg processes, a real redis-server, the fake
//! registry and the fake changes feed. A change in the feed must reach every replica's memory
//! quickly, one replica follows at a time, a successor resumes where the dead one stopped,
//! and a feed that starts over is followed again.

use std::time::Duration;

use serde_json::Value;

use crate::support;
use crate::support::changes_feed::{FakeChanges, START_SEQ};
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::upstream::FakeRegistry;
use crate::support::wait_for;

const PKG: &str = "npg-fixture-a";

fn node(up: &FakeRegistry, feed: &FakeChanges, redis: Option<&RedisServer>, name: &str) -> NpgProcess {
    let feed_url = feed.url();
    let redis_url = redis.map(|r| r.url());
    let mut env = vec![
        ("ENABLE_NPM_CHANGES_POLLER", "true"),
        ("REGISTRY_POLL_URL", feed_url.as_str()),
        ("NPM_CHANGES_POLL_INTERVAL", "200"),
        ("INSTANCE_NAME", name),
    ];
    if let Some(url) = &redis_url {
        env.extend([("ENABLE_REDIS_CACHE", "true"), ("REDIS_URL", url.as_str())]);
    }
    NpgProcess::start(&up.url(), &env)
}

/// The follower's User-Agent names its instance: `npg/<v> (changes follower; <instance>)`.
fn agent(name: &str) -> String {
    format!("; {name})")
}

/// `X-Cache` and `dist-tags.latest` of the package as npg serves it.
async fn latest(npg: &NpgProcess) -> (String, String) {
    let url = format!("{}/{PKG}", npg.proxy_url);
    let resp = support::http::client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), 200, "GET {url}");
    let cache = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let doc: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    (
        cache,
        doc["dist-tags"]["latest"].as_str().unwrap_or_default().to_string(),
    )
}

/// Waits until `name` has polled the feed at least once.
async fn wait_following(feed: &FakeChanges, name: &str) {
    let agent = agent(name);
    wait_for(Duration::from_secs(15), &format!("{name} follows the feed"), || {
        let polled = !feed.sinces_from(&agent).is_empty();
        async move { polled }
    })
    .await;
}

/// Caches the package in `npg` (HIT on the second request) at its current version.
async fn cache_it(npg: &NpgProcess, version: &str) {
    let (_, v) = latest(npg).await;
    assert_eq!(v, version);
    assert_eq!(latest(npg).await, ("HIT".to_string(), version.to_string()));
}

/// Waits until `npg` serves `version` as latest; returns how long that took.
async fn wait_latest(npg: &NpgProcess, version: &str, timeout: Duration) -> Duration {
    wait_for(timeout, &format!("{} serves {PKG}@{version}", npg.base), || async {
        latest(npg).await.1 == version
    })
    .await
}

fn redis_get(redis: &RedisServer, key: &str) -> Option<String> {
    let reply = redis.command(&["GET", key]);
    // `$<len>\r\n<value>\r\n`, or `$-1\r\n` for none.
    reply
        .split("\r\n")
        .nth(1)
        .filter(|_| !reply.starts_with("$-1"))
        .map(str::to_string)
}

async fn a_change_reaches_a_single_node(redis: Option<&RedisServer>) {
    let up = FakeRegistry::start();
    let feed = FakeChanges::start();
    let a = node(&up, &feed, redis, "a");
    wait_following(&feed, "a").await;
    // It started at the head, not at 0.
    assert_eq!(feed.sinces_from(&agent("a"))[0], START_SEQ);

    let (cache, v) = latest(&a).await;
    assert_eq!((cache.as_str(), v.as_str()), ("MISS", "2.0.0"));
    assert_eq!(latest(&a).await.0, "HIT");
    up.publish(PKG, "9.0.0");
    // Cached: the new version is not seen until the feed says so.
    assert_eq!(latest(&a).await, ("HIT".to_string(), "2.0.0".to_string()));

    feed.push(PKG);
    let took = wait_latest(&a, "9.0.0", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "invalidation took {took:?}");
    assert_eq!(latest(&a).await, ("HIT".to_string(), "9.0.0".to_string()));
    if let Some(redis) = redis {
        wait_for(Duration::from_secs(3), "the position is stored", || async {
            redis_get(redis, "npg:changes:seq") == Some((START_SEQ + 1).to_string())
        })
        .await;
    }
}

#[tokio::test]
async fn a_change_reaches_a_single_node_with_redis() {
    let redis = RedisServer::start();
    a_change_reaches_a_single_node(Some(&redis)).await;
}

#[tokio::test]
async fn a_change_reaches_a_single_node_without_redis() {
    a_change_reaches_a_single_node(None).await;
}

/// Starts a and b on one Redis and waits until one of them holds the lock; returns the
/// leader, the other, and their names.
async fn two_replicas(
    up: &FakeRegistry,
    feed: &FakeChanges,
    redis: &RedisServer,
) -> (NpgProcess, NpgProcess, &'static str, &'static str) {
    let a = node(up, feed, Some(redis), "a");
    let b = node(up, feed, Some(redis), "b");
    wait_for(Duration::from_secs(15), "one replica takes the lock", || async {
        redis_get(redis, "npg:lock:changes").is_some()
    })
    .await;
    // Events are hints: one published before a replica subscribed is lost to it.
    wait_for(Duration::from_secs(15), "both replicas listen for events", || async {
        redis.command(&["PUBSUB", "NUMSUB", "npg:events"]).ends_with(":2\r\n")
    })
    .await;
    let holder = redis_get(redis, "npg:lock:changes").unwrap();
    if holder.starts_with("a:") {
        (a, b, "a", "b")
    } else {
        assert!(holder.starts_with("b:"), "lock value {holder}");
        (b, a, "b", "a")
    }
}

#[tokio::test]
async fn one_replica_follows_and_every_replica_forgets() {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let feed = FakeChanges::start();
    let (leader, other, ln, on) = two_replicas(&up, &feed, &redis).await;
    wait_following(&feed, ln).await;

    cache_it(&leader, "2.0.0").await;
    cache_it(&other, "2.0.0").await;
    up.publish(PKG, "9.0.0");
    feed.push(PKG);
    let took_leader = wait_latest(&leader, "9.0.0", Duration::from_secs(5)).await;
    let took_other = wait_latest(&other, "9.0.0", Duration::from_secs(5)).await;
    assert!(
        took_leader < Duration::from_secs(2) && took_other < Duration::from_secs(2),
        "{took_leader:?} {took_other:?}"
    );

    // Over a few more polls, the other replica never polled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(feed.sinces_from(&agent(ln)).len() >= 5, "{:?}", feed.changes_requests());
    assert!(feed.sinces_from(&agent(on)).is_empty(), "{:?}", feed.changes_requests());
}

#[tokio::test]
async fn a_successor_resumes_where_the_dead_follower_stopped() {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let feed = FakeChanges::start();
    let (leader, survivor, ln, sn) = two_replicas(&up, &feed, &redis).await;
    wait_following(&feed, ln).await;

    // The leader processes one change, then dies without releasing the lock.
    let first = feed.push("npg-fixture-b");
    wait_for(Duration::from_secs(5), "the leader stores its position", || async {
        redis_get(&redis, "npg:changes:seq") == Some(first.to_string())
    })
    .await;
    leader.signal("KILL");
    cache_it(&survivor, "2.0.0").await;
    up.publish(PKG, "9.0.0");
    let missed_while_leaderless = feed.push(PKG);

    // Lock TTL (15 s) + a takeover attempt (≤ 3 s) + a poll.
    let took = wait_latest(&survivor, "9.0.0", Duration::from_secs(30)).await;
    assert!(took < Duration::from_secs(22), "takeover took {took:?}");
    let sinces = feed.sinces_from(&agent(sn));
    assert_eq!(sinces.first(), Some(&first), "the successor did not resume: {sinces:?}");
    wait_for(Duration::from_secs(3), "the successor moves on", || {
        let moved = feed.sinces_from(&agent(sn)).contains(&missed_while_leaderless);
        async move { moved }
    })
    .await;
    assert!(
        redis_get(&redis, "npg:lock:changes")
            .unwrap()
            .starts_with(&format!("{sn}:"))
    );
}

#[tokio::test]
async fn a_feed_that_starts_over_is_followed_again() {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let feed = FakeChanges::start();
    let a = node(&up, &feed, Some(&redis), "a");
    wait_following(&feed, "a").await;
    let before = feed.push("npg-fixture-b");
    wait_for(Duration::from_secs(5), "position stored", || async {
        redis_get(&redis, "npg:changes:seq") == Some(before.to_string())
    })
    .await;

    // The feed starts over far below our position, and fails for a while on top of that.
    feed.set_failure(Some(503));
    feed.reset_to(5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    feed.set_failure(None);
    wait_for(
        Duration::from_secs(10),
        "the follower restarts at the new head",
        || async { feed.sinces_from(&agent("a")).last() == Some(&5) },
    )
    .await;
    assert_eq!(redis_get(&redis, "npg:changes:seq").as_deref(), Some("5"));

    cache_it(&a, "2.0.0").await;
    up.publish(PKG, "9.0.0");
    let seq = feed.push(PKG);
    assert_eq!(seq, 6);
    let took = wait_latest(&a, "9.0.0", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    wait_for(Duration::from_secs(3), "position after the reset", || async {
        redis_get(&redis, "npg:changes:seq").as_deref() == Some("6")
    })
    .await;
}

/// (issue 13) A rolling restart SIGTERMs the follower: it releases the lease on its way out,
/// so the other replica follows within seconds instead of after the lease's 15 s.
#[tokio::test]
async fn a_sigterm_hands_the_feed_over_at_once() {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let feed = FakeChanges::start();
    let (leader, _survivor, ln, sn) = two_replicas(&up, &feed, &redis).await;
    wait_following(&feed, ln).await;
    leader.signal("TERM");
    let took = wait_for(Duration::from_secs(15), "the survivor takes the lease", || async {
        redis_get(&redis, "npg:lock:changes").is_some_and(|h| h.starts_with(&format!("{sn}:")))
    })
    .await;
    eprintln!("changes lease taken over {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(6),
        "takeover took {took:?}: the lease was not released"
    );
}
