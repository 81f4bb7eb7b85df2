//! The ACME manager, one per replica. It keeps the resolver serving the cluster's current
//! certificate and, when there is none or it is due for renewal (a third of its lifetime
//! left), orders a new one under the Redis lock `acme:<domain>` so one replica orders at a
//! time. The others take the result from Redis on the `CertificateReplaced` event, or at the
//! next periodic re-read (pub/sub may lose messages).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use tokio::sync::broadcast::error::RecvError;

use super::store::{CertBundle, Challenge};
use super::{Tls, TlsMode};
use crate::clock::now_secs;
use crate::cluster::bus::{Bus, Event};
use crate::cluster::lock::RedisLock;
use crate::cluster::redis::SharedRedis;
use crate::config::{AcmeChallenge, Settings};
use crate::retry::{Backoff, random_fraction};

/// Longer than an order takes; short, so a dead holder is replaced soon.
const LOCK_TTL: Duration = Duration::from_secs(120);
/// How long a replica that lost the lock waits before looking again.
const WAIT_FOR_HOLDER: Duration = Duration::from_secs(2);
/// How long a replica of a cluster waits for its first health check before it orders anyway.
const FIRST_ORDER_WAIT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

struct Manager {
    tls: Arc<Tls>,
    bus: Arc<Bus>,
    lock: Arc<RedisLock>,
    directory: String,
    ca_file: Option<std::path::PathBuf>,
    email: Option<String>,
    challenge: ChallengeType,
    check_every: Duration,
    /// What this replica serves, to write it back if Redis comes back empty.
    current: Option<CertBundle>,
    /// The certificate whose ARI window was last asked for.
    ari_checked: Option<String>,
    backoff: Backoff,
    /// In a cluster, replicas sit behind a balancer (see `Tls::health_checked`).
    clustered: bool,
    started: std::time::Instant,
}

/// Starts the manager when NPG_DOMAIN is set.
pub(crate) fn spawn(
    jobs: &crate::jobs::Jobs,
    tls: Arc<Tls>,
    redis: Arc<SharedRedis>,
    bus: Arc<Bus>,
    settings: &Settings,
) {
    let Some(primary) = tls.domains.first().cloned() else {
        return;
    };
    let challenge = match settings.acme_challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let clustered = redis.clustered();
    let lock = Arc::new(RedisLock::new(redis, &format!("acme:{primary}"), LOCK_TTL));
    let manager = Manager {
        lock: lock.clone(),
        tls,
        bus,
        directory: settings.acme_directory_url.to_string(),
        ca_file: settings.acme_ca_file.clone(),
        email: settings.acme_email.clone(),
        challenge,
        check_every: settings.acme_check_interval,
        current: None,
        ari_checked: None,
        backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
        clustered,
        started: std::time::Instant::now(),
    };
    jobs.spawn_leased("acme", lock, manager.run());
}

impl Manager {
    fn primary(&self) -> &str {
        &self.tls.domains[0]
    }

    async fn run(mut self) {
        let mut events = self.bus.subscribe();
        loop {
            let wait = self.step().await;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                event = events.recv() => match event {
                    Ok(Event::CertificateReplaced { domain }) if domain == self.primary() => {}
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => events = self.bus.subscribe(),
                },
            }
        }
    }

    /// One look at the cluster's certificate; returns how long to wait before the next.
    async fn step(&mut self) -> Duration {
        let stored = match self.tls.store.load_cert(self.primary()).await {
            Ok(stored) => stored,
            Err(e) => {
                // Redis trouble: keep serving what we have and look again soon.
                self.record_error(format!("cannot read the certificate: {e}"));
                self.tls.mark_looked();
                return FIRST_BACKOFF;
            }
        };
        let stored = match (stored, &self.current) {
            (None, Some(mine)) if mine.not_after > now_secs() => {
                // Redis came back empty: write ours back rather than ordering a new one.
                let mine = mine.clone();
                if let Ok(true) = self.tls.store.restore_cert(self.primary(), &mine).await {
                    tracing::info!(domain = self.primary(), "wrote the certificate back to redis");
                }
                Some(mine)
            }
            (stored, _) => stored,
        };
        let mut stored = stored;
        if let Some(bundle) = &stored {
            self.serve(bundle);
        }
        self.tls.mark_looked();
        if let Some(bundle) = stored.as_mut() {
            self.consult_ari(bundle).await;
            if now_secs() < bundle.renew_at() {
                let until_renewal = Duration::from_secs((bundle.renew_at() - now_secs()).max(1) as u64);
                return until_renewal.min(self.check_every);
            }
        }
        // Behind a balancer: no order before this replica is routed to (bounded, for clusters
        // without health checks).
        if self.clustered && !self.tls.health_checked() && self.started.elapsed() < FIRST_ORDER_WAIT {
            return WAIT_FOR_HOLDER;
        }
        if !self.lock.try_acquire().await {
            return WAIT_FOR_HOLDER;
        }
        // Another replica may have stored a certificate while we waited for the lock.
        if let Ok(Some(b)) = self.tls.store.load_cert(self.primary()).await
            && now_secs() < b.renew_at()
            && stored.as_ref().is_none_or(|s| s.serial != b.serial)
        {
            self.lock.release().await;
            self.serve(&b);
            return Duration::ZERO;
        }
        // With ARI, the CA learns which certificate the new one replaces.
        let replacing = stored.as_ref().filter(|b| b.ari_renew_at.is_some()).and_then(|b| {
            CertificateIdentifier::try_from(&b.leaf()?)
                .ok()
                .map(CertificateIdentifier::into_owned)
        });
        let result = self.order_holding_lock(replacing).await;
        self.lock.release().await;
        self.tls.metrics.acme_order(result.is_ok());
        match result {
            Ok(bundle) => {
                self.backoff.reset();
                self.serve(&bundle);
                Duration::ZERO
            }
            Err(e) => {
                self.record_error(format!("{e:#}"));
                self.backoff.after_failure()
            }
        }
    }

    /// Asks the CA for its renewal window (ARI) once per certificate; a time picked at random
    /// in it is stored with the certificate, so every replica renews at the same moment.
    /// CAs without ARI (pebble 2.4) keep the one-third-of-lifetime rule.
    async fn consult_ari(&mut self, bundle: &mut CertBundle) {
        if bundle.ari_renew_at.is_some() || self.ari_checked.as_deref() == Some(bundle.serial.as_str()) {
            return;
        }
        self.ari_checked = Some(bundle.serial.clone());
        let Some(id) = bundle
            .leaf()
            .and_then(|leaf| CertificateIdentifier::try_from(&leaf).ok())
        else {
            return;
        };
        let account = match self.account(false).await {
            Ok(a) => a,
            Err(e) => return tracing::debug!(error = %e, "no ACME account to ask for renewal information"),
        };
        match account.renewal_info(&id).await {
            Ok((info, _)) => {
                let (start, end) = (
                    info.suggested_window.start.unix_timestamp(),
                    info.suggested_window.end.unix_timestamp(),
                );
                let at = start + ((end - start).max(0) as f64 * random_fraction()) as i64;
                if let Err(e) = self.tls.store.set_renew_at(self.primary(), &bundle.serial, at).await {
                    tracing::warn!(error = %e, "cannot share the renewal time");
                }
                bundle.ari_renew_at = Some(at);
                self.tls.set_status(TlsMode::Acme, Some((self.primary(), bundle)), None);
                tracing::info!(
                    domain = self.primary(),
                    renew_at = at,
                    "renewal time from the CA's ARI window"
                );
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                tracing::debug!("the CA offers no renewal information; renewing with a third of the lifetime left")
            }
            Err(e) => tracing::warn!(error = %e, "renewal information request failed"),
        }
    }

    fn serve(&mut self, bundle: &CertBundle) {
        if self.current.as_ref().is_some_and(|c| c.serial == bundle.serial) {
            return;
        }
        match bundle.certified_key() {
            Ok(key) => {
                self.tls.resolver.install(&self.tls.domains, key);
                self.tls.set_status(TlsMode::Acme, Some((self.primary(), bundle)), None);
                tracing::info!(domain = self.primary(), serial = %bundle.serial, "serving certificate");
                self.current = Some(bundle.clone());
            }
            Err(e) => self.record_error(format!("unusable certificate in the store: {e}")),
        }
    }

    fn record_error(&self, error: String) {
        tracing::warn!(domain = self.primary(), %error, "acme");
        let mut status = self.tls.status.lock().expect("tls status poisoned");
        status.last_error = Some(error);
    }

    async fn builder(&self) -> anyhow::Result<instant_acme::AccountBuilder> {
        Ok(match &self.ca_file {
            Some(path) => Account::builder_with_root(path).context("ACME_CA_FILE")?,
            None => Account::builder()?,
        })
    }

    /// The cluster's account for this directory, created once.
    async fn account(&self, fresh: bool) -> anyhow::Result<Account> {
        if !fresh && let Some(json) = self.tls.store.load_account(&self.directory).await? {
            let credentials = serde_json::from_str(&json).context("stored ACME account")?;
            return Ok(self.builder().await?.from_credentials(credentials).await?);
        }
        let contact = self.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contacts,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = self.builder().await?.create(&new, self.directory.clone(), None).await?;
        let json = serde_json::to_string(&credentials)?;
        self.tls.store.save_account(&self.directory, &json, false).await?;
        tracing::info!(directory = %self.directory, "created the ACME account");
        Ok(account)
    }

    /// `order`, extending the lock while it runs (a slow CA must not let another replica in);
    /// a lost lock ends the order (its successor orders).
    async fn order_holding_lock(
        &self,
        replacing: Option<CertificateIdentifier<'static>>,
    ) -> anyhow::Result<CertBundle> {
        let held = self.lock.hold_while(self.order(replacing)).await;
        held.unwrap_or_else(|| Err(anyhow!("lost the ACME lock while ordering")))
    }

    /// Orders, answers the challenges through the store, finalizes with a fresh key and
    /// stores the result (only while the lock is ours), then tells the other replicas.
    async fn order(&self, replacing: Option<CertificateIdentifier<'static>>) -> anyhow::Result<CertBundle> {
        let ids: Vec<Identifier> = self.tls.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
        let new_order = match replacing {
            Some(id) => NewOrder::new(&ids).replaces(id),
            None => NewOrder::new(&ids),
        };
        let account = self.account(false).await?;
        let mut order = match account.new_order(&new_order).await {
            Err(instant_acme::Error::Api(problem)) if is_unknown_account(&problem) => {
                tracing::warn!("the CA no longer knows our account; creating a new one");
                self.account(true).await?.new_order(&new_order).await
            }
            other => other,
        }
        .context("new order")?;
        self.tls.store.count_order().await;
        tracing::info!(domains = ?self.tls.domains, "placed an ACME order");
        let mut published = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("authorization")?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("authorization is {other:?}"),
            }
            let mut challenge = authz
                .challenge(self.challenge.clone())
                .context("the CA offers no such challenge")?;
            let Identifier::Dns(domain) = challenge.identifier().identifier.clone() else {
                bail!("not a DNS identifier");
            };
            let key_authorization = challenge.key_authorization().as_str().to_string();
            let (kind, id) = match self.challenge {
                ChallengeType::TlsAlpn01 => (Challenge::TlsAlpn01, domain),
                _ => (Challenge::Http01, challenge.token.clone()),
            };
            self.tls.store.put_challenge(kind, &id, &key_authorization).await?;
            published.push((kind, id));
            challenge.set_ready().await.context("challenge ready")?;
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retry).await.context("order");
        for (kind, id) in &published {
            self.tls.store.remove_challenge(*kind, id).await;
        }
        match status? {
            OrderStatus::Ready => {}
            other => bail!("order ended {other:?}"),
        }
        let key_pem = order.finalize().await.context("finalize")?;
        let chain_pem = order.poll_certificate(&retry).await.context("certificate")?;
        let bundle = CertBundle::from_pem(chain_pem, key_pem)?;
        if !self.tls.store.save_cert(self.primary(), &bundle, &self.lock).await? {
            bail!("lost the lock before storing the certificate; another replica took over");
        }
        self.bus
            .publish(Event::CertificateReplaced {
                domain: self.primary().to_string(),
            })
            .await;
        tracing::info!(domain = self.primary(), serial = %bundle.serial, "stored a new certificate");
        Ok(bundle)
    }
}

/// The CA's answer when it no longer knows the account npg stored (it was reset, or the
/// account deactivated): then a new account is made, not the order given up.
fn is_unknown_account(problem: &instant_acme::Problem) -> bool {
    problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: &str) -> instant_acme::Problem {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_unknown_account_is_told_by_the_problem_type_not_its_words() {
        // As pebble and Let's Encrypt send it.
        let gone = problem(
            r#"{"type":"urn:ietf:params:acme:error:accountDoesNotExist","detail":"unable to find account","status":400}"#,
        );
        assert!(is_unknown_account(&gone));
        let other = problem(
            r#"{"type":"urn:ietf:params:acme:error:malformed","detail":"accountDoesNotExist was not the problem","status":400}"#,
        );
        assert!(!is_unknown_account(&other), "words in the detail do not count");
    }
}
