//! Where certificates, the ACME account and pending challenges live: in a cluster, the
//! storage in Redis shared by every replica (`cluster::storage`); without Redis, on disk
//! under `<STORAGE_DIR>/.acme` (`cert-<domain>.json`, `acme-account-<id>.json`, owner-only)
//! and in memory (one node). Which one is decided once, at construction; private keys are
//! sealed with NPG_SECRET_KEY_FILE when set, whichever stores them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::secret::{SecretKey, open, seal};
use crate::cluster::lock::RedisLock;
use crate::cluster::redis::SharedRedis;
pub(crate) use crate::cluster::storage::StoreError;
use crate::cluster::storage::{CertRecord, RedisStorage, Storage, StoredCert};

/// The challenge answers npg publishes: HTTP-01 by token, TLS-ALPN-01 by domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenge {
    Http01,
    TlsAlpn01,
}

impl Challenge {
    /// The kind's part of the key (`acme:<kind>:<id>`).
    fn key(self) -> &'static str {
        match self {
            Challenge::Http01 => "http01",
            Challenge::TlsAlpn01 => "alpn",
        }
    }
}

/// How long a new certificate's write waits for Redis to answer again (a failover takes
/// seconds), asking every `SAVE_RETRY`.
const SAVE_PATIENCE: Duration = Duration::from_secs(30);
const SAVE_RETRY: Duration = Duration::from_millis(500);

/// Runs `write` again while Redis does not answer (down, or a command failed), for up to
/// `patience`; any other outcome is returned at once.
async fn while_unanswered<T, F, Fut>(patience: Duration, mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match write().await {
            Err(StoreError::Unavailable | StoreError::Redis { .. }) if Instant::now() + SAVE_RETRY < deadline => {
                tokio::time::sleep(SAVE_RETRY).await;
            }
            other => return other,
        }
    }
}

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadCertificate(String);

impl From<BadCertificate> for StoreError {
    fn from(e: BadCertificate) -> StoreError {
        StoreError::Corrupt(e.0)
    }
}

/// A certificate chain with its key, and what renewal needs to know of it.
#[derive(Clone, Debug)]
pub(crate) struct CertBundle {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) serial: String,
    /// The renewal time picked in the CA's ARI window (shared so replicas agree), if any.
    pub(crate) ari_renew_at: Option<i64>,
}

impl CertBundle {
    pub(crate) fn from_pem(chain_pem: String, key_pem: String) -> Result<CertBundle, BadCertificate> {
        let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .ok_or_else(|| BadCertificate("no certificate in the chain".into()))?
            .map_err(|e| BadCertificate(format!("bad certificate PEM: {e}")))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&leaf).map_err(|e| BadCertificate(format!("bad certificate: {e}")))?;
        let validity = cert.validity();
        Ok(CertBundle {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
            chain_pem,
            key_pem,
            ari_renew_at: None,
        })
    }

    /// The rustls form.
    pub(crate) fn certified_key(&self) -> Result<Arc<CertifiedKey>, BadCertificate> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| BadCertificate(format!("bad certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| BadCertificate(format!("bad key PEM: {e}")))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| BadCertificate(format!("unusable key: {e}")))?;
        Ok(Arc::new(CertifiedKey::new(chain, signer)))
    }

    /// When to renew: at the time picked in the CA's ARI window, else with a third of the
    /// lifetime left.
    pub(crate) fn renew_at(&self) -> i64 {
        self.ari_renew_at
            .unwrap_or(self.not_after - (self.not_after - self.not_before) / 3)
    }

    /// The leaf certificate, DER.
    pub(crate) fn leaf(&self) -> Option<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes()).next()?.ok()
    }
}

pub(crate) struct TlsStore {
    storage: Box<dyn Storage>,
    /// The Redis key prefix, part of what a sealed value is bound to.
    prefix: String,
    secret: Option<SecretKey>,
}

impl TlsStore {
    pub(crate) fn new(redis: Arc<SharedRedis>, storage_dir: &Path, secret: Option<SecretKey>) -> TlsStore {
        let storage: Box<dyn Storage> = if redis.clustered() {
            Box::new(RedisStorage::new(redis.clone()))
        } else {
            Box::new(LocalStorage::new(storage_dir.join(".acme")))
        };
        TlsStore {
            storage,
            prefix: redis.key(""),
            secret,
        }
    }

    /// What a certificate's sealed key is bound to (its Redis key).
    fn cert_context(&self, name: &str) -> String {
        format!("{}acme:cert:{name}", self.prefix)
    }

    pub(crate) async fn load_cert(&self, name: &str) -> Result<Option<CertBundle>, StoreError> {
        let Some(StoredCert {
            chain,
            sealed_key,
            renew_at,
        }) = self.storage.load_cert(name).await?
        else {
            return Ok(None);
        };
        let key = open(self.secret.as_ref(), &sealed_key, &self.cert_context(name))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut bundle = CertBundle::from_pem(chain, key)?;
        bundle.ari_renew_at = renew_at;
        Ok(Some(bundle))
    }

    fn record(&self, name: &str, b: &CertBundle) -> CertRecord {
        CertRecord {
            chain: b.chain_pem.clone(),
            sealed_key: seal(self.secret.as_ref(), &b.key_pem, &self.cert_context(name)),
            not_after: b.not_after,
            serial: b.serial.clone(),
            renew_at: None,
        }
    }

    /// Stores a new certificate; in a cluster only while `lock` is ours. True when stored.
    /// Waits out a Redis that does not answer (a failover) for a while: the certificate is
    /// issued already, and not storing it means ordering another.
    pub(crate) async fn save_cert(
        &self,
        name: &str,
        bundle: &CertBundle,
        lock: &RedisLock,
    ) -> Result<bool, StoreError> {
        let record = self.record(name, bundle);
        while_unanswered(SAVE_PATIENCE, || self.storage.save_cert(name, &record, lock)).await
    }

    /// Puts back a certificate Redis lost, unless another replica already did.
    pub(crate) async fn restore_cert(&self, name: &str, bundle: &CertBundle) -> Result<bool, StoreError> {
        self.storage.restore_cert(name, &self.record(name, bundle)).await
    }

    /// Records the renewal time picked in the ARI window, for every replica.
    pub(crate) async fn set_renew_at(&self, name: &str, serial: &str, at: i64) -> Result<(), StoreError> {
        self.storage.set_renew_at(name, serial, at).await
    }

    /// The account's id and what its credentials are sealed to.
    fn account(&self, directory: &str) -> (String, String) {
        let id = hex::encode(&Sha256::digest(directory.as_bytes())[..8]);
        let context = format!("{}acme:account:{id}", self.prefix);
        (id, context)
    }

    /// The ACME account credentials (JSON) for a directory.
    pub(crate) async fn load_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let (id, context) = self.account(directory);
        let stored = self.storage.load_account(&id).await?;
        stored
            .map(|v| open(self.secret.as_ref(), &v, &context).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Stores account credentials; `only_new` keeps an existing one (a write-back).
    pub(crate) async fn save_account(
        &self,
        directory: &str,
        credentials: &str,
        only_new: bool,
    ) -> Result<(), StoreError> {
        let (id, context) = self.account(directory);
        let sealed = seal(self.secret.as_ref(), credentials, &context);
        self.storage.save_account(&id, &sealed, only_new).await
    }

    /// Publishes a challenge answer so whichever replica the CA reaches can give it.
    pub(crate) async fn put_challenge(&self, kind: Challenge, id: &str, value: &str) -> Result<(), StoreError> {
        self.storage.put_challenge(kind.key(), id, value).await
    }

    pub(crate) async fn challenge(&self, kind: Challenge, id: &str) -> Option<String> {
        self.storage.challenge(kind.key(), id).await
    }

    pub(crate) async fn remove_challenge(&self, kind: Challenge, id: &str) {
        self.storage.remove_challenge(kind.key(), id).await;
    }

    /// Counts orders cluster-wide (`acme:orders`), so operators and tests can see them.
    pub(crate) async fn count_order(&self) {
        self.storage.count_order().await;
    }
}

/// A single node's storage: files under `<STORAGE_DIR>/.acme`, challenges in memory.
struct LocalStorage {
    dir: PathBuf,
    /// Challenge answers by `<kind>:<id>`: the node answers its own.
    challenges: Mutex<HashMap<String, String>>,
}

impl LocalStorage {
    fn new(dir: PathBuf) -> LocalStorage {
        LocalStorage {
            dir,
            challenges: Mutex::default(),
        }
    }

    fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("cert-{name}.json"))
    }

    fn account_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("acme-account-{id}.json"))
    }

    fn read_cert(&self, name: &str) -> Result<Option<StoredCert>, StoreError> {
        let path = self.cert_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mut fields: HashMap<String, String> =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        let (Some(chain), Some(sealed_key)) = (fields.remove("chain"), fields.remove("key")) else {
            return Err(StoreError::Corrupt("incomplete certificate record".into()));
        };
        Ok(Some(StoredCert {
            chain,
            sealed_key,
            renew_at: None,
        }))
    }

    /// Writes `bytes` to `path` in the directory, owner-only, whole or not at all.
    fn write(&self, path: PathBuf, bytes: &[u8]) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| crate::files::write_private(&path, bytes))
            .map_err(|source| StoreError::Io { path, source })
    }

    fn challenges(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.challenges.lock().expect("challenge map poisoned")
    }
}

impl Storage for LocalStorage {
    fn load_cert<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<StoredCert>, StoreError>> {
        Box::pin(std::future::ready(self.read_cert(name)))
    }

    /// One node holds every lock: no fencing.
    fn save_cert<'a>(
        &'a self,
        name: &'a str,
        cert: &'a CertRecord,
        _lock: &'a RedisLock,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let json = serde_json::json!({ "chain": cert.chain, "key": cert.sealed_key });
        let written = self.write(self.cert_path(name), json.to_string().as_bytes());
        Box::pin(std::future::ready(written.map(|()| true)))
    }

    /// A node's own disk does not lose what it serves the way a Redis restart does.
    fn restore_cert<'a>(&'a self, _name: &'a str, _cert: &'a CertRecord) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Nobody to agree with.
    fn set_renew_at<'a>(&'a self, _name: &'a str, _serial: &'a str, _at: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn load_account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(std::future::ready(Ok(
            std::fs::read_to_string(self.account_path(id)).ok()
        )))
    }

    fn save_account<'a>(
        &'a self,
        id: &'a str,
        sealed: &'a str,
        _only_new: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(self.write(self.account_path(id), sealed.as_bytes())))
    }

    fn put_challenge<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.challenges().insert(format!("{kind}:{id}"), value.to_string());
        Box::pin(std::future::ready(Ok(())))
    }

    fn challenge<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(std::future::ready(
            self.challenges().get(&format!("{kind}:{id}")).cloned(),
        ))
    }

    fn remove_challenge<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, ()> {
        self.challenges().remove(&format!("{kind}:{id}"));
        Box::pin(std::future::ready(()))
    }

    /// Only a cluster counts its orders.
    fn count_order(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn a_certificate_write_waits_out_a_redis_that_does_not_answer() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = AtomicUsize::new(0);
        // Two failures (a failover), then stored.
        let stored = while_unanswered(Duration::from_secs(5), || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 => Err(StoreError::Unavailable),
                1 => Err(StoreError::Redis {
                    what: "certificate write",
                    source: redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                }),
                _ => Ok(true),
            }
        })
        .await;
        assert!(stored.unwrap());
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        // Anything else at once.
        calls.store(0, Ordering::Relaxed);
        let corrupt = while_unanswered(Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<bool, _>(StoreError::Corrupt("bad".into()))
        })
        .await;
        assert!(matches!(corrupt, Err(StoreError::Corrupt(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // Not forever.
        let started = Instant::now();
        let gone = while_unanswered(Duration::from_millis(1200), || async {
            Err::<bool, _>(StoreError::Unavailable)
        })
        .await;
        assert!(matches!(gone, Err(StoreError::Unavailable)));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    fn bundle() -> CertBundle {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["npg.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        CertBundle::from_pem(cert.pem(), key.serialize_pem()).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn without_redis_certificates_and_accounts_are_sealed_owner_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let redis = SharedRedis::disabled(Arc::new(Metrics::default()));
        let secret = SecretKey::from_bytes(&STANDARD.decode(super::super::secret::generate()).unwrap()).unwrap();
        let store = TlsStore::new(redis.clone(), dir.path(), Some(secret));
        assert!(store.load_cert("npg.test").await.unwrap().is_none());

        let b = bundle();
        let lock = RedisLock::new(redis, "acme:npg.test", std::time::Duration::from_secs(1));
        assert!(store.save_cert("npg.test", &b, &lock).await.unwrap());
        let file = dir.path().join(".acme/cert-npg.test.json");
        assert_eq!(mode(&file), 0o600);
        let on_disk = std::fs::read_to_string(&file).unwrap();
        assert!(
            on_disk.contains("BEGIN CERTIFICATE") && !on_disk.contains("PRIVATE KEY"),
            "{on_disk}"
        );
        let loaded = store.load_cert("npg.test").await.unwrap().unwrap();
        assert_eq!((loaded.serial, loaded.key_pem), (b.serial, b.key_pem));

        assert!(store.load_account("https://ca.test/dir").await.unwrap().is_none());
        store
            .save_account("https://ca.test/dir", "{\"id\":1}", false)
            .await
            .unwrap();
        let id = hex::encode(&Sha256::digest(b"https://ca.test/dir")[..8]);
        let file = dir.path().join(format!(".acme/acme-account-{id}.json"));
        assert_eq!(mode(&file), 0o600);
        assert!(!std::fs::read_to_string(&file).unwrap().contains("\"id\""), "sealed");
        let account = store.load_account("https://ca.test/dir").await.unwrap();
        assert_eq!(account.as_deref(), Some("{\"id\":1}"));

        std::fs::write(dir.path().join(".acme/cert-bad.json"), "{\"chain\":\"x\"}").unwrap();
        assert!(matches!(store.load_cert("bad").await, Err(StoreError::Corrupt(_))));
    }

    #[tokio::test]
    async fn without_redis_challenges_are_answered_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = TlsStore::new(SharedRedis::disabled(Arc::new(Metrics::default())), dir.path(), None);
        store
            .put_challenge(Challenge::Http01, "tok", "tok.thumb")
            .await
            .unwrap();
        assert_eq!(
            store.challenge(Challenge::Http01, "tok").await.as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(store.challenge(Challenge::TlsAlpn01, "tok").await, None);
        store.remove_challenge(Challenge::Http01, "tok").await;
        assert_eq!(store.challenge(Challenge::Http01, "tok").await, None);
        assert!(!dir.path().join(".acme").exists(), "challenges never touch the disk");
    }
}
