//! Everything start-up reads and checks before anything listens, done once: `npg check-config`
//! runs exactly this, and `serve` builds the app from what it loaded (no second copy of a
//! check that could drift).

use crate::auth::Tokens;
use crate::config::{PolicySources, Settings, TyposquatPolicy};
use crate::guard::age::AgeGate;
use crate::guard::blocklist::Blocklist;
use crate::guard::names::NameSet;
use crate::guard::scripts::ScriptGate;
use crate::guard::signatures::RegistryKeys;
use crate::guard::typosquat::{Action, TyposquatRule, Typosquats};
use crate::proxy::cache::bucket::BucketSettings;
use crate::tls::TlsFiles;
use crate::upstream;
use anyhow::Context;

/// The settings' files and compiled values, ready for `App::new`.
pub(crate) struct Preflight {
    pub(crate) upstream: upstream::Settings,
    pub(crate) blocklist: Blocklist,
    /// `Some` when MIN_RELEASE_AGE is set.
    pub(crate) age: Option<AgeGate>,
    /// `Some` unless INSTALL_SCRIPT_POLICY is off.
    pub(crate) scripts: Option<ScriptGate>,
    /// `None` when TYPOSQUAT_POLICY is off.
    pub(crate) typosquat: Option<TyposquatRule>,
    /// `Some` when AUTH_TOKENS_FILE is set.
    pub(crate) tokens: Option<Tokens>,
    /// `Some` when TLS is on.
    pub(crate) tls: Option<TlsFiles>,
    /// `Some` with TARBALL_STORE=s3.
    pub(crate) bucket: Option<BucketSettings>,
}

impl Preflight {
    /// Validates the settings and loads their files; the error names the setting.
    pub(crate) fn run(settings: &Settings) -> anyhow::Result<Preflight> {
        settings.validate()?;
        let upstream = settings.upstream()?;
        let bucket = settings.store.tarball_bucket()?;
        let blocklist = Blocklist::load(&settings.policy.blacklist_path).context("BLACKLIST_PATH")?;
        // Compiled even while the gate is off, so a bad pattern is found before it is needed.
        let gate = AgeGate::new(
            settings.min_release_age.unwrap_or_default(),
            &settings.min_release_age_exclude,
        )?;
        if let Some(dir) = &settings.policy.osv_feed_dir {
            // Later a vanished directory keeps the list in use; at start it is a mistake.
            std::fs::read_dir(dir).with_context(|| format!("OSV_FEED_DIR: cannot read {}", dir.display()))?;
        }
        let scripts = ScriptGate::new(
            settings.install_script_policy,
            NameSet::parse(&settings.install_script_allow, "INSTALL_SCRIPT_ALLOW")?,
            settings.install_script_quarantine,
        );
        let typosquat = typosquat(&settings.policy)?;
        if let Some(path) = &settings.signature_keys_file {
            RegistryKeys::load(path).context("SIGNATURE_KEYS_FILE")?;
        }
        let tokens = match &settings.auth_tokens_file {
            Some(path) => Some(Tokens::load(path).context("AUTH_TOKENS_FILE")?),
            None => None,
        };
        Ok(Preflight {
            upstream,
            blocklist,
            age: settings.min_release_age.map(|_| gate),
            scripts,
            typosquat,
            tokens,
            tls: TlsFiles::load(settings)?,
            bucket,
        })
    }
}

/// The typosquat rule TYPOSQUAT_POLICY, TYPOSQUAT_LIST and TYPOSQUAT_ALLOW make; off reads
/// nothing.
pub(crate) fn typosquat(sources: &PolicySources) -> anyhow::Result<Option<TyposquatRule>> {
    let action = match sources.typosquat_policy {
        TyposquatPolicy::Off => return Ok(None),
        TyposquatPolicy::Warn => Action::Warn,
        TyposquatPolicy::Block => Action::Block,
    };
    let list = match &sources.typosquat_list {
        Some(path) => Typosquats::load(path).context("TYPOSQUAT_LIST")?,
        None => Typosquats::built_in(),
    };
    Ok(Some(TyposquatRule::new(action, list, &sources.typosquat_allow)?))
}
