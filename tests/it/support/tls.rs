//! TLS test tools: a throwaway CA issuing certificates (rcgen), a probe that handshakes with a
//! server and reports the leaf certificate it presented (tokio-rustls + x509-parser), HTTPS
//! clients that trust a given root and resolve a name to a given address (reqwest), and
//! `TlsNode`, the npg binary started on a chosen loopback address with TLS settings and its logs
//! kept (printed when the test fails).
//!
//! ```ignore
//! let leaf = tls::probe(node.https_addr(), Some("npg.test"), Some(&root_pem)).await?;
//! let client = tls::https_client(&root_pem, "npg.test", node.https_addr());
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

use super::npg::{NpgProcess, log_level};

/// How long one TLS handshake (connect included) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// --- A throwaway CA ---------------------------------------------------------------------------

/// A self-signed CA (P-256) that issues server certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A certificate and its private key, both PEM (the key as PKCS#8 `PRIVATE KEY`).
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), with rcgen's default
    /// validity (1975 to 4096).
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Writes `contents` to `dir/name`, returning the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

// --- The probe --------------------------------------------------------------------------------

/// What a server presented in one handshake.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The leaf's serial number: lowercase hex, no separators, no leading zeros.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
    pub issuer: String,
    /// How many certificates the server sent (leaf included).
    pub chain_len: usize,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// "TLSv1_2" or "TLSv1_3".
    pub version: String,
}

impl Leaf {
    /// Seconds of validity the certificate had when issued.
    pub fn lifetime(&self) -> i64 {
        self.not_after - self.not_before
    }
}

/// Lowercase hex without separators or leading zeros, for comparing serials written any way.
pub fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0".into() } else { trimmed.into() }
}

/// Parses a DER certificate into a `Leaf` (the connection fields left empty).
pub fn parse_leaf(der: &[u8]) -> Leaf {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).expect("leaf certificate is X.509 DER");
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string()),
                        16 => Some(IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Leaf {
        serial: normalize_serial(&cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect::<String>()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        names,
        issuer: cert.issuer().to_string(),
        chain_len: 1,
        alpn: None,
        version: String::new(),
    }
}

/// The certificates of a PEM bundle, DER.
pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// A rustls client config trusting the certificates of `root_pem`, or trusting anything when
/// None (to look at what a server presents without an SNI it could be verified against).
pub fn client_config(root_pem: Option<&str>, alpn: &[&str]) -> rustls::ClientConfig {
    install_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let mut config = match root_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in pem_certs(pem) {
                roots.add(cert).expect("root certificate");
            }
            assert!(!roots.is_empty(), "no certificate in the root PEM");
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// Handshakes with `addr` (SNI `sni`, none when None) and reports the leaf it presented.
/// `root_pem` None skips verification. Errors are the connect/handshake error as text.
pub async fn probe(addr: SocketAddr, sni: Option<&str>, root_pem: Option<&str>) -> Result<Leaf, String> {
    probe_with(addr, sni, root_pem, &["h2", "http/1.1"]).await
}

/// `probe` offering these ALPN protocols.
pub async fn probe_with(
    addr: SocketAddr,
    sni: Option<&str>,
    root_pem: Option<&str>,
    alpn: &[&str],
) -> Result<Leaf, String> {
    handshake(addr, sni, client_config(root_pem, alpn)).await
}

/// `probe` with a client that speaks TLS 1.2 only.
pub async fn probe_tls12(addr: SocketAddr, sni: Option<&str>, root_pem: &str) -> Result<Leaf, String> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(root_pem) {
        roots.add(cert).expect("root certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    handshake(addr, sni, config).await
}

/// Connects and handshakes with `config`, reporting the leaf and what was negotiated.
pub async fn handshake(addr: SocketAddr, sni: Option<&str>, config: rustls::ClientConfig) -> Result<Leaf, String> {
    let config = Arc::new(config);
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_string()).map_err(|e| format!("bad SNI {name}: {e}"))?,
        // An IP address as the server name: rustls sends no SNI then.
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} (SNI {sni:?}): {e}"))?;
        let (_, conn) = tls.get_ref();
        let chain = conn.peer_certificates().ok_or("no peer certificate")?;
        let mut leaf = parse_leaf(&chain[0]);
        leaf.chain_len = chain.len();
        leaf.alpn = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        leaf.version = conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
        Ok(leaf)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "TLS handshake with {addr} timed out after {HANDSHAKE_TIMEOUT:?}"
            ))
        })
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// --- HTTPS clients ----------------------------------------------------------------------------

/// An HTTPS client trusting only `root_pem`, resolving `host` to `addr`, not following
/// redirects, leaving gzip bodies encoded, each request bounded to 15 s.
pub fn https_client(root_pem: &str, host: &str, addr: SocketAddr) -> reqwest::Client {
    https_client_builder(root_pem, host, addr)
        .build()
        .expect("reqwest HTTPS client")
}

/// `https_client` before `build()`, to change more (e.g. `pool_max_idle_per_host(0)`: a new
/// connection, so a new handshake, for every request).
pub fn https_client_builder(root_pem: &str, host: &str, addr: SocketAddr) -> reqwest::ClientBuilder {
    install_provider();
    let roots = reqwest::Certificate::from_pem_bundle(root_pem.as_bytes()).expect("root PEM");
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .resolve(host, addr)
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .timeout(Duration::from_secs(15))
}

/// A JS file for `NODE_OPTIONS=--require <file>`: makes `dns.lookup` (what npm, pnpm and yarn
/// connect through) answer `ip` for `host`, leaving every other name alone.
pub fn node_resolve_script(dir: &Path, host: &str, ip: IpAddr) -> PathBuf {
    let family = if ip.is_ipv4() { 4 } else { 6 };
    let script = format!(
        r#"'use strict';
const dns = require('dns');
const original = dns.lookup;
dns.lookup = function lookup(hostname, options, callback) {{
  if (typeof options === 'function') {{ callback = options; options = {{}}; }}
  if (typeof options === 'number') {{ options = {{ family: options }}; }}
  if (String(hostname).toLowerCase() === {host:?}) {{
    if (options && options.all) {{
      return process.nextTick(callback, null, [{{ address: {ip:?}, family: {family} }}]);
    }}
    return process.nextTick(callback, null, {ip:?}, {family});
  }}
  return original.call(this, hostname, options || {{}}, callback);
}};
"#,
        host = host.to_ascii_lowercase(),
        ip = ip.to_string(),
    );
    write_file(dir, &format!("resolve-{host}.js"), &script)
}

/// A plain-HTTP client that does not follow redirects, each request bounded to 15 s.
pub fn plain_client() -> reqwest::Client {
    install_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

/// GET with `client`; the error is the request error as text (with its sources).
pub async fn get(client: &reqwest::Client, url: &str) -> Result<super::http::Reply, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: body: {}", error_chain(&e)))?
        .to_vec();
    Ok(super::http::Reply { status, headers, body })
}

pub use npg::upstream::error_chain;

// --- npg with TLS -----------------------------------------------------------------------------

/// The npg binary on `bind` (a loopback address: several replicas can share ports on
/// 127.0.0.2, 127.0.0.3, ...), with its stdout and stderr kept in a file, printed when the test
/// panics while it runs.
pub struct TlsNode {
    child: Child,
    pub name: String,
    pub bind: IpAddr,
    pub http_port: u16,
    pub https_port: u16,
    /// `http://<bind>:<http_port>`
    pub http_base: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a `TlsNode` is started with.
pub struct NodeOptions<'a> {
    pub name: &'a str,
    pub registry_url: &'a str,
    pub bind: IpAddr,
    pub http_port: u16,
    pub https_port: u16,
    /// Extra env, overriding the defaults (NPG_DOMAIN, ACME_*, REDIS_URL, ...).
    pub env: &'a [(&'a str, &'a str)],
}

impl TlsNode {
    /// The node's STORAGE_DIR.
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("storage")
    }

    /// Starts npg with the tests' environment (`NpgProcess::command`: no Redis, no feed) on
    /// `<bind>:<http_port>`, plus `INSTANCE_NAME`, `HTTPS_PORT`,
    /// `PROXY_URL=https://npg.test:<https_port>/npm` and `LOG_LEVEL=info` (kept for a failing
    /// test), then `opts.env`. Waits until the HTTP port accepts connections (not for a
    /// certificate: see `wait_certificate`).
    pub fn start(opts: NodeOptions<'_>) -> TlsNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let log_path = dir.path().join("npg.log");
        let log = std::fs::File::create(&log_path).expect("npg log file");
        let http = SocketAddr::new(opts.bind, opts.http_port);
        let mut cmd = NpgProcess::command(opts.registry_url, http, &storage);
        cmd.env("INSTANCE_NAME", opts.name)
            .env("HTTPS_PORT", opts.https_port.to_string())
            .env("PROXY_URL", format!("https://npg.test:{}/npm", opts.https_port))
            .env("LOG_LEVEL", log_level("info"))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn npg");
        let mut node = TlsNode {
            child,
            name: opts.name.to_string(),
            bind: opts.bind,
            http_port: opts.http_port,
            https_port: opts.https_port,
            http_base: format!("http://{}:{}", opts.bind, opts.http_port),
            log_path,
            _dir: dir,
        };
        node.wait_listening(Duration::from_secs(20));
        node
    }

    fn wait_listening(&mut self, timeout: Duration) {
        let addr = SocketAddr::new(self.bind, self.http_port);
        if let Err(why) = super::wait_listening(addr, &mut self.child, timeout) {
            panic!(
                "npg {} did not listen on {addr}: {why}\n--- npg log:\n{}",
                self.name,
                self.logs()
            );
        }
    }

    /// `<bind>:<https_port>`
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.https_port)
    }

    /// `https://npg.test:<https_port>`: use with `https_client(root, "npg.test", https_addr())`.
    pub fn https_base(&self) -> String {
        format!("https://npg.test:{}", self.https_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything npg wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `/api/health` over plain HTTP (served there whatever HTTP_REDIRECT says).
    pub async fn health(&self) -> Value {
        let url = format!("{}/api/health", self.http_base);
        let reply = get(&plain_client(), &url)
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- npg {} log:\n{}", self.name, self.logs()));
        serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
            panic!(
                "health of {} is not JSON ({e}, status {}): {}",
                self.name,
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )
        })
    }

    /// Polls health until `tls.certificates` has an entry for `domain` with a serial for which
    /// `accept` holds; returns that entry. Panics with the last health and the log on timeout.
    pub async fn wait_certificate(&self, domain: &str, timeout: Duration, accept: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.health().await;
            if let Some(cert) = health_certificate(&last, domain)
                && cert["serial"].as_str().is_some_and(|s| accept(&normalize_serial(s)))
            {
                return cert.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "npg {}: no (accepted) certificate for {domain} in health within {timeout:?}; last \
             health: {last}\n--- npg log:\n{}",
            self.name,
            self.logs()
        );
    }
}

/// The `tls.certificates` entry of a health document for `domain`.
pub fn health_certificate<'a>(health: &'a Value, domain: &str) -> Option<&'a Value> {
    health["tls"]["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["domain"] == domain)
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- npg {} log ({}):\n{}", self.name, self.bind, self.logs());
        }
    }
}

/// A port free on every one of `ips` (TCP), for replicas sharing port numbers.
pub fn free_port_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..100 {
        let port = super::free_port();
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}
