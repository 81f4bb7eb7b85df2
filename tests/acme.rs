//! TLS inside npg: certificates from a real ACME server (Debian's pebble), shared by replicas
//! through a real redis-server, and static certificate files.
//!
//! Pebble validates against npg: its DNS mock answers every name with the loopback address one
//! replica listens on (replicas share port numbers on 127.0.0.2, 127.0.0.3, ...), and HTTP-01
//! and TLS-ALPN-01 connect to npg's HTTP_PORT and HTTPS_PORT there. Clients reach npg as
//! `npg.test` resolved to a replica's address, trusting pebble's issuing root.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::pebble::{Pebble, PebbleOptions};
use support::tls;

const DOMAIN: &str = "npg.test";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Runs `fut` with a time limit, failing the test when it is exceeded.
async fn bounded<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

// --- The harness by itself --------------------------------------------------------------------

/// The harness without npg: pebble starts, serves its directory and issuing root, resolves
/// `npg.test` through the DNS mock to a loopback alias, validates HTTP-01 there (a tiny responder
/// in this test), and the probe sees the issued certificate on a rustls server trusting the root.
#[tokio::test]
async fn harness_pebble_issues_to_a_loopback_alias() {
    bounded(Duration::from_secs(60), "harness", async {
        let ip = loopback(2);
        let (http_port, tls_port) = (tls::free_port_on(&[ip]), tls::free_port_on(&[ip]));
        let pebble = Pebble::start(PebbleOptions {
            http_port,
            tls_port,
            validity_secs: Some(120),
            dns_ipv4: Ipv4Addr::new(127, 0, 0, 2),
            ..Default::default()
        });
        let (status, dir) = pebble.get("acme", "/dir").expect("directory");
        assert_eq!(status, 200, "{dir}");
        let root = pebble.issuing_root_pem();
        assert!(root.contains("BEGIN CERTIFICATE"), "{root}");

        // An HTTP-01 responder on 127.0.0.2:<http_port>.
        let answers: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let served = answers.clone();
        let app = axum::Router::new().route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(move |axum::extract::Path(token): axum::extract::Path<String>| {
                let served = served.clone();
                async move {
                    match served.lock().unwrap().get(&token) {
                        Some(v) => (axum::http::StatusCode::OK, v.clone()),
                        None => (axum::http::StatusCode::NOT_FOUND, String::new()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind((ip, http_port)).await.unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        tls::install_provider();
        use instant_acme::{
            Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
        };
        let (account, _) = Account::builder_with_root(pebble.ca_file())
            .unwrap()
            .create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                pebble.directory_url(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("new account: {e}\n{}", pebble.logs()));
        let mut order = account
            .new_order(&NewOrder::new(&[Identifier::Dns(DOMAIN.into())]))
            .await
            .unwrap();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.unwrap();
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let mut challenge = authz.challenge(ChallengeType::Http01).expect("http-01 offered");
            answers.lock().unwrap().insert(
                challenge.token.clone(),
                challenge.key_authorization().as_str().to_string(),
            );
            challenge.set_ready().await.unwrap();
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .timeout(Duration::from_secs(20));
        let status = order.poll_ready(&retry).await.unwrap();
        assert_eq!(status, OrderStatus::Ready, "{}", pebble.logs());
        let key_pem = order.finalize().await.unwrap();
        let chain_pem = order.poll_certificate(&retry).await.unwrap();

        // Serve it with rustls on 127.0.0.2:<tls_port> and look at it with the probe.
        let certs = tls::pem_certs(&chain_pem);
        let key = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap()
        };
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tls_listener = tokio::net::TcpListener::bind((ip, tls_port)).await.unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = tls_listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
                    }
                });
            }
        });
        let addr = SocketAddr::new(ip, tls_port);
        let leaf = tls::probe(addr, Some(DOMAIN), Some(&root)).await.unwrap();
        let issued = tls::parse_leaf(&certs[0]);
        assert_eq!(leaf.serial, issued.serial);
        assert_eq!(leaf.names, [DOMAIN]);
        assert!(leaf.chain_len >= 2, "the chain has the intermediate: {leaf:?}");
        assert!(
            (119..=121).contains(&leaf.lifetime()),
            "certificateValidityPeriod is honoured: {leaf:?}"
        );
        // A client trusting another root refuses it.
        let other = tls::TestCa::new("not pebble");
        let err = tls::probe(addr, Some(DOMAIN), Some(&other.cert_pem)).await.unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
            "{err}"
        );
    })
    .await;
}
