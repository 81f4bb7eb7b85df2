//! TLS session resumption across replicas: two npg with the same static certificate and one
//! real Redis share their ticket keys, so a session a client made with the first resumes on
//! the second (TLS 1.3 and TLS 1.2); without a shared Redis it resumes on the same replica
//! only; with NPG_SECRET_KEY_FILE the keys in Redis are sealed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::HandshakeKind;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::redis::RedisServer;
use crate::support::tls::{self, NodeOptions, TestCa, TlsNode};
use crate::support::upstream::FakeRegistry;

const DOMAIN: &str = "npg.test";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The certificate both replicas serve, its files and the CA that issued it.
struct Certificate {
    ca: TestCa,
    cert: String,
    key: String,
    dir: tempfile::TempDir,
}

fn certificate() -> Certificate {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("npg test resumption CA");
    let issued = ca.issue(&[DOMAIN]);
    let cert = tls::write_file(dir.path(), "cert.pem", &issued.cert_pem);
    let key = tls::write_file(dir.path(), "key.pem", &issued.key_pem);
    Certificate {
        ca,
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        dir,
    }
}

/// Replicas `127.0.0.<last>` (same ports) serving `cert`, with `env` besides.
fn replicas(up: &FakeRegistry, cert: &Certificate, lasts: &[u8], env: &[(&str, &str)]) -> Vec<TlsNode> {
    let ips: Vec<IpAddr> = lasts.iter().map(|l| loopback(*l)).collect();
    let http = tls::free_port_on(&ips);
    let https = loop {
        let p = tls::free_port_on(&ips);
        if p != http {
            break p;
        }
    };
    let mut all = vec![
        ("TLS_CERT_FILE", cert.cert.as_str()),
        ("TLS_KEY_FILE", cert.key.as_str()),
    ];
    all.extend_from_slice(env);
    lasts
        .iter()
        .map(|last| {
            TlsNode::start(NodeOptions {
                name: &format!("npg{last}"),
                registry_url: &up.url(),
                bind: loopback(*last),
                http_port: http,
                https_port: https,
                env: &all,
            })
        })
        .collect()
}

/// A client speaking only `version`, trusting the test CA, with one session store for every
/// connection made with it.
fn client(root_pem: &str, version: &'static rustls::SupportedProtocolVersion) -> Arc<rustls::ClientConfig> {
    tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls::pem_certs(root_pem) {
        roots.add(cert).expect("root certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects to `node` with `config`, reads a whole response (so the TLS 1.3 tickets sent
/// after the handshake are taken) and tells how the handshake went.
async fn visit(node: &TlsNode, config: &Arc<rustls::ClientConfig>) -> HandshakeKind {
    let addr: SocketAddr = node.https_addr();
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(DOMAIN).unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("handshake with {}: {e}\n{}", node.name, node.logs()));
        stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: npg.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "{}: {text}", node.name);
        stream.get_ref().1.handshake_kind().expect("handshake done")
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .unwrap_or_else(|_| panic!("visit to {} timed out\n{}", node.name, node.logs()))
}

fn versions() -> [(&'static str, &'static rustls::SupportedProtocolVersion); 2] {
    [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ]
}

/// npg1 and npg2 on one Redis: a session made with npg1 resumes on npg2, and one made with
/// npg2 on npg1, in TLS 1.3 and in TLS 1.2.
#[tokio::test]
async fn a_session_from_one_replica_resumes_on_another() {
    let up = FakeRegistry::start();
    let redis = RedisServer::start();
    let cert = certificate();
    let url = redis.url();
    // A key of a period long past, left by an earlier run: deleted by the replicas.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let old = format!("npg:tls:ticket-key:{}", now.as_secs() / (12 * 3600) - 3);
    redis.command(&["SET", &old, "left over"]);
    let env = [("ENABLE_REDIS_CACHE", "true"), ("REDIS_URL", url.as_str())];
    let nodes = replicas(&up, &cert, &[2, 3], &env);
    let (npg1, npg2) = (&nodes[0], &nodes[1]);
    for (name, version) in versions() {
        let config = client(&cert.ca.cert_pem, version);
        assert_eq!(visit(npg1, &config).await, HandshakeKind::Full, "{name}: first visit");
        assert_eq!(
            visit(npg2, &config).await,
            HandshakeKind::Resumed,
            "{name}: npg1's session resumes on npg2\n--- npg1:\n{}\n--- npg2:\n{}",
            npg1.logs(),
            npg2.logs()
        );
        assert_eq!(
            visit(npg1, &config).await,
            HandshakeKind::Resumed,
            "{name}: and npg2's on npg1"
        );
    }
    let keys = redis.command(&["KEYS", "*tls:ticket-key:*"]);
    assert!(
        keys.starts_with("*2\r\n") && !keys.contains(&old),
        "the current and the next period's key, the old one gone: {keys:?}"
    );
    for name in keys.lines().filter(|l| l.contains("ticket-key")) {
        // Cluster state, not cache: never evicted under `volatile-lru`.
        assert_eq!(redis.command(&["TTL", name]).trim(), ":-1", "{name} has no TTL");
    }
}

/// Two replicas each alone (no Redis): a session resumes on the replica that made it, and the
/// other one makes a full handshake.
#[tokio::test]
async fn without_a_shared_redis_a_session_resumes_only_where_it_was_made() {
    let up = FakeRegistry::start();
    let cert = certificate();
    let nodes = replicas(&up, &cert, &[4, 5], &[]);
    let (npg1, npg2) = (&nodes[0], &nodes[1]);
    for (name, version) in versions() {
        let config = client(&cert.ca.cert_pem, version);
        assert_eq!(visit(npg1, &config).await, HandshakeKind::Full, "{name}");
        assert_eq!(
            visit(npg1, &config).await,
            HandshakeKind::Resumed,
            "{name}: same replica"
        );
        assert_eq!(visit(npg2, &config).await, HandshakeKind::Full, "{name}: other replica");
    }
}

/// With NPG_SECRET_KEY_FILE the ticket keys in Redis are sealed (not the raw key), and
/// sessions still resume across replicas.
#[tokio::test]
async fn sealed_ticket_keys_still_resume_across_replicas() {
    let up = FakeRegistry::start();
    let redis = RedisServer::start();
    let cert = certificate();
    let secret = tls::write_file(cert.dir.path(), "secret.key", &npg_gen_key());
    let url = redis.url();
    let secret = secret.display().to_string();
    let env = [
        ("ENABLE_REDIS_CACHE", "true"),
        ("REDIS_URL", url.as_str()),
        ("NPG_SECRET_KEY_FILE", secret.as_str()),
    ];
    let nodes = replicas(&up, &cert, &[6, 7], &env);
    let (npg1, npg2) = (&nodes[0], &nodes[1]);
    let config = client(&cert.ca.cert_pem, &rustls::version::TLS13);
    assert_eq!(visit(npg1, &config).await, HandshakeKind::Full);
    assert_eq!(visit(npg2, &config).await, HandshakeKind::Resumed, "{}", npg2.logs());
    let keys = redis.command(&["KEYS", "*tls:ticket-key:*"]);
    let names: Vec<&str> = keys.lines().filter(|l| l.contains("ticket-key")).collect();
    assert_eq!(names.len(), 2, "{keys:?}");
    for name in names {
        let value = redis.command(&["GET", name]);
        let value = value.lines().nth(1).unwrap_or_default();
        assert!(value.starts_with("npg-enc-v1:"), "{name} sealed: {value}");
        assert!(value.len() > 80, "{name}: more than a base64 key: {value}");
    }
}

/// A key as `npg gen-key` prints it.
fn npg_gen_key() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_npg"))
        .arg("gen-key")
        .output()
        .expect("npg gen-key");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Redis down when the replicas start: each serves at once with its own keys (sessions resume
/// on the same replica), and once Redis answers they share keys and sessions resume across.
#[tokio::test]
async fn redis_down_at_start_then_shared_once_it_answers() {
    let up = FakeRegistry::start();
    let mut redis = RedisServer::start();
    redis.stop();
    let cert = certificate();
    let url = redis.url();
    let env = [("ENABLE_REDIS_CACHE", "true"), ("REDIS_URL", url.as_str())];
    let nodes = replicas(&up, &cert, &[8, 9], &env);
    let (npg1, npg2) = (&nodes[0], &nodes[1]);
    let config = client(&cert.ca.cert_pem, &rustls::version::TLS13);
    let started = std::time::Instant::now();
    assert_eq!(visit(npg1, &config).await, HandshakeKind::Full);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "served within the bounded wait: {:?}",
        started.elapsed()
    );
    assert_eq!(visit(npg1, &config).await, HandshakeKind::Resumed, "same replica");
    assert_eq!(visit(npg2, &config).await, HandshakeKind::Full, "not shared yet");
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let config = client(&cert.ca.cert_pem, &rustls::version::TLS13);
        visit(npg1, &config).await;
        if visit(npg2, &config).await == HandshakeKind::Resumed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions never resumed across once redis answered\n--- npg1:\n{}\n--- npg2:\n{}",
            npg1.logs(),
            npg2.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
