//! Debian's pebble (a test ACME server) and pebble-challtestsrv (its DNS mock), started on free
//! loopback ports, stopped by PID on drop, their logs printed when the test panics.
//!
//! Debian ships no certificates for pebble's own HTTPS listener: `start` makes a CA and a
//! listener certificate for `localhost`, `127.0.0.1` and `::1` in a temp dir (`ca_file()` is what
//! ACME_CA_FILE must trust). The root of the certificates pebble *issues* is new at every start:
//! `issuing_root_pem()` fetches it from the management API.
//!
//! Validation: pebble resolves every name through the DNS mock, which answers every A query with
//! `PebbleOptions::dns_ipv4` (and no AAAA), and connects to `<that address>:<http_port>` for
//! HTTP-01 and `<that address>:<tls_port>` for TLS-ALPN-01: npg's HTTP_PORT and HTTPS_PORT.
//!
//! ```ignore
//! let pebble = Pebble::start(PebbleOptions { http_port, tls_port, ..Default::default() });
//! env ACME_DIRECTORY_URL=pebble.directory_url(), ACME_CA_FILE=pebble.ca_file()
//! let root = pebble.issuing_root_pem();
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::{TestCa, write_file};

/// How pebble is started.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// The port HTTP-01 validation connects to (npg's HTTP_PORT).
    pub http_port: u16,
    /// The port TLS-ALPN-01 validation connects to (npg's HTTPS_PORT).
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds; None keeps pebble's default (5 years).
    pub validity_secs: Option<u64>,
    /// The address the DNS mock gives for every name (where npg listens).
    pub dns_ipv4: Ipv4Addr,
    /// Extra environment for pebble (e.g. `PEBBLE_AUTHZREUSE`). PEBBLE_VA_NOSLEEP=1 is always
    /// set; nonce rejection keeps pebble's default (5 % of nonces rejected as `badNonce`).
    pub env: Vec<(String, String)>,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            http_port: 5002,
            tls_port: 5001,
            validity_secs: None,
            dns_ipv4: Ipv4Addr::LOCALHOST,
            env: Vec::new(),
        }
    }
}

pub struct Pebble {
    pebble: Option<Child>,
    dns: Option<Child>,
    /// pebble's ACME port on 127.0.0.1.
    pub acme_port: u16,
    /// pebble's management API port on 127.0.0.1.
    pub management_port: u16,
    /// The DNS mock's port (UDP and TCP) on 127.0.0.1.
    pub dns_port: u16,
    dir: tempfile::TempDir,
    ca_pem: String,
}

/// How long pebble may take to answer its directory after start (it needs ~2 s).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Pebble {
    /// Starts the DNS mock and pebble; returns once pebble's directory answers. Panics, naming
    /// scripts/install-test-deps, when `pebble` or `pebble-challtestsrv` is missing.
    pub fn start(opts: PebbleOptions) -> Pebble {
        let pebble_bin = super::require_binary("pebble");
        let dns_bin = super::require_binary("pebble-challtestsrv");
        let dir = tempfile::Builder::new()
            .prefix("npg-pebble-")
            .tempdir()
            .expect("pebble temp dir");

        let ca = TestCa::new("npg test pebble listener CA");
        let listener = ca.issue(&["localhost", "127.0.0.1", "::1"]);
        write_file(dir.path(), "ca.pem", &ca.cert_pem);
        let cert = write_file(dir.path(), "cert.pem", &listener.cert_pem);
        let key = write_file(dir.path(), "key.pem", &listener.key_pem);

        let acme_port = super::free_port();
        let management_port = free_port_except(&[acme_port]);
        let dns_port = free_udp_and_tcp_port(&[acme_port, management_port]);
        let dns_management_port = free_port_except(&[acme_port, management_port, dns_port]);

        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": opts.http_port,
                "tlsPort": opts.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(secs) = opts.validity_secs {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        let config_path = write_file(
            dir.path(),
            "pebble-config.json",
            &serde_json::to_string_pretty(&config).unwrap(),
        );

        let dns = Command::new(&dns_bin)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .args(["-defaultIPv4", &opts.dns_ipv4.to_string(), "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "challtestsrv.log"))
            .stderr(log_file(dir.path(), "challtestsrv.log"))
            .spawn()
            .expect("spawn pebble-challtestsrv");

        let mut cmd = Command::new(&pebble_bin);
        cmd.arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}"), "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "pebble.log"))
            .stderr(log_file(dir.path(), "pebble.log"))
            .current_dir(dir.path());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let pebble = cmd.spawn().expect("spawn pebble");

        let mut server = Pebble {
            pebble: Some(pebble),
            dns: Some(dns),
            acme_port,
            management_port,
            dns_port,
            dir,
            ca_pem: ca.cert_pem,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut exited = None;
            if let Some(Ok(Some(status))) = self.pebble.as_mut().map(Child::try_wait) {
                exited = Some(("pebble", status));
            }
            if let Some(Ok(Some(status))) = self.dns.as_mut().map(Child::try_wait) {
                exited = Some(("pebble-challtestsrv", status));
            }
            if let Some((name, status)) = exited {
                panic!("{name} exited ({status}) at start\n{}", self.logs());
            }
            match self.get("acme", "/dir") {
                Ok((200, body)) if body.contains("newOrder") && self.dns_answers() => return,
                Ok((status, body)) => last = format!("{status}: {body}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "pebble's directory did not answer within {START_TIMEOUT:?} (last: {last})\n{}",
            self.logs()
        );
    }

    fn dns_answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.dns_port)).is_ok()
    }

    /// `https://127.0.0.1:<port>/dir` (ACME_DIRECTORY_URL).
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The PEM file of the CA of pebble's own HTTPS listener (ACME_CA_FILE).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root of the certificates this pebble issues (new at every start), PEM.
    pub fn issuing_root_pem(&self) -> String {
        self.management_pem("/roots/0")
    }

    /// Writes the issuing root to a file in pebble's temp dir (for NODE_EXTRA_CA_CERTS).
    pub fn issuing_root_file(&self) -> PathBuf {
        write_file(self.dir.path(), "issuing-root.pem", &self.issuing_root_pem())
    }

    fn management_pem(&self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.get("management", path) {
                Ok((200, body)) if body.contains("BEGIN CERTIFICATE") => return body,
                other if Instant::now() > deadline => {
                    panic!("pebble management {path}: {other:?}\n{}", self.logs())
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// GET on pebble's ACME ("acme") or management ("management") listener, trusting the
    /// listener CA: (status, body), or the error as text.
    pub fn get(&self, listener: &str, path: &str) -> Result<(u16, String), String> {
        let port = match listener {
            "acme" => self.acme_port,
            "management" => self.management_port,
            other => panic!("no pebble listener {other}"),
        };
        let url = format!("https://127.0.0.1:{port}{path}");
        let ca = self.ca_pem.clone();
        block_on(async move {
            super::tls::install_provider();
            let roots = reqwest::Certificate::from_pem_bundle(ca.as_bytes()).map_err(|e| e.to_string())?;
            let client = reqwest::Client::builder()
                .tls_certs_only(roots)
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", super::tls::error_chain(&e)))?;
            let status = resp.status().as_u16();
            Ok((status, resp.text().await.map_err(|e| e.to_string())?))
        })
    }

    /// pebble's and the DNS mock's output so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- pebble log:\n{}\n--- pebble-challtestsrv log:\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }

    /// pebble's own log only.
    pub fn pebble_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The serials of the certificates pebble issued so far, in order (from its log: an
    /// order count that does not rely on npg's own counter).
    pub fn issued_serials(&self) -> Vec<String> {
        self.pebble_log()
            .lines()
            .filter_map(|l| l.split_once("Issued certificate serial ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(super::tls::normalize_serial)
            .collect()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for mut child in [self.pebble.take(), self.dns.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("pebble log file")
}

fn free_port_except(taken: &[u16]) -> u16 {
    loop {
        let port = super::free_port();
        if !taken.contains(&port) {
            return port;
        }
    }
}

fn free_udp_and_tcp_port(taken: &[u16]) -> u16 {
    for _ in 0..100 {
        let port = free_port_except(taken);
        if std::net::UdpSocket::bind((IpAddr::from(Ipv4Addr::LOCALHOST), port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// Runs a future to completion on a fresh thread with its own runtime: usable from plain tests
/// and from inside a tokio runtime alike.
pub fn block_on<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut)
    })
    .join()
    .expect("block_on thread panicked")
}
