//! Replicas sharing a real redis-server: one fetch serves all, and Redis trouble never fails a
//! request that memory, disk or upstream can answer.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::upstream::FakeRegistry;

async fn get(url: &str) -> (u16, String, Vec<u8>) {
    let resp = support::http::client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cache, resp.bytes().await.unwrap().to_vec())
}

async fn health(npg: &NpgProcess) -> Value {
    let (_, _, body) = get(&format!("{}/api/health", npg.base)).await;
    serde_json::from_slice(&body).unwrap()
}

/// Polls health until `status` is reached (the Redis monitor looks once a second).
async fn wait_health(npg: &NpgProcess, status: &str) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if health(npg).await["status"] == status {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {status}: {}", health(npg).await);
}

fn node(up: &FakeRegistry, redis_url: &str, name: &str) -> NpgProcess {
    NpgProcess::start(
        &up.url(),
        &[
            ("ENABLE_REDIS_CACHE", "true"),
            ("REDIS_URL", redis_url),
            ("INSTANCE_NAME", name),
        ],
    )
}

#[tokio::test]
async fn a_miss_on_one_replica_is_a_hit_on_the_other() {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let (a, b) = (node(&up, &redis.url(), "a"), node(&up, &redis.url(), "b"));
    wait_health(&a, "ok").await;
    wait_health(&b, "ok").await;
    let (status, cache, body_a) = get(&format!("{}/npg-fixture-a", a.proxy_url)).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert_eq!(redis.command(&["EXISTS", "npg:meta:npg-fixture-a"]), ":1\r\n");
    let (status, cache, body_b) = get(&format!("{}/npg-fixture-a", b.proxy_url)).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(
        up.packument_requests("npg-fixture-a"),
        1,
        "the second replica used Redis"
    );
    // Both replicas render the same bytes, but each with its own PROXY_URL.
    let doc_a: Value = serde_json::from_slice(&body_a).unwrap();
    let doc_b: Value = serde_json::from_slice(&body_b).unwrap();
    assert_eq!(doc_a["time"], doc_b["time"]);
    assert!(
        doc_b["versions"]["1.0.0"]["dist"]["tarball"]
            .as_str()
            .unwrap()
            .starts_with(&b.proxy_url)
    );
    // Tarball fetch on b needs the packument: it is in Redis, so still one upstream packument request.
    let (status, _, tgz) = get(&format!("{}/npg-fixture-a/-/npg-fixture-a-1.1.0.tgz", b.proxy_url)).await;
    assert_eq!(status, 200);
    assert_eq!(tgz, up.tarball_bytes("npg-fixture-a", "1.1.0"));
    assert_eq!(up.packument_requests("npg-fixture-a"), 1);
    let clients = redis.command(&["CLIENT", "LIST"]);
    assert!(
        clients.contains("name=npg-a") && clients.contains("name=npg-b"),
        "{clients}"
    );
}

#[tokio::test]
async fn redis_outage_mid_traffic_fails_no_request() {
    let mut redis = RedisServer::start();
    let up = FakeRegistry::start();
    let npg = node(&up, &redis.url(), "solo");
    wait_health(&npg, "ok").await;
    assert_eq!(get(&format!("{}/npg-fixture-a", npg.proxy_url)).await.0, 200);

    redis.stop();
    // Requests during the outage, before and after npg notices it.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let (status, _, _) = get(&format!("{}/npg-fixture-a", npg.proxy_url)).await;
        assert_eq!(status, 200, "request {n} during the outage");
        n += 1;
    }
    let took = wait_health(&npg, "degraded").await;
    assert_eq!(health(&npg).await["redis"], "disconnected");
    for name in ["npg-fixture-b", "@npg-test%2fscoped"] {
        let started = Instant::now();
        let (status, cache, _) = get(&format!("{}/{name}", npg.proxy_url)).await;
        assert_eq!(
            (status, cache.as_str()),
            (200, "MISS"),
            "{name} from upstream without Redis"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a dead Redis does not slow requests"
        );
    }
    let (status, _, _) = get(&format!("{}/npg-fixture-b/-/npg-fixture-b-1.0.1.tgz", npg.proxy_url)).await;
    assert_eq!(status, 200);

    redis.restart();
    wait_health(&npg, "ok").await;
    get(&format!("{}/npg-legacy", npg.proxy_url)).await;
    assert_eq!(
        redis.command(&["EXISTS", "npg:meta:npg-legacy"]),
        ":1\r\n",
        "writes to Redis again"
    );
    eprintln!("{n} requests served during the outage; degraded noticed within {took:?}");
}

#[tokio::test]
async fn starts_and_serves_without_redis_then_connects() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let up = FakeRegistry::start();
    let npg = node(&up, &url, "late");
    assert_eq!(get(&format!("{}/npg-fixture-a", npg.proxy_url)).await.0, 200);
    assert_eq!(health(&npg).await["status"], "degraded");
    redis.restart();
    wait_health(&npg, "ok").await;
    get(&format!("{}/npg-fixture-b", npg.proxy_url)).await;
    assert_eq!(redis.command(&["EXISTS", "npg:meta:npg-fixture-b"]), ":1\r\n");
}

#[tokio::test]
async fn revalidation_is_shared_between_replicas() {
    let redis = RedisServer::start();
    let up = FakeRegistry::start();
    let url = redis.url();
    let a = NpgProcess::start(
        &up.url(),
        &[
            ("ENABLE_REDIS_CACHE", "true"),
            ("REDIS_URL", &url),
            ("INSTANCE_NAME", "a"),
            ("METADATA_TTL", "2s"),
        ],
    );
    let b = NpgProcess::start(
        &up.url(),
        &[
            ("ENABLE_REDIS_CACHE", "true"),
            ("REDIS_URL", &url),
            ("INSTANCE_NAME", "b"),
            ("METADATA_TTL", "2s"),
        ],
    );
    wait_health(&a, "ok").await;
    wait_health(&b, "ok").await;
    get(&format!("{}/npg-fixture-a", a.proxy_url)).await;
    get(&format!("{}/npg-fixture-a", b.proxy_url)).await;
    up.publish("npg-fixture-a", "3.0.0");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // a sees the expiry first and fetches the new document; b then takes it from Redis.
    let (_, cache, body) = get(&format!("{}/npg-fixture-a", a.proxy_url)).await;
    assert_eq!(cache, "MISS");
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["dist-tags"]["latest"], "3.0.0");
    let (_, cache, body) = get(&format!("{}/npg-fixture-a", b.proxy_url)).await;
    assert_eq!(cache, "HIT");
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["dist-tags"]["latest"], "3.0.0");
    assert_eq!(up.packument_requests("npg-fixture-a"), 2);
}

/// `npg health` for container health checks: 0 while npg serves, 1 when it does not answer;
/// `--strict` also fails on `degraded`.
#[tokio::test]
async fn health_probe_exit_codes() {
    let mut redis = RedisServer::start();
    let up = FakeRegistry::start();
    let npg = node(&up, &redis.url(), "probe");
    wait_health(&npg, "ok").await;
    let probe = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_npg"))
            .arg("health")
            .args(args)
            .env_clear()
            .output()
            .unwrap()
    };
    let url = format!("{}/api/health", npg.base);
    assert!(probe(vec!["--url".into(), url.clone()]).status.success());
    assert!(
        probe(vec!["--url".into(), url.clone(), "--strict".into()])
            .status
            .success()
    );
    redis.stop();
    wait_health(&npg, "degraded").await;
    assert!(
        probe(vec!["--url".into(), url.clone()]).status.success(),
        "degraded still serves"
    );
    let strict = probe(vec!["--url".into(), url.clone(), "--strict".into()]);
    assert!(!strict.status.success());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("degraded"));
    let dead = format!("http://127.0.0.1:{}/api/health", support::free_port());
    let out = probe(vec!["--url".into(), dead, "--timeout".into(), "2".into()]);
    assert_eq!(out.status.code(), Some(1));
}
