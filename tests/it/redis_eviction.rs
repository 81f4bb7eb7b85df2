//! Redis under memory pressure: with the compose file's eviction policy, only cache entries
//! (which all carry a TTL) are evicted; the cluster's state (malware feed, certificates, ACME
//! account, locks' owners) never is.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::feed_server::FakeFeed;
use crate::support::http::get;
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::upstream::FakeRegistry;

/// The `--maxmemory-policy` the compose file gives Redis.
fn compose_policy() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/docker-compose.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().map(str::trim);
    lines
        .find(|l| l.ends_with("--maxmemory-policy"))
        .expect("compose sets --maxmemory-policy");
    lines.next().unwrap().trim_start_matches("- ").trim().to_string()
}

/// An integer field of `INFO`.
fn info(redis: &RedisServer, field: &str) -> u64 {
    let text = redis.command(&["INFO", "all"]);
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn pressure_evicts_cache_entries_never_state() {
    let policy = compose_policy();
    let redis = RedisServer::start();
    assert!(
        redis
            .command(&["CONFIG", "SET", "maxmemory-policy", &policy])
            .starts_with("+OK")
    );
    let (up, feed) = (FakeRegistry::start(), FakeFeed::start());
    feed.set_entries(json!([{"package_name": "npg-fixture-b", "version": "1.0.1", "reason": "MALWARE"}]));
    let list_dir = tempfile::tempdir().unwrap();
    let npg = NpgProcess::start(
        &up.url(),
        &[
            ("ENABLE_REDIS_CACHE", "true"),
            ("REDIS_URL", &redis.url()),
            ("ENABLE_SCHEDULED_UPDATES", "true"),
            ("MALWARE_FEED_URL", &feed.url()),
            ("MALWARE_LIST_DIR", list_dir.path().to_str().unwrap()),
            ("UPDATE_INTERVAL", "1h"),
        ],
    );
    let started = Instant::now();
    while !redis.command(&["EXISTS", "npg:malware:feed"]).starts_with(":1") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the feed never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Little room left: the packuments below must push older keys out.
    let limit = info(&redis, "used_memory") + 400_000;
    redis.command(&["CONFIG", "SET", "maxmemory", &limit.to_string()]);
    let versions: Vec<String> = (0..40).map(|i| format!("1.0.{i}")).collect();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    for i in 0..150 {
        let name = format!("npg-pressure-{i}");
        up.add_package(&name, &versions);
        let r = get(&format!("{}/{name}", npg.proxy_url), &[]).await;
        assert_eq!(r.status, 200, "{name}");
    }
    let evicted = info(&redis, "evicted_keys");
    assert!(evicted > 0, "no eviction happened: the test did not apply pressure");

    assert!(
        redis.command(&["EXISTS", "npg:malware:feed"]).starts_with(":1"),
        "the shared malware feed was evicted under {policy} ({evicted} keys evicted)"
    );
    let reply = redis.command(&["KEYS", "npg:meta:*"]);
    let metas: Vec<&str> = reply.lines().filter(|l| l.starts_with("npg:meta:")).collect();
    assert!(!metas.is_empty());
    for key in metas {
        let ttl = redis.command(&["PTTL", key]);
        let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
        // -2: evicted since KEYS listed it; -1 would be a cache entry that never expires.
        assert_ne!(ttl, -1, "{key} has no TTL: it could crowd out state");
    }
    let health = get(&format!("{}/api/health", npg.base), &[]).await.json();
    assert_eq!(health["status"], "ok", "{health}");
}
