//! Runs the real `npg` binary (built by cargo for the tests) as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NpgProcess {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// The public registry URL clients use: `http://127.0.0.1:<port>/npm`
    pub proxy_url: String,
    pub storage: PathBuf,
    _storage_dir: Option<tempfile::TempDir>,
}

impl NpgProcess {
    /// Starts npg against `registry_url` with a fresh storage dir, Redis off unless `env` says
    /// otherwise; `env` entries override the defaults. Waits until `/api/health` answers.
    pub fn start(registry_url: &str, env: &[(&str, &str)]) -> NpgProcess {
        let dir = tempfile::tempdir().expect("temp storage dir");
        let storage = dir.path().to_path_buf();
        Self::start_with_storage(registry_url, env, storage, Some(dir))
    }

    /// Like `start`, with a storage dir the caller owns (shared by several instances).
    pub fn start_with_storage(
        registry_url: &str,
        env: &[(&str, &str)],
        storage: PathBuf,
        owned: Option<tempfile::TempDir>,
    ) -> NpgProcess {
        let addr = super::loopback(super::free_port());
        let base = format!("http://{addr}");
        let proxy_url = format!("{base}/npm");
        let mut cmd = Self::command(registry_url, addr, &storage);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn npg");
        let mut npg = NpgProcess {
            child,
            port: addr.port(),
            base,
            proxy_url,
            storage,
            _storage_dir: owned,
        };
        npg.wait_ready(Duration::from_secs(20));
        npg
    }

    /// The npg command with the tests' environment (nothing inherited but PATH), listening on
    /// `addr`, not started: every npg a test starts (`TlsNode` too) gets its defaults here.
    pub fn command(registry_url: &str, addr: SocketAddr, storage: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_npg"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REGISTRY_URL", registry_url)
            .env("HTTP_BIND", addr.ip().to_string())
            .env("HTTP_PORT", addr.port().to_string())
            .env("PROXY_URL", format!("http://{addr}/npm"))
            .env("STORAGE_DIR", storage)
            .env("ENABLE_REDIS_CACHE", "false")
            // No test reaches the real malware feed (nor loads a copy left in ./var): the feed
            // tests pass their own URL, list dir and schedule.
            .env("MALWARE_FEED_URL", "http://127.0.0.1:9/malware_predictions.json")
            .env("MALWARE_LIST_DIR", storage.join(".malware-list"))
            .env("ENABLE_SCHEDULED_UPDATES", "false")
            // Nor the registry keys: the signature tests turn the policy on themselves.
            .env("SIGNATURE_POLICY", "off")
            .env("LOG_LEVEL", log_level("warn"))
            .stdin(Stdio::null());
        cmd
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let addr = super::loopback(self.port);
        if let Err(why) = super::wait_listening(addr, &mut self.child, timeout) {
            panic!("npg did not listen on port {}: {why}", self.port);
        }
    }

    /// A counter of `/metrics` (the sum of the lines that start with `line`).
    pub async fn metric(&self, line: &str) -> f64 {
        let body = super::http::get(&format!("{}/metrics", self.base), &[]).await.body;
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(line))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process (e.g. "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit, returning its status, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// npg's LOG_LEVEL in the tests: `NPG_TEST_LOG` when set, else `default`.
pub fn log_level(default: &str) -> String {
    std::env::var("NPG_TEST_LOG").unwrap_or_else(|_| default.into())
}

impl Drop for NpgProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hash `npg hash-token` prints for `token` (what operators put in the file).
pub fn hash_token(token: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_npg"))
        .arg("hash-token")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run npg hash-token");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{token}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "npg hash-token failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
