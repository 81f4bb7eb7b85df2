//! Connection limits through a real npg: deadlines for the first request head (silent
//! sockets, a partial HTTP/2 preface, a TLS handshake then silence), for idle kept-alive
//! connections, and a cap on open connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::npg::NpgProcess;
use crate::support::upstream::FakeRegistry;

const DEADLINES: [(&str, &str); 2] = [("HEADER_READ_TIMEOUT", "2s"), ("KEEPALIVE_TIMEOUT", "2s")];

/// Seconds until the peer closes `s` (read gives 0 or an error), at most `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<f64> {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) if started.elapsed() < limit => return Some(started.elapsed().as_secs_f64()),
            Ok(0) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn connect(npg: &NpgProcess) -> TcpStream {
    TcpStream::connect(("127.0.0.1", npg.port)).unwrap()
}

#[test]
fn silent_connections_are_closed_at_the_head_deadline() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &DEADLINES);
    let mut silent: Vec<TcpStream> = (0..50).map(|_| connect(&npg)).collect();
    let mut preface = connect(&npg);
    preface.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..23]).unwrap();
    let mut half_head = connect(&npg);
    half_head
        .write_all(b"GET /npm/npg-fixture-a HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(6)).is_some(),
            "silent connection {i} still open"
        );
    }
    assert!(
        closed_within(&mut preface, Duration::from_secs(6)).is_some(),
        "23 bytes of preface"
    );
    assert!(
        closed_within(&mut half_head, Duration::from_secs(6)).is_some(),
        "half a request head"
    );
    let took = started.elapsed().as_secs_f64();
    assert!(
        (1.5..6.0).contains(&took),
        "closed after {took:.1} s with a 2 s deadline"
    );
    let (_, metrics) = support::http::raw_get(npg.port, "/metrics");
    // The half head may also be cut by hyper's own header timeout, at the same moment.
    let cut: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("npg_connections_cut_total{deadline=\"head\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no head deadline count: {metrics}"));
    assert!((51..=52).contains(&cut), "{cut} connections cut by the head deadline");
}

#[test]
fn idle_kept_alive_connections_are_closed_busy_ones_are_not() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &DEADLINES);
    let ping = b"GET /-/ping HTTP/1.1\r\nHost: x\r\n\r\n";
    let (mut idle, mut busy) = (connect(&npg), connect(&npg));
    for s in [&mut idle, &mut busy] {
        s.write_all(ping).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).unwrap() > 0);
    }
    // The busy one asks every second for 4 s: never idle for 2 s.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        busy.write_all(ping).unwrap();
        let mut buf = [0u8; 1024];
        assert!(busy.read(&mut buf).unwrap() > 0, "a busy connection was closed");
    }
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).is_some(),
        "idle connection still open"
    );
}

#[test]
fn beyond_max_connections_clients_wait_until_one_closes() {
    let up = FakeRegistry::start();
    let npg = NpgProcess::start(&up.url(), &[("MAX_CONNECTIONS", "5"), ("KEEPALIVE_TIMEOUT", "60s")]);
    let ping = b"GET /-/ping HTTP/1.1\r\nHost: x\r\n\r\n";
    // NpgProcess's readiness probe may hold a slot for a moment: let it go.
    std::thread::sleep(Duration::from_millis(300));
    let mut held: Vec<TcpStream> = (0..5).map(|_| connect(&npg)).collect();
    for s in &mut held {
        s.write_all(ping).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).unwrap() > 0, "one of the first five was not served");
    }
    let mut sixth = connect(&npg);
    sixth.write_all(ping).unwrap();
    sixth.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        sixth.read(&mut buf).is_err(),
        "the sixth connection was served beyond the cap"
    );
    drop(held.pop());
    sixth.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let n = sixth.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "served once a slot was free"
    );
}

#[tokio::test]
async fn a_tls_handshake_then_silence_is_closed() {
    use tokio::io::AsyncReadExt;
    let up = FakeRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::new("npg limits CA");
    let issued = ca.issue(&["localhost"]);
    let cert = support::tls::write_file(dir.path(), "cert.pem", &issued.cert_pem);
    let key = support::tls::write_file(dir.path(), "key.pem", &issued.key_pem);
    let https_port = support::free_port();
    let (cert, key, port) = (
        cert.display().to_string(),
        key.display().to_string(),
        https_port.to_string(),
    );
    let mut env = DEADLINES.to_vec();
    env.extend([
        ("TLS_CERT_FILE", cert.as_str()),
        ("TLS_KEY_FILE", key.as_str()),
        ("HTTPS_PORT", port.as_str()),
    ]);
    let _npg = NpgProcess::start(&up.url(), &env);
    let config = Arc::new(support::tls::client_config(Some(&ca.cert_pem), &["http/1.1"]));
    let mut tls = None;
    for _ in 0..50 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", https_port)).await {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tls = Some(
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .unwrap(),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut tls = tls.expect("HTTPS listener");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(6), tls.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "still open after the handshake: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// `mib` MiB of zeros, gzip'd by the system's `gzip` (fast even in a debug test build).
fn gzip_bomb(mib: usize) -> Vec<u8> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .arg("-9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let zeros = vec![b'0'; 1 << 20];
        for _ in 0..mib {
            stdin.write_all(&zeros).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.stdout
}

/// Peak resident memory of a process, in MiB.
fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

const BOUNDED: [(&str, &str); 2] = [("MAX_PACKUMENT_MB", "256"), ("RENDER_MEMORY_MB", "64")];

#[tokio::test]
async fn gzip_bombs_from_upstream_stay_within_the_render_budget() {
    let up = FakeRegistry::start();
    let bomb = gzip_bomb(300);
    assert!(bomb.len() < 1 << 20, "a bomb: {} bytes of gzip", bomb.len());
    let names: Vec<String> = (0..4).map(|i| format!("npg-bomb-{i}")).collect();
    for name in &names {
        up.set_raw_packument_gzip(name, bomb.clone());
    }
    let npg = NpgProcess::start(&up.url(), &BOUNDED);
    let before = peak_mib(npg.pid());
    let urls: Vec<String> = names.iter().map(|name| format!("{}/{name}", npg.proxy_url)).collect();
    let requests = urls.iter().map(|url| support::http::get(url, &[]));
    let (replies, ping) = tokio::join!(futures_util::future::join_all(requests), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        support::http::get(&format!("{}/-/ping", npg.base), &[]).await
    });
    let peak = peak_mib(npg.pid());
    println!("VmHWM before {before} MiB, after four 300 MiB bombs {peak} MiB");
    for r in &replies {
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["reason"].as_str().unwrap().contains("budget"), "{}", r.json());
    }
    assert_eq!(ping.status, 200, "npg answers while the bombs go off");
    // The budget bounds what is counted; a reader waiting for room is not counted, and a
    // buffer's reallocation briefly holds two copies: at most about 3 x 64 MiB above start.
    assert!(
        peak < before + 3 * 64 + 32,
        "peak RSS {peak} MiB with a 64 MiB render budget"
    );
}

/// npg with Redis, `env` besides.
fn start_with_redis(redis: &support::redis::RedisServer, env: &[(&str, &str)]) -> (FakeRegistry, NpgProcess) {
    let (up, url) = (FakeRegistry::start(), redis.url());
    let mut all = vec![("ENABLE_REDIS_CACHE", "true"), ("REDIS_URL", url.as_str())];
    all.extend_from_slice(env);
    let npg = NpgProcess::start(&up.url(), &all);
    (up, npg)
}

/// Plants a fresh document of `name` in npg's Redis: `body`, or `repeat` bytes built inside
/// Redis (through the client they would outlast its response timeout).
async fn plant(redis: &support::redis::RedisServer, name: &str, body: &[u8], repeat: usize) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let client = redis::Client::open(redis.url()).unwrap();
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let script = "local body = ARGV[2] \
                  if ARGV[3] ~= '0' then body = string.rep('x', tonumber(ARGV[3])) end \
                  redis.call('HSET', KEYS[1], 'body', body, 'etag', '', 'fetched', ARGV[1], 'checked', ARGV[1])";
    let _: () = redis::Script::new(script)
        .key(format!("npg:meta:{name}"))
        .arg(&now)
        .arg(body)
        .arg(repeat)
        .invoke_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_gzip_bomb_in_redis_is_refused_and_fetched_again() {
    let redis = support::redis::RedisServer::start();
    let (up, npg) = start_with_redis(&redis, &BOUNDED);
    plant(&redis, "npg-fixture-a", &gzip_bomb(300), 0).await;
    let r = support::http::get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-cache"), "MISS", "fetched from upstream instead of the bomb");
    assert_eq!(up.packument_requests("npg-fixture-a"), 1);
    let peak = peak_mib(npg.pid());
    println!("VmHWM after a 300 MiB bomb in Redis: {peak} MiB");
    assert!(peak < 150, "peak RSS {peak} MiB after the bomb in Redis");
}

/// A huge entry in Redis (planted, or corrupted) is not even read: its size is checked first.
#[tokio::test]
async fn an_oversized_document_in_redis_is_not_read() {
    let redis = support::redis::RedisServer::start();
    let (_up, npg) = start_with_redis(&redis, &[("MAX_PACKUMENT_MB", "16")]);
    let before = peak_mib(npg.pid());
    plant(&redis, "npg-fixture-a", b"", 96 << 20).await;
    let r = support::http::get(&format!("{}/npg-fixture-a", npg.proxy_url), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-cache"), "MISS", "fetched from upstream instead");
    let peak = peak_mib(npg.pid());
    println!("VmHWM before {before} MiB, after a 96 MiB entry in Redis {peak} MiB");
    assert!(peak < before + 48, "peak RSS {peak} MiB: the entry was read");
}

/// The count of connections cut by `deadline`, from /metrics.
fn cut_by(npg: &NpgProcess, deadline: &str) -> u64 {
    let (_, metrics) = support::http::raw_get(npg.port, "/metrics");
    let prefix = format!("npg_connections_cut_total{{deadline=\"{deadline}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A client that asks for a large body and stops reading is cut at SEND_TIMEOUT; a client
/// whose body waits for a slow upstream is not.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_send_deadline() {
    use crate::support::blob_registry::{Blob, BlobRegistry, sri};
    let up = BlobRegistry::start();
    let (big, slow) = (vec![7u8; 64 << 20], vec![9u8; 192 << 10]);
    let blob = |version, file, bytes: &Vec<u8>| Blob {
        version,
        file,
        bytes: bytes.clone(),
        integrity: Some(sri(bytes)),
    };
    up.set_package("big", vec![blob("1.0.0", "big-1.0.0.tgz", &big)]);
    up.set_package("slow", vec![blob("1.0.0", "slow-1.0.0.tgz", &slow)]);
    let npg = NpgProcess::start(&up.url(), &[("SEND_TIMEOUT", "2s")]);
    let url = format!("{}/big/-/big-1.0.0.tgz", npg.proxy_url);
    assert_eq!(support::http::get(&url, &[]).await.body.len(), big.len(), "cached");

    let mut stalled = connect(&npg);
    stalled
        .write_all(b"GET /npm/big/-/big-1.0.0.tgz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    up.set_pause(Duration::from_millis(1500));
    let waiting = support::http::get(&format!("{}/slow/-/slow-1.0.0.tgz", npg.proxy_url), &[]).await;
    assert_eq!(waiting.status, 200);
    assert_eq!(
        waiting.body, slow,
        "a body waiting 1.5 s per chunk for upstream is not cut"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cut_by(&npg, "send") == 0 {
        assert!(Instant::now() < deadline, "the stalled client was never cut");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cut_by(&npg, "send"), 1, "only the stalled client");
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).is_some());
}

/// The kernel send buffer of npg's end of each client connection (`ss`'s `tb`, which the
/// kernel sets to twice what was asked).
fn server_send_buffer(npg: &NpgProcess, client: &TcpStream) -> u64 {
    let filter = format!(
        "( sport = :{} and dport = :{} )",
        npg.port,
        client.local_addr().unwrap().port()
    );
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established", &filter])
        .output()
        .expect("ss (iproute2, scripts/install-test-deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    let tb = text.split(['(', ',', ')']).find_map(|f| f.strip_prefix("tb"));
    tb.unwrap_or_else(|| panic!("no skmem in {text}")).parse().unwrap()
}

#[test]
fn send_buffer_kb_sets_each_connections_send_buffer() {
    let up = FakeRegistry::start();
    for (setting, expected) in [(None, None), (Some("64"), Some(2 * 64 * 1024))] {
        let env: Vec<(&str, &str)> = setting.map(|kb| ("SEND_BUFFER_KB", kb)).into_iter().collect();
        let npg = NpgProcess::start(&up.url(), &env);
        let mut s = connect(&npg);
        s.write_all(b"GET /-/ping HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(s.read(&mut [0u8; 1024]).unwrap() > 0);
        let tb = server_send_buffer(&npg, &s);
        match expected {
            Some(bytes) => assert_eq!(tb, bytes, "SEND_BUFFER_KB={setting:?}"),
            None => assert_ne!(tb, 2 * 64 * 1024, "the kernel's own sizing by default"),
        }
    }
}
