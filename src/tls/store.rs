//! Where certificates, the ACME account and pending challenges live: in Redis, shared by
//! every replica (keys `acme:cert:<domain>`, `acme:account:<directory hash>`,
//! `acme:http01:<token>`, `acme:alpn:<domain>`, the counter `acme:orders`), private keys
//! sealed with NPG_SECRET_KEY_FILE when set; without Redis, on disk under
//! `<STORAGE_DIR>/.acme` and in memory (one node).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use redis::AsyncCommands;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::secret::{SecretKey, open, seal};
use crate::cluster::lock::RedisLock;
use crate::cluster::redis::{RedisState, SharedRedis};

/// How long a published challenge answer lives (an order takes seconds).
const CHALLENGE_TTL_MS: u64 = 10 * 60 * 1000;

/// Stores the certificate only while the lock is ours (fencing: a holder whose lease ran
/// out cannot overwrite its successor's certificate).
const STORE_IF_HELD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'chain', ARGV[2], 'key', ARGV[3], 'not_after', ARGV[4], 'serial', ARGV[5])
return 1
"#;

/// Writes back a certificate Redis lost (a restart without persistence), unless one is there.
const RESTORE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'chain', ARGV[1], 'key', ARGV[2], 'not_after', ARGV[3], 'serial', ARGV[4])
return 1
"#;

/// A certificate chain with its key, and what renewal needs to know of it.
#[derive(Clone, Debug)]
pub struct CertBundle {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
    /// The renewal time picked in the CA's ARI window (shared so replicas agree), if any.
    pub ari_renew_at: Option<i64>,
}

impl CertBundle {
    pub fn from_pem(chain_pem: String, key_pem: String) -> Result<CertBundle, String> {
        let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .ok_or("no certificate in the chain")?
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| format!("bad certificate: {e}"))?;
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
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| format!("bad key PEM: {e}"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("unusable key: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(chain, signer)))
    }

    /// When to renew: at the time picked in the CA's ARI window, else with a third of the
    /// lifetime left.
    pub fn renew_at(&self) -> i64 {
        self.ari_renew_at
            .unwrap_or(self.not_after - (self.not_after - self.not_before) / 3)
    }

    /// The leaf certificate, DER.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes()).next()?.ok()
    }
}

pub struct TlsStore {
    redis: Arc<SharedRedis>,
    dir: PathBuf,
    secret: Option<SecretKey>,
    /// Challenges when there is no Redis (a single node answers its own).
    local: Mutex<HashMap<String, String>>,
}

impl TlsStore {
    pub fn new(redis: Arc<SharedRedis>, storage_dir: &std::path::Path, secret: Option<SecretKey>) -> TlsStore {
        TlsStore {
            redis,
            dir: storage_dir.join(".acme"),
            secret,
            local: Mutex::default(),
        }
    }

    fn shared(&self) -> bool {
        self.redis.state() != RedisState::Disabled
    }

    fn conn(&self) -> Result<redis::aio::ConnectionManager, String> {
        self.redis.conn().ok_or_else(|| "redis is not answering".to_string())
    }

    fn fail(&self, what: &str, e: redis::RedisError) -> String {
        self.redis.report_error(what, &e);
        format!("redis {what}: {e}")
    }

    fn cert_key(&self, name: &str) -> String {
        self.redis.key(&format!("acme:cert:{name}"))
    }

    pub async fn load_cert(&self, name: &str) -> Result<Option<CertBundle>, String> {
        if !self.shared() {
            let path = self.dir.join(format!("cert-{name}.json"));
            return match std::fs::read(&path) {
                Ok(bytes) => {
                    let v: HashMap<String, String> =
                        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                    self.bundle(name, v.get("chain"), v.get("key")).map(Some)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            };
        }
        let mut conn = self.conn()?;
        let (chain, key, renew_at): (Option<String>, Option<String>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.cert_key(name))
            .arg(&["chain", "key", "renew_at"])
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail("certificate read", e))?;
        if chain.is_none() {
            return Ok(None);
        }
        let mut bundle = self.bundle(name, chain.as_ref(), key.as_ref())?;
        bundle.ari_renew_at = renew_at;
        Ok(Some(bundle))
    }

    fn bundle(&self, name: &str, chain: Option<&String>, key: Option<&String>) -> Result<CertBundle, String> {
        let (Some(chain), Some(key)) = (chain, key) else {
            return Err("incomplete certificate record".into());
        };
        let key = open(self.secret.as_ref(), key, &self.cert_key(name))?;
        CertBundle::from_pem(chain.clone(), key)
    }

    fn sealed_fields(&self, name: &str, b: &CertBundle) -> [String; 4] {
        let key = seal(self.secret.as_ref(), &b.key_pem, &self.cert_key(name));
        [b.chain_pem.clone(), key, b.not_after.to_string(), b.serial.clone()]
    }

    /// Stores a new certificate; with Redis only while `lock` is ours. True when stored.
    pub async fn save_cert(&self, name: &str, bundle: &CertBundle, lock: &RedisLock) -> Result<bool, String> {
        if !self.shared() {
            std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
            let [chain, key, _, _] = self.sealed_fields(name, bundle);
            let json = serde_json::json!({ "chain": chain, "key": key });
            write_private(&self.dir.join(format!("cert-{name}.json")), json.to_string().as_bytes())?;
            return Ok(true);
        }
        let cert_key = self.cert_key(name);
        self.cert_script(
            STORE_IF_HELD,
            &[lock.key(), &cert_key],
            Some(lock.token()),
            name,
            bundle,
            "certificate write",
        )
        .await
    }

    /// Puts back a certificate Redis lost, unless another replica already did.
    pub async fn restore_cert(&self, name: &str, bundle: &CertBundle) -> Result<bool, String> {
        let cert_key = self.cert_key(name);
        self.cert_script(RESTORE, &[&cert_key], None, name, bundle, "certificate write-back")
            .await
    }

    /// Runs a certificate-writing script with `keys`, then `token` (if any) and the sealed
    /// fields as arguments; true when it wrote.
    async fn cert_script(
        &self,
        script: &str,
        keys: &[&str],
        token: Option<&str>,
        name: &str,
        bundle: &CertBundle,
        what: &str,
    ) -> Result<bool, String> {
        let mut conn = self.conn()?;
        let script = redis::Script::new(script);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        if let Some(token) = token {
            invocation.arg(token);
        }
        for field in self.sealed_fields(name, bundle) {
            invocation.arg(field);
        }
        let written: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail(what, e))?;
        Ok(written == 1)
    }

    /// Records the renewal time picked in the ARI window, for every replica.
    pub async fn set_renew_at(&self, name: &str, serial: &str, at: i64) -> Result<(), String> {
        if !self.shared() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        // Only for the certificate it was computed for (a newer one may have replaced it).
        let script = "if redis.call('HGET', KEYS[1], 'serial') == ARGV[1] then redis.call('HSET', KEYS[1], 'renew_at', ARGV[2]) end return 1";
        redis::Script::new(script)
            .key(self.cert_key(name))
            .arg(serial)
            .arg(at)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| self.fail("renewal time write", e))
    }

    fn account_key(&self, directory: &str) -> String {
        let id = hex::encode(&Sha256::digest(directory.as_bytes())[..8]);
        self.redis.key(&format!("acme:account:{id}"))
    }

    /// The ACME account credentials (JSON) for a directory.
    pub async fn load_account(&self, directory: &str) -> Result<Option<String>, String> {
        let key = self.account_key(directory);
        let stored = if self.shared() {
            let mut conn = self.conn()?;
            conn.get::<_, Option<String>>(&key)
                .await
                .map_err(|e| self.fail("account read", e))?
        } else {
            std::fs::read_to_string(self.dir.join(format!("{}.json", key.replace(':', "-")))).ok()
        };
        stored.map(|v| open(self.secret.as_ref(), &v, &key)).transpose()
    }

    /// Stores account credentials; `only_new` keeps an existing one (a write-back).
    pub async fn save_account(&self, directory: &str, credentials: &str, only_new: bool) -> Result<(), String> {
        let key = self.account_key(directory);
        let value = seal(self.secret.as_ref(), credentials, &key);
        if !self.shared() {
            std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
            return write_private(
                &self.dir.join(format!("{}.json", key.replace(':', "-"))),
                value.as_bytes(),
            );
        }
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(value);
        if only_new {
            cmd.arg("NX");
        }
        cmd.exec_async(&mut conn)
            .await
            .map_err(|e| self.fail("account write", e))
    }

    fn challenge_key(&self, kind: &str, id: &str) -> String {
        self.redis.key(&format!("acme:{kind}:{id}"))
    }

    /// Publishes a challenge answer so whichever replica the CA reaches can give it.
    pub async fn put_challenge(&self, kind: &str, id: &str, value: &str) -> Result<(), String> {
        let key = self.challenge_key(kind, id);
        if !self.shared() {
            self.local
                .lock()
                .expect("challenge map poisoned")
                .insert(key, value.to_string());
            return Ok(());
        }
        let mut conn = self.conn()?;
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("PX")
            .arg(CHALLENGE_TTL_MS)
            .exec_async(&mut conn)
            .await
            .map_err(|e| self.fail("challenge write", e))
    }

    pub async fn challenge(&self, kind: &str, id: &str) -> Option<String> {
        let key = self.challenge_key(kind, id);
        if !self.shared() {
            return self.local.lock().expect("challenge map poisoned").get(&key).cloned();
        }
        let mut conn = self.redis.conn()?;
        conn.get(&key).await.unwrap_or_else(|e| {
            self.redis.report_error("challenge read", &e);
            None
        })
    }

    pub async fn remove_challenge(&self, kind: &str, id: &str) {
        let key = self.challenge_key(kind, id);
        if !self.shared() {
            self.local.lock().expect("challenge map poisoned").remove(&key);
        } else if let Some(mut conn) = self.redis.conn() {
            let _ = conn.del::<_, ()>(&key).await;
        }
    }

    /// Counts orders cluster-wide (`acme:orders`), so operators and tests can see them.
    pub async fn count_order(&self) {
        if let Some(mut conn) = self.redis.conn() {
            let _ = conn.incr::<_, _, ()>(self.redis.key("acme:orders"), 1).await;
        }
    }
}

/// Writes a file readable by its owner only, atomically.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().ok_or("no parent directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| e.to_string())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    tmp.write_all(bytes).map_err(|e| e.to_string())?;
    tmp.persist(path).map_err(|e| e.to_string())?;
    Ok(())
}
