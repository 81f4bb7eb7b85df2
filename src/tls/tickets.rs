//! TLS session tickets every replica can open, so a client that resumes on another replica
//! behind an L4 balancer skips the full handshake (TLS 1.3 and 1.2 alike).
//!
//! A ticket is `key id (8) ‖ nonce (12) ‖ AES-256-GCM(session state) ‖ tag (16)`, the key id
//! as associated data. Keys rotate every `ROTATION` (12 hours): the key of the current period
//! seals, the keys of the previous and the next period still open (so a ticket outlives the
//! rotation by at least a period, and a replica whose clock runs a little ahead makes tickets
//! the others open), anything older does not. Tickets tell clients `LIFETIME` (6 hours), less
//! than that overlap.
//!
//! The ticketer reads keys from memory only, so a handshake never waits for Redis. Where a
//! period has no key yet it makes one in process. `SharedTickets` (a background job) puts the
//! cluster's keys there: for the current and the next period it offers the key it holds
//! (`SET NX` in `cluster::ticket_keys`, so the first offer of a period wins and every replica
//! takes that one), it reads the previous period's and deletes older ones. Keys are stored
//! sealed with NPG_SECRET_KEY_FILE's key when it is set (`secret`); else plain, so that Redis must be
//! trusted like the key: whoever reads it can decrypt the tickets' session keys. Without
//! Redis, or while it does not answer, the keys stay the process's own: resumption works on
//! the same replica only.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use tokio::sync::watch;

use crate::cluster::redis::SharedRedis;
use crate::cluster::ticket_keys;
use crate::cluster::values::SharedError;

use super::secret::{SecretKey, open, rand_bytes, seal};

/// How long a key seals tickets.
pub(crate) const ROTATION: Duration = Duration::from_secs(12 * 3600);
/// What tickets tell clients: less than a key is accepted after its period.
const LIFETIME: Duration = Duration::from_secs(6 * 3600);
const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// How often the cluster's keys are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// How soon to try again while Redis does not answer.
const RETRY: Duration = Duration::from_secs(5);
/// ... and before the first read succeeded (the HTTPS listener waits for it, bounded).
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// How long the first read may keep failing before this replica serves with its own keys.
const FIRST_PATIENCE: Duration = Duration::from_secs(2);

/// One ticket key: its bytes (to offer to the cluster), its id (derived from the bytes, so
/// every replica holding the key names it alike) and the AEAD key.
#[derive(Clone)]
struct TicketKey {
    bytes: [u8; 32],
    id: [u8; ID_LEN],
    aead: Arc<LessSafeKey>,
    /// Read from the cluster (else made by this process).
    shared: bool,
}

impl TicketKey {
    fn new(bytes: [u8; 32], shared: bool) -> TicketKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..ID_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).expect("32 bytes make an AES-256 key");
        TicketKey {
            bytes,
            id,
            aead: Arc::new(LessSafeKey::new(unbound)),
            shared,
        }
    }

    fn random() -> TicketKey {
        let mut bytes = [0u8; 32];
        rand_bytes(&mut bytes);
        TicketKey::new(bytes, false)
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand_bytes(&mut nonce);
        let mut sealed = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&self.id), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&self.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }
}

/// The keys by rotation period, read by rustls on every ticket it makes or is shown.
pub(crate) struct Ticketer {
    keys: RwLock<BTreeMap<u64, TicketKey>>,
    rotation_secs: u64,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let periods: Vec<u64> = self.read().keys().copied().collect();
        f.debug_struct("Ticketer").field("periods", &periods).finish()
    }
}

fn now_secs() -> u64 {
    crate::clock::now_ms() / 1000
}

impl Ticketer {
    pub(crate) fn new() -> Ticketer {
        Ticketer::with_rotation(ROTATION)
    }

    fn with_rotation(rotation: Duration) -> Ticketer {
        Ticketer {
            keys: RwLock::default(),
            rotation_secs: rotation.as_secs().max(1),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, TicketKey>> {
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, TicketKey>> {
        self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The rotation period of the unix time `now` (seconds).
    pub(crate) fn period(&self, now: u64) -> u64 {
        now / self.rotation_secs
    }

    /// The key of `period`, made in process when there is none yet.
    fn key_for(&self, period: u64) -> TicketKey {
        if let Some(key) = self.read().get(&period) {
            return key.clone();
        }
        self.write().entry(period).or_insert_with(TicketKey::random).clone()
    }

    /// A ticket for `plain` at the unix time `now`.
    fn seal_at(&self, now: u64, plain: &[u8]) -> Option<Vec<u8>> {
        self.key_for(self.period(now)).seal(plain)
    }

    /// What `ticket` holds, if a key of the previous, current or next period at `now` sealed
    /// it and it is intact; None otherwise (whatever the bytes).
    fn open_at(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let period = self.period(now);
        let key = {
            let keys = self.read();
            keys.range(period.saturating_sub(1)..=period + 1)
                .map(|(_, k)| k)
                .find(|k| k.id[..] == *id)?
                .clone()
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key.aead.open_in_place(nonce, Aad::from(&key.id), &mut buf).ok()?;
        Some(plain.to_vec())
    }

    /// Takes the cluster's key for `period` (replacing this process's own, if any).
    fn install(&self, period: u64, bytes: [u8; 32]) {
        let mut keys = self.write();
        if keys.get(&period).is_some_and(|k| k.shared && k.bytes == bytes) {
            return;
        }
        keys.insert(period, TicketKey::new(bytes, true));
    }

    /// The bytes of the key held for `period` (made now if none), to offer to the cluster.
    fn bytes_for(&self, period: u64) -> [u8; 32] {
        self.key_for(period).bytes
    }

    /// Forgets the keys no ticket may be opened with any more at `now`.
    fn prune(&self, now: u64) {
        let oldest = self.period(now).saturating_sub(1);
        self.write().retain(|period, _| *period >= oldest);
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(now_secs(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(now_secs(), cipher)
    }
}

/// The ticketer fed from the cluster: a background job (`run`).
pub(crate) struct SharedTickets {
    pub(crate) ticketer: Arc<Ticketer>,
    redis: Arc<SharedRedis>,
    secret: Option<SecretKey>,
    /// True once the keys were read from the cluster (at once without one).
    ready: watch::Sender<bool>,
}

impl SharedTickets {
    pub(crate) fn new(redis: Arc<SharedRedis>, secret: Option<SecretKey>) -> SharedTickets {
        SharedTickets {
            ticketer: Arc::new(Ticketer::new()),
            redis,
            secret,
            ready: watch::Sender::new(false),
        }
    }

    /// Waits until the keys were read from the cluster (at once when there is none, after
    /// `FIRST_PATIENCE` when Redis does not answer).
    pub(crate) async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|v| *v).await;
    }

    /// The job: reads the cluster's keys now and every minute (every few seconds while Redis
    /// does not answer). Ends at once without Redis: the process's own keys serve.
    pub(crate) async fn run(self: Arc<Self>) {
        if !self.redis.clustered() {
            self.ready.send_replace(true);
            return;
        }
        let (started, mut shared) = (std::time::Instant::now(), false);
        loop {
            let wait = match self.refresh(now_secs()).await {
                Ok(()) => {
                    if !std::mem::replace(&mut shared, true) {
                        tracing::info!("TLS ticket keys shared with the cluster");
                    }
                    self.ready.send_replace(true);
                    REFRESH_EVERY
                }
                Err(e) if *self.ready.borrow() => {
                    tracing::debug!(error = %e, "TLS ticket keys not read from redis");
                    RETRY
                }
                Err(e) if started.elapsed() >= FIRST_PATIENCE => {
                    tracing::warn!(error = %e, "TLS ticket keys not read from redis: this replica's own serve until it answers (sessions resume here only)");
                    self.ready.send_replace(true);
                    RETRY
                }
                Err(_) => FIRST_RETRY,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Offers (and takes) the keys of the current and the next period, reads the previous one's.
    async fn refresh(&self, now: u64) -> Result<(), SharedError> {
        let ticketer = &self.ticketer;
        let period = ticketer.period(now);
        for p in [period, period + 1] {
            let context = self.redis.key(&ticket_keys::name(p));
            let offer = seal(self.secret.as_ref(), &STANDARD.encode(ticketer.bytes_for(p)), &context);
            if let Some(stored) = self.redis.offer_ticket_key(p, &offer).await? {
                self.take(p, &stored, &context);
            }
        }
        let previous = period.saturating_sub(1);
        if let Some(stored) = self.redis.ticket_key(previous).await? {
            self.take(previous, &stored, &self.redis.key(&ticket_keys::name(previous)));
        }
        ticketer.prune(now);
        // The keys carry no TTL (never evicted): the past ones go here, those of periods the
        // whole cluster was down through included.
        let past: Vec<u64> = (2..=4).filter_map(|back| period.checked_sub(back)).collect();
        self.redis.forget_ticket_keys(&past).await
    }

    fn take(&self, period: u64, stored: &str, context: &str) {
        let bytes = open(self.secret.as_ref(), stored, context)
            .map_err(|e| e.to_string())
            .and_then(|b64| STANDARD.decode(b64.trim()).map_err(|_| "not base64".to_string()))
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).map_err(|_| "not 32 bytes".to_string()));
        match bytes {
            Ok(bytes) => self.ticketer.install(period, bytes),
            Err(e) => tracing::warn!(
                key = context,
                error = %e,
                "the cluster's TLS ticket key is not usable: this replica keeps its own (sessions resume here only)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    fn at_period(p: u64) -> u64 {
        p * 12 * H + 5
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let t = Ticketer::new();
        let now = at_period(1000);
        let a = t.seal_at(now, b"session state").unwrap();
        let b = t.seal_at(now, b"session state").unwrap();
        assert_ne!(a, b, "a random nonce per ticket");
        assert_eq!(a[..ID_LEN], b[..ID_LEN], "same key id");
        assert_eq!(t.open_at(now, &a).unwrap(), b"session state");
        assert_eq!(t.open_at(now + 11 * H, &b).unwrap(), b"session state");
        assert!(!a.windows(7).any(|w| w == b"session"), "encrypted");
    }

    #[test]
    fn bad_forged_truncated_tickets_open_to_none() {
        let t = Ticketer::new();
        let now = at_period(1000);
        let good = t.seal_at(now, b"state").unwrap();
        for len in 0..good.len() {
            assert!(t.open_at(now, &good[..len]).is_none(), "truncated to {len}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(t.open_at(now, &bad).is_none(), "byte {i} flipped");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(t.open_at(now, &longer).is_none());
        assert!(t.open_at(now, &[0u8; 200]).is_none());
        assert!(t.open_at(now, &[]).is_none());
        // Another ticketer (another replica with its own key) does not open it either.
        assert!(Ticketer::new().open_at(now, &good).is_none());
        // A forgery under a known key id but another key.
        let mut forged = good[..ID_LEN].to_vec();
        let other = TicketKey::random();
        forged.extend_from_slice(&other.seal(b"evil").unwrap()[ID_LEN..]);
        assert!(t.open_at(now, &forged).is_none());
    }

    #[test]
    fn rotation_previous_opens_two_back_does_not() {
        let t = Ticketer::new();
        let p = 1000;
        let old = t.seal_at(at_period(p), b"old").unwrap();
        let newer = t.seal_at(at_period(p + 1), b"newer").unwrap();
        assert_ne!(old[..ID_LEN], newer[..ID_LEN], "a new key each period");
        // One rotation later: the previous key still opens.
        assert_eq!(t.open_at(at_period(p + 1), &old).unwrap(), b"old");
        // Two rotations later: not any more, even before pruning.
        assert!(t.open_at(at_period(p + 2), &old).is_none());
        assert_eq!(t.open_at(at_period(p + 2), &newer).unwrap(), b"newer");
        t.prune(at_period(p + 2));
        assert!(!t.read().contains_key(&p));
        assert!(t.open_at(at_period(p + 1), &old).is_none(), "pruned");
        // A ticket outlives its lifetime: made at the very end of its period, it opens for
        // the whole next one.
        let late = t.seal_at(at_period(p + 3) - 6, b"late").unwrap();
        assert_eq!(t.open_at(at_period(p + 3) + 12 * H - 10, &late).unwrap(), b"late");
        assert!(LIFETIME < ROTATION);
    }

    #[test]
    fn the_clusters_key_replaces_the_own_and_is_shared() {
        let a = Ticketer::new();
        let b = Ticketer::new();
        let now = at_period(2000);
        let p = a.period(now);
        let before = b.seal_at(now, b"b's own").unwrap();
        // a's key wins the offer: b installs it.
        b.install(p, a.bytes_for(p));
        let ticket = a.seal_at(now, b"from a").unwrap();
        assert_eq!(b.open_at(now, &ticket).unwrap(), b"from a");
        let back = b.seal_at(now, b"from b").unwrap();
        assert_eq!(a.open_at(now, &back).unwrap(), b"from b");
        assert!(b.open_at(now, &before).is_none(), "b's own key is gone");
    }

    #[test]
    fn the_next_periods_key_opens() {
        let t = Ticketer::new();
        let p = 3000;
        // A replica whose clock is ahead sealed with the next key, which this one holds.
        let ahead = t.seal_at(at_period(p + 1), b"ahead").unwrap();
        assert_eq!(t.open_at(at_period(p), &ahead).unwrap(), b"ahead");
    }
}
