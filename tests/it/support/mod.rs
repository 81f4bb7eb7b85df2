//! Test support shared by the integration tests: real processes (npg, redis-server, an S3
//! server) started on free loopback ports and stopped by PID, and an in-process fake upstream
//! registry.

pub mod blob_registry;
pub mod changes_feed;
pub mod clients;
pub mod feed_server;
pub mod guarded;
pub mod hostile;
pub mod http;
pub mod npg;
pub mod pebble;
pub mod redis;
pub mod s3;
pub mod sentinel;
pub mod server;
pub mod tls;
pub mod upstream;

/// Polls `cond` every 50 ms until it holds; panics with `what` after `timeout`. Returns the
/// time it took.
pub async fn wait_for(
    timeout: std::time::Duration,
    what: &str,
    mut cond: impl AsyncFnMut() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !cond().await {
        assert!(started.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Bytes that do not compress and differ per `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests that start at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// `127.0.0.1:<port>`
pub fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts connections on `addr`; `Err` says why not: the child
/// exited, or the time ran out.
pub fn wait_listening(
    addr: std::net::SocketAddr,
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status})"));
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    Err(format!("not within {timeout:?}"))
}

/// Path of a required external binary, or a loud failure naming the install script.
pub fn require_binary(name: &str) -> std::path::PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&paths) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run scripts/install-test-deps (it installs every tool the tests need)");
}
