//! TLS inside npg: rustls with a certificate resolver fed by a static certificate or by the
//! ACME manager, which shares its account, certificates and challenges through Redis, and
//! session tickets every replica opens (`tickets`, keys shared through Redis too).

pub(crate) mod acme;
pub(crate) mod challenge;
pub(crate) mod resolver;
pub(crate) mod secret;
pub(crate) mod store;
pub(crate) mod tickets;

use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use serde::{Deserialize, Serialize};

use crate::cluster::redis::SharedRedis;
use crate::config::Settings;
use crate::metrics::Metrics;
use anyhow::anyhow;
use resolver::Resolver;
use secret::SecretKey;
use store::{CertBundle, TlsStore};
use tickets::SharedTickets;

/// A server config builder with npg's choices: the ring provider, TLS 1.3 and 1.2 only.
pub(crate) fn config_builder() -> rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert> {
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
}

/// One certificate as `/api/health` and the status page show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CertInfo {
    pub(crate) domain: String,
    pub(crate) serial: String,
    pub(crate) not_after: String,
    pub(crate) next_renewal: String,
}

/// Where the certificate comes from (`/api/health`'s `tls.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TlsMode {
    /// Ordered and renewed through ACME, shared by the cluster.
    #[default]
    Acme,
    /// TLS_CERT_FILE and TLS_KEY_FILE.
    Static,
    /// Plain HTTP only.
    Off,
}

impl TlsMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TlsMode::Acme => "acme",
            TlsMode::Static => "static",
            TlsMode::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TlsStatus {
    pub(crate) mode: TlsMode,
    pub(crate) certificates: Vec<CertInfo>,
    pub(crate) last_error: Option<String>,
}

pub(crate) struct Tls {
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) store: Arc<TlsStore>,
    pub(crate) server_config: Arc<ServerConfig>,
    /// The session ticket keys, shared by the cluster (`tickets`); `share_tickets` is its job.
    pub(crate) tickets: Arc<SharedTickets>,
    pub(crate) domains: Vec<String>,
    pub(crate) status: Mutex<TlsStatus>,
    pub(crate) metrics: Arc<Metrics>,
    /// True once this replica has a certificate or has looked for the cluster's one.
    looked: tokio::sync::watch::Sender<bool>,
    /// True once a health check saw this replica serve: a balancer routes to it from then on.
    checked: tokio::sync::watch::Sender<bool>,
}

fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What TLS reads from files at start-up: the key sealing private keys in Redis and the
/// static certificate, checked before anything listens (and by `npg check-config`).
pub(crate) struct TlsFiles {
    /// Seals private keys and session ticket keys in Redis.
    secret: Option<SecretKey>,
    certificate: Option<(CertBundle, Arc<rustls::sign::CertifiedKey>)>,
}

impl TlsFiles {
    /// `None` when npg serves plain HTTP only.
    pub(crate) fn load(settings: &Settings) -> anyhow::Result<Option<TlsFiles>> {
        if !settings.tls_enabled() {
            return Ok(None);
        }
        let secret = match &settings.npg_secret_key_file {
            Some(path) => Some(SecretKey::load(path).map_err(|e| anyhow!("NPG_SECRET_KEY_FILE: {e}"))?),
            None => None,
        };
        let certificate = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => {
                let read = |setting: &str, path: &std::path::Path| {
                    std::fs::read_to_string(path).map_err(|e| anyhow!("{setting}: {} ({e})", path.display()))
                };
                let bundle = CertBundle::from_pem(read("TLS_CERT_FILE", cert)?, read("TLS_KEY_FILE", key)?)
                    .map_err(|e| anyhow!("TLS_CERT_FILE: {e}"))?;
                let key = bundle.certified_key().map_err(|e| anyhow!("TLS_KEY_FILE: {e}"))?;
                Some((bundle, key))
            }
            _ => None,
        };
        Ok(Some(TlsFiles { secret, certificate }))
    }
}

impl Tls {
    /// The TLS state from the settings and the files `TlsFiles::load` read.
    pub(crate) fn setup(
        settings: &Settings,
        files: TlsFiles,
        redis: Arc<SharedRedis>,
        metrics: Arc<Metrics>,
    ) -> Arc<Tls> {
        let resolver = Arc::new(Resolver::default());
        let mut config = config_builder().with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Resumption on any replica: TLS 1.3 tickets after every handshake, TLS 1.2 tickets
        // when the client asks for one, all sealed with the cluster's keys.
        let tickets = Arc::new(SharedTickets::new(redis.clone(), files.secret.clone()));
        config.ticketer = tickets.ticketer.clone();
        config.send_tls13_tickets = 2;
        let tls = Tls {
            resolver,
            store: Arc::new(TlsStore::new(redis, &settings.storage_dir, files.secret)),
            server_config: Arc::new(config),
            tickets,
            domains: settings.npg_domain.iter().map(|d| d.to_ascii_lowercase()).collect(),
            status: Mutex::new(TlsStatus::default()),
            metrics,
            looked: tokio::sync::watch::Sender::new(false),
            checked: tokio::sync::watch::Sender::new(false),
        };
        if let Some((bundle, key)) = files.certificate {
            tls.resolver.install_any(key);
            tls.set_status(TlsMode::Static, Some(("*", &bundle)), None);
            tls.mark_looked();
        }
        Arc::new(tls)
    }

    pub(crate) fn set_status(&self, mode: TlsMode, cert: Option<(&str, &CertBundle)>, error: Option<String>) {
        let mut status = self.status.lock().expect("tls status poisoned");
        status.mode = mode;
        if let Some((domain, b)) = cert {
            self.metrics.certificate_served(b.not_after);
            status.certificates = vec![CertInfo {
                domain: domain.to_string(),
                serial: b.serial.clone(),
                not_after: rfc3339(b.not_after),
                next_renewal: rfc3339(b.renew_at()),
            }];
        }
        status.last_error = error;
    }

    /// Called by the ACME manager after its first read of the store, whatever it found.
    pub(crate) fn mark_looked(&self) {
        self.looked.send_replace(true);
    }

    /// Waits (at most `limit`) until the certificate this replica can serve and the cluster's
    /// ticket keys are known, so a replica that restarts into a running cluster answers its
    /// first handshake with that certificate and resumes the sessions of the others.
    pub(crate) async fn first_look(&self, limit: std::time::Duration) {
        let mut looked = self.looked.subscribe();
        let both = async {
            let _ = looked.wait_for(|v| *v).await;
            self.tickets.wait_ready().await;
        };
        let _ = tokio::time::timeout(limit, both).await;
    }

    /// The job that keeps the session ticket keys in step with the cluster.
    pub(crate) fn share_tickets(&self) -> impl Future<Output = ()> + Send + 'static {
        self.tickets.clone().run()
    }

    /// Called when `/api/health` answers 200: the health checks of a balancer pass.
    pub(crate) fn mark_health_checked(&self) {
        self.checked.send_if_modified(|seen| !std::mem::replace(seen, true));
    }

    /// Whether a health check has seen this replica serve. Balancers (Traefik's Docker
    /// provider, Kubernetes) route to a replica only then, and the CA's validation must reach
    /// one: an order placed before fails, and the CA counts failures against the domain.
    pub(crate) fn health_checked(&self) -> bool {
        *self.checked.borrow()
    }

    pub(crate) fn status(&self) -> TlsStatus {
        self.status.lock().expect("tls status poisoned").clone()
    }
}
