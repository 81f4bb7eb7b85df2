//! Settings: every one is a `--flag` and an env variable (the Node NPG's names where they
//! exist), validated at start so a bad value stops npg with a message naming it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::cluster::sentinel::{HostPort, SentinelTarget, Target};
use crate::guard::scripts::ScriptPolicy;
use crate::guard::signatures::SignatureMode;
use crate::proxy::cache::bucket::{BucketSettings, Credentials};
use crate::upstream::origins::Origin;
use crate::upstream::redact::redact_url;
use crate::upstream::{self, UpstreamAuth};
use anyhow::anyhow;

#[derive(Parser, Debug)]
#[command(
    name = "npg",
    version,
    about = "npg: security gateway and caching proxy for the npm registry"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) settings: Settings,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Validate the settings, print the effective configuration and exit.
    CheckConfig,
    /// Print a new secret key (base64, 32 bytes) for NPG_SECRET_KEY_FILE.
    GenKey,
    /// Probe a running npg (`npg health --url ...`); exit 0 when it serves.
    Health,
    /// Show a running cluster's state (`npg status --help`).
    Status,
    /// Read a token on stdin, print its SHA-256: the start of its AUTH_TOKENS_FILE line.
    HashToken,
    /// Check lockfiles against the policy before installing: `npg lockfile check --help`.
    Lockfile,
    /// Fill a running npg's caches with what lockfiles name: `npg warm --help`.
    Warm,
    /// Write what lockfiles name to a signed bundle: `npg export --help`.
    Export,
    /// Check a signed bundle and put it into STORAGE_DIR: `npg import --help`.
    Import,
}

impl Command {
    /// The subcommand named by the first argument when it needs none of the server's settings
    /// (which require REGISTRY_URL): those run without them.
    pub(crate) fn standalone(first_arg: Option<&str>) -> Option<Command> {
        match first_arg? {
            "gen-key" => Some(Command::GenKey),
            "health" => Some(Command::Health),
            "status" => Some(Command::Status),
            "hash-token" => Some(Command::HashToken),
            "lockfile" => Some(Command::Lockfile),
            "warm" => Some(Command::Warm),
            "export" => Some(Command::Export),
            "import" => Some(Command::Import),
            _ => None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Settings {
    /// Port of the plain HTTP listener.
    #[arg(long, env = "HTTP_PORT", default_value_t = 3000)]
    pub(crate) http_port: u16,

    /// Address the listeners bind to.
    #[arg(long, env = "HTTP_BIND", default_value = "0.0.0.0")]
    pub(crate) http_bind: IpAddr,

    /// Public base URL of the npm API, path included; tarball URLs are rewritten to
    /// `<PROXY_URL>/<name>/-/<file>`.
    #[arg(long, env = "PROXY_URL", default_value = "http://127.0.0.1:3000/npm", value_parser = parse_http_url)]
    pub(crate) proxy_url: Url,

    /// Upstream registry (required), e.g. `REGISTRY_URL=$(npm config get registry)`.
    #[arg(long, env = "REGISTRY_URL", value_parser = parse_http_url)]
    pub(crate) registry_url: Url,

    /// Directory of the tarball cache (Node NPG layout: `<2 chars>/<name>/<file>`).
    #[arg(long, env = "STORAGE_DIR", default_value = "./var/storage")]
    pub(crate) storage_dir: PathBuf,

    /// Use Redis as the shared metadata cache (on by default when REDIS_URL is set).
    #[arg(long, env = "ENABLE_REDIS_CACHE", value_parser = parse_bool)]
    pub(crate) enable_redis_cache: Option<bool>,

    /// Redis URL (`redis://[:password@]host:port/db`); overrides REDIS_HOST/PORT/PASSWORD/DB.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,

    /// Redis host (when REDIS_URL is not set).
    #[arg(long, env = "REDIS_HOST", default_value = "127.0.0.1")]
    pub(crate) redis_host: String,

    /// Redis port (when REDIS_URL is not set).
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub(crate) redis_port: u16,

    /// Redis password (when REDIS_URL is not set).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub(crate) redis_password: Option<String>,

    /// File holding the Redis password (a compose or systemd secret); it also applies to a
    /// REDIS_URL that has no password of its own.
    #[arg(long, env = "REDIS_PASSWORD_FILE")]
    pub(crate) redis_password_file: Option<PathBuf>,

    /// Redis database number (when REDIS_URL is not set).
    #[arg(long, env = "REDIS_DB", default_value_t = 0)]
    pub(crate) redis_db: i64,

    /// Prefix of every Redis key and channel.
    #[arg(long, env = "REDIS_PREFIX", default_value = "npg:")]
    pub(crate) redis_prefix: String,

    /// Redis Sentinel addresses (`host:port,...`): the master is looked up through them and
    /// followed across failovers. Excludes REDIS_URL; the master's password and database are
    /// REDIS_PASSWORD(_FILE) and REDIS_DB.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',', value_parser = HostPort::from_str)]
    pub(crate) redis_sentinels: Vec<HostPort>,

    /// The name the sentinels monitor the master under (required with REDIS_SENTINELS).
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub(crate) redis_sentinel_master: Option<String>,

    /// Password of the sentinels themselves, when they require one.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub(crate) redis_sentinel_password: Option<String>,

    /// File holding REDIS_SENTINEL_PASSWORD (a compose or systemd secret).
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD_FILE")]
    pub(crate) redis_sentinel_password_file: Option<PathBuf>,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub(crate) log_level: String,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    /// How long a packument is served without asking upstream (e.g. 300, 300s, 5m).
    #[arg(long, env = "METADATA_TTL", default_value = "5m", value_parser = parse_duration)]
    pub(crate) metadata_ttl: Duration,

    /// How long an expired packument is kept to serve when upstream fails, is down or is slow
    /// to revalidate (stale-if-error, stale-while-revalidate).
    #[arg(long, env = "METADATA_MAX_STALE", default_value = "7d", value_parser = parse_duration)]
    pub(crate) metadata_max_stale: Duration,

    /// How long a miss is remembered by the cluster: a package upstream does not have, or a
    /// packument just asked again for a version or file it lacks (0 turns it off).
    #[arg(long, env = "METADATA_MISS_TTL", default_value = "30s", value_parser = parse_duration)]
    pub(crate) metadata_miss_ttl: Duration,

    /// How long clients may reuse a packument without asking again (`Cache-Control:
    /// max-age`); 0: `no-cache`, they revalidate each time (a 304), so a new block applies at once.
    #[arg(long, env = "CLIENT_MAX_AGE", default_value = "0", value_parser = parse_duration)]
    pub(crate) client_max_age: Duration,

    /// Size of the in-process cache of rendered packuments, in MiB.
    #[arg(long, env = "MEMORY_CACHE_MB", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub(crate) memory_cache_mb: u64,

    /// Packuments larger than this (decoded), in MiB, are refused (the largest public ones
    /// are about 100 MB).
    #[arg(long, env = "MAX_PACKUMENT_MB", default_value_t = 160, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) max_packument_mb: u64,

    /// Memory for packuments being read and rendered at once, in MiB; rendering takes about
    /// three times a document's size, so keep it at least 3 x MAX_PACKUMENT_MB.
    #[arg(long, env = "RENDER_MEMORY_MB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub(crate) render_memory_mb: u64,

    /// Memory for small tarballs (up to 256 KiB each) also kept in process, in MiB, and as
    /// much again for large ones while they are sent (one copy per file, shared by its
    /// clients; beyond it they stream in small reads); 0 = none.
    #[arg(long, env = "TARBALL_MEMORY_MB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=65536))]
    pub(crate) tarball_memory_mb: u64,

    /// Where tarballs are kept (TARBALL_STORE, the S3_* settings, TARBALL_LOCAL_CACHE_MB).
    #[command(flatten)]
    pub(crate) store: StoreSettings,

    /// Upstream timeout: for the response headers, and for each read of a body.
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) upstream_timeout: Duration,

    /// A whole packument fetch from upstream, headers and body: after it, the stale copy is
    /// served (stale-if-error) or the client gets 504.
    #[arg(long, env = "UPSTREAM_FETCH_DEADLINE", default_value = "60s", value_parser = parse_duration)]
    pub(crate) upstream_fetch_deadline: Duration,

    /// A whole tarball download from upstream (10m: a 100 MB tarball at 170 KB/s).
    #[arg(long, env = "UPSTREAM_TARBALL_DEADLINE", default_value = "10m", value_parser = parse_duration)]
    pub(crate) upstream_tarball_deadline: Duration,

    /// A passthrough request with a body (publish), upload and answer, instead of
    /// UPSTREAM_TIMEOUT.
    #[arg(long, env = "UPSTREAM_UPLOAD_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub(crate) upstream_upload_timeout: Duration,

    /// Hosts tarballs may come from besides REGISTRY_URL's origin, comma-separated: `host`,
    /// `host:port` (https) or `http://host[:port]`; redirects are followed only within them.
    #[arg(long, env = "UPSTREAM_TARBALL_HOSTS", value_delimiter = ',')]
    pub(crate) upstream_tarball_hosts: Vec<Origin>,

    /// npg's own upstream credentials, by scope: lines `<@scope or *> <Authorization value>`;
    /// used on npg's packument and tarball reads only, never on a client's request.
    #[arg(long, env = "UPSTREAM_AUTH_FILE")]
    pub(crate) upstream_auth_file: Option<PathBuf>,

    /// A new connection must deliver its first request head within this (TLS handshake
    /// included), and every later head too; else it is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) header_read_timeout: Duration,

    /// A connection with no request in flight for this long is closed (an idle HTTP/1.1
    /// connection is waiting for a request head: HEADER_READ_TIMEOUT closes it first).
    #[arg(long, env = "KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub(crate) keepalive_timeout: Duration,

    /// A response the client stops taking for this long (it stopped reading) is given up and
    /// its connection closed; waiting for upstream does not count.
    #[arg(long, env = "SEND_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub(crate) send_timeout: Duration,

    /// Open client connections per listener; beyond it new ones wait in the kernel backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections: u32,

    /// Each client connection's kernel send buffer (SO_SNDBUF), in KiB; 0 = the kernel's own
    /// sizing (autotuning). A small one keeps clients near npg fair under load (see the README's
    /// Performance), and caps one connection at about twice it per round trip.
    #[arg(long, env = "SEND_BUFFER_KB", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub(crate) send_buffer_kb: u32,

    /// Name of this replica in health, metrics and Redis client lists (default: host name).
    #[arg(long, env = "INSTANCE_NAME")]
    pub(crate) instance_name: Option<String>,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) shutdown_timeout: Duration,

    /// On SIGTERM, keep serving this long with `/api/health` answering 503, so a balancer
    /// takes the replica out before its listeners close (set it above the health-check interval).
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub(crate) shutdown_delay: Duration,

    /// Where the guard's rules come from (shared with `npg lockfile check`).
    #[command(flatten)]
    pub(crate) policy: PolicySources,

    /// How often the malware feed is refreshed, in milliseconds (or with a unit: 30m).
    #[arg(long, env = "UPDATE_INTERVAL", default_value = "1800000ms", value_parser = parse_millis)]
    pub(crate) update_interval: Duration,

    /// Refresh the malware feed in the background.
    #[arg(long, env = "ENABLE_SCHEDULED_UPDATES", default_value = "true", value_parser = parse_bool)]
    pub(crate) enable_scheduled_updates: bool,

    /// Hide versions published more recently than this (e.g. 72h, 7d); off when unset.
    #[arg(long, env = "MIN_RELEASE_AGE", value_parser = parse_duration)]
    pub(crate) min_release_age: Option<Duration>,

    /// Packages exempt from MIN_RELEASE_AGE: names, or /regex/ patterns, comma-separated.
    #[arg(long, env = "MIN_RELEASE_AGE_EXCLUDE", value_delimiter = ',')]
    pub(crate) min_release_age_exclude: Vec<String>,

    /// Versions with install scripts: `quarantine` hides a version that adds them (the release
    /// before it by semver had none), `block-all` hides every one, `off`.
    #[arg(long, env = "INSTALL_SCRIPT_POLICY", value_enum, default_value_t = ScriptPolicy::Off)]
    pub(crate) install_script_policy: ScriptPolicy,

    /// Packages exempt from INSTALL_SCRIPT_POLICY: names, or /regex/ patterns, comma-separated.
    #[arg(long, env = "INSTALL_SCRIPT_ALLOW", value_delimiter = ',')]
    pub(crate) install_script_allow: Vec<String>,

    /// Lift an install-script hold once the version is this old (e.g. 14d); never when unset.
    #[arg(long, env = "INSTALL_SCRIPT_QUARANTINE", value_parser = parse_duration)]
    pub(crate) install_script_quarantine: Option<Duration>,

    /// Follow the registry's changes feed to invalidate changed packages at once.
    #[arg(long, env = "ENABLE_NPM_CHANGES_POLLER", default_value = "false", value_parser = parse_bool)]
    pub(crate) enable_npm_changes_poller: bool,

    /// Base URL of the changes feed (`<url>/_changes`, `<url>/` for `update_seq`); required
    /// when the poller is on.
    #[arg(long, env = "REGISTRY_POLL_URL", value_parser = parse_http_url)]
    pub(crate) registry_poll_url: Option<Url>,

    /// Pause between changes-feed polls once caught up, in milliseconds (or with a unit).
    #[arg(long, env = "NPM_CHANGES_POLL_INTERVAL", default_value = "5000ms", value_parser = parse_millis)]
    pub(crate) npm_changes_poll_interval: Duration,

    /// Changes per page (at most 10000).
    #[arg(long, env = "NPM_CHANGES_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub(crate) npm_changes_batch_size: u32,

    /// Domain names to serve over HTTPS with an ACME certificate, comma-separated; turns TLS on.
    #[arg(long, env = "NPG_DOMAIN", value_delimiter = ',')]
    pub(crate) npg_domain: Vec<String>,

    /// Contact address of the ACME account.
    #[arg(long, env = "ACME_EMAIL")]
    pub(crate) acme_email: Option<String>,

    /// ACME directory (any RFC 8555 CA; default Let's Encrypt production).
    #[arg(long, env = "ACME_DIRECTORY_URL", default_value = "https://acme-v02.api.letsencrypt.org/directory", value_parser = parse_http_url)]
    pub(crate) acme_directory_url: Url,

    /// Extra root certificate (PEM) to trust for the ACME server's own HTTPS (private CAs, tests).
    #[arg(long, env = "ACME_CA_FILE")]
    pub(crate) acme_ca_file: Option<PathBuf>,

    /// ACME challenge: http-01 (answered on HTTP_PORT) or tls-alpn-01 (on HTTPS_PORT).
    #[arg(long, env = "ACME_CHALLENGE", value_enum, default_value_t = AcmeChallenge::Http01)]
    pub(crate) acme_challenge: AcmeChallenge,

    /// How often each replica re-reads the certificate from Redis (it also listens for events).
    #[arg(long, env = "ACME_CHECK_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub(crate) acme_check_interval: Duration,

    /// Port of the HTTPS listener (when TLS is on).
    #[arg(long, env = "HTTPS_PORT", default_value_t = 443)]
    pub(crate) https_port: u16,

    /// Address of the HTTPS listener (default: HTTP_BIND).
    #[arg(long, env = "HTTPS_BIND")]
    pub(crate) https_bind: Option<IpAddr>,

    /// With TLS on, redirect plain HTTP to HTTPS (ACME answers, health and ping stay on HTTP).
    #[arg(long, env = "HTTP_REDIRECT", default_value = "true", value_parser = parse_bool)]
    pub(crate) http_redirect: bool,

    /// Static certificate chain (PEM), the alternative to ACME.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub(crate) tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub(crate) tls_key_file: Option<PathBuf>,

    /// 32-byte key (base64, from `npg gen-key`) encrypting private keys at rest in Redis.
    #[arg(long, env = "NPG_SECRET_KEY_FILE")]
    pub(crate) npg_secret_key_file: Option<PathBuf>,

    /// Turns access control on: the tokens file (`<sha256> <name> <perm>[,<perm>]` a line,
    /// from `npg hash-token`), reloaded on change; unset = no tokens needed.
    #[arg(long, env = "AUTH_TOKENS_FILE")]
    pub(crate) auth_tokens_file: Option<PathBuf>,

    /// What a bad npm registry signature does: off, warn (count and log), hide-invalid
    /// (also signatures by keys the registry does not publish), hide-unsigned (also unsigned).
    #[arg(long, env = "SIGNATURE_POLICY", value_enum, default_value_t = SignatureMode::Warn)]
    pub(crate) signature_policy: SignatureMode,

    /// How often the registry's signing keys (`<REGISTRY_URL>-/npm/v1/keys`) are fetched
    /// again; the last good copy is kept under MALWARE_LIST_DIR/registry-keys/.
    #[arg(long, env = "SIGNATURE_KEYS_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub(crate) signature_keys_interval: Duration,

    /// The registry's keys document (`-/npm/v1/keys` JSON) pinned by the operator: signatures
    /// are checked against these keys only, and upstream's keys endpoint is never asked.
    #[arg(long, env = "SIGNATURE_KEYS_FILE")]
    pub(crate) signature_keys_file: Option<PathBuf>,
}

/// Where the guard's rules come from: the files and the feed, as `serve` and `npg lockfile
/// check` (offline) both read them.
#[derive(Args, Debug, Clone)]
pub(crate) struct PolicySources {
    /// The blocklist (Node NPG `blacklist.yml` format); a missing file means no blocklist.
    #[arg(long, env = "BLACKLIST_PATH", default_value = "./etc/blacklist.yml")]
    pub(crate) blacklist_path: PathBuf,

    /// The malware feed: a JSON list of `{package_name, version, reason}`.
    #[arg(long, env = "MALWARE_FEED_URL", default_value = "https://malware-list.aikido.dev/malware_predictions.json", value_parser = parse_http_url)]
    pub(crate) malware_feed_url: Url,

    /// Which feed reasons block, comma-separated (MALWARE, TELEMETRY, PROTESTWARE).
    #[arg(long, env = "MALWARE_FEED_REASONS", default_value = "MALWARE,TELEMETRY,PROTESTWARE", value_delimiter = ',', value_parser = parse_reason)]
    pub(crate) malware_feed_reasons: Vec<String>,

    /// Where the last good feed is kept, so a restart without network still guards.
    #[arg(long, env = "MALWARE_LIST_DIR", default_value = "./var/malware-list")]
    pub(crate) malware_list_dir: PathBuf,

    /// A second malware source: OpenSSF malicious-packages advisories (OSV `MAL-` records) as
    /// a JSON list at this URL, fetched every UPDATE_INTERVAL, kept under MALWARE_LIST_DIR/osv.
    #[arg(long, env = "OSV_FEED_URL", value_parser = parse_http_url, conflicts_with = "osv_feed_dir")]
    pub(crate) osv_feed_url: Option<Url>,

    /// The same from a directory tree of `*.json` OSV records, re-read every UPDATE_INTERVAL.
    #[arg(long, env = "OSV_FEED_DIR")]
    pub(crate) osv_feed_dir: Option<PathBuf>,

    /// Names that look like a popular one: off, warn (served with a notice) or block.
    #[arg(long, env = "TYPOSQUAT_POLICY", value_enum, default_value_t = TyposquatPolicy::Warn)]
    pub(crate) typosquat_policy: TyposquatPolicy,

    /// Packages exempt from TYPOSQUAT_POLICY: names, or /regex/ patterns, comma-separated.
    #[arg(long, env = "TYPOSQUAT_ALLOW", value_delimiter = ',')]
    pub(crate) typosquat_allow: Vec<String>,

    /// The popular names to compare with, one per line (default: the list npg ships).
    #[arg(long, env = "TYPOSQUAT_LIST")]
    pub(crate) typosquat_list: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TyposquatPolicy {
    Off,
    Warn,
    Block,
}

impl Settings {
    /// Whether Redis is used: explicit ENABLE_REDIS_CACHE wins, else REDIS_URL or
    /// REDIS_SENTINELS turns it on.
    pub(crate) fn redis_enabled(&self) -> bool {
        self.enable_redis_cache
            .unwrap_or(self.redis_url.is_some() || !self.redis_sentinels.is_empty())
    }

    /// How to reach the Redis master: one fixed node, or the one the sentinels name.
    pub(crate) fn redis_target(&self) -> anyhow::Result<Target> {
        if self.redis_sentinels.is_empty() {
            if self.redis_sentinel_master.is_some() {
                return Err(anyhow!("REDIS_SENTINEL_MASTER: set without REDIS_SENTINELS"));
            }
            return Ok(Target::Url(self.redis_connection_url()?));
        }
        if self.redis_url.is_some() {
            return Err(anyhow!(
                "REDIS_URL and REDIS_SENTINELS exclude each other: with sentinels the master is \
                 looked up (set its password and database with REDIS_PASSWORD(_FILE) and REDIS_DB)"
            ));
        }
        let master_name = match self.redis_sentinel_master.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => {
                return Err(anyhow!(
                    "REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS (the name the sentinels monitor the master under)"
                ));
            }
        };
        Ok(Target::Sentinels(SentinelTarget {
            sentinels: self.redis_sentinels.clone(),
            master_name,
            sentinel_password: secret(
                "REDIS_SENTINEL_PASSWORD_FILE",
                self.redis_sentinel_password_file.as_deref(),
                self.redis_sentinel_password.as_ref(),
            )?,
            master_password: secret(
                "REDIS_PASSWORD_FILE",
                self.redis_password_file.as_deref(),
                self.redis_password.as_ref(),
            )?,
            db: self.redis_db,
        }))
    }

    /// The Redis connection URL from REDIS_URL or the Node NPG's REDIS_* settings, with the
    /// password of REDIS_PASSWORD_FILE when one is set.
    pub(crate) fn redis_connection_url(&self) -> anyhow::Result<String> {
        let from_file = secret("REDIS_PASSWORD_FILE", self.redis_password_file.as_deref(), None)?;
        if let Some(url) = &self.redis_url {
            let mut parsed = Url::parse(url).map_err(|e| anyhow!("REDIS_URL: not a valid Redis URL ({e})"))?;
            if let Some(p) = from_file.filter(|_| parsed.password().is_none()) {
                parsed
                    .set_password(Some(&p))
                    .map_err(|()| anyhow!("REDIS_URL: cannot take a password"))?;
            }
            return Ok(parsed.into());
        }
        let auth = match from_file.as_ref().or(self.redis_password.as_ref()) {
            Some(p) if !p.is_empty() => {
                format!(
                    ":{}@",
                    percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC)
                )
            }
            _ => String::new(),
        };
        Ok(format!(
            "redis://{auth}{}:{}/{}",
            self.redis_host, self.redis_port, self.redis_db
        ))
    }

    /// PROXY_URL as a string without a trailing slash; with ACME and PROXY_URL left at its
    /// default, `https://<first domain>/npm`.
    pub(crate) fn public_base(&self) -> String {
        let default = self.proxy_url.as_str() == "http://127.0.0.1:3000/npm";
        match self.npg_domain.first() {
            Some(domain) if default => format!("https://{domain}/npm"),
            _ => self.proxy_url.as_str().trim_end_matches('/').to_string(),
        }
    }

    /// Whether npg serves HTTPS (ACME or a static certificate).
    /// These settings for an npg that only this process asks (`npg warm --direct`): plain
    /// HTTP on an ephemeral loopback port, no TLS or ACME, no changes follower; the caches,
    /// Redis and the policy as configured.
    pub(crate) fn local_only(mut self) -> Settings {
        self.http_bind = IpAddr::from([127, 0, 0, 1]);
        self.http_port = 0;
        self.npg_domain.clear();
        self.tls_cert_file = None;
        self.tls_key_file = None;
        self.enable_npm_changes_poller = false;
        self
    }

    pub(crate) fn tls_enabled(&self) -> bool {
        !self.npg_domain.is_empty() || self.tls_cert_file.is_some()
    }

    /// REGISTRY_URL with exactly one trailing slash, so joins keep its path.
    pub(crate) fn upstream_base(&self) -> String {
        format!("{}/", self.registry_url.as_str().trim_end_matches('/'))
    }

    /// How npg talks to upstream; reads UPSTREAM_AUTH_FILE.
    pub(crate) fn upstream(&self) -> anyhow::Result<upstream::Settings> {
        let auth = match &self.upstream_auth_file {
            Some(path) => UpstreamAuth::load(path)?,
            None => UpstreamAuth::default(),
        };
        Ok(upstream::Settings {
            base: Url::parse(&self.upstream_base()).map_err(|e| anyhow!("REGISTRY_URL: {e}"))?,
            timeout: self.upstream_timeout,
            fetch_deadline: self.upstream_fetch_deadline,
            tarball_deadline: self.upstream_tarball_deadline,
            upload_timeout: self.upstream_upload_timeout,
            tarball_hosts: self.upstream_tarball_hosts.clone(),
            auth,
        })
    }

    pub(crate) fn instance(&self) -> String {
        self.instance_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "npg".into())
        })
    }

    /// A copy safe to print: passwords replaced.
    pub(crate) fn redacted(&self) -> Settings {
        let mut shown = self.clone();
        let secrets = [
            &mut shown.redis_password,
            &mut shown.store.aws_access_key_id,
            &mut shown.store.aws_secret_access_key,
            &mut shown.store.aws_session_token,
        ];
        for secret in secrets.into_iter().filter(|s| s.is_some()) {
            *secret = Some("<redacted>".into());
        }
        if shown.redis_sentinel_password.is_some() {
            shown.redis_sentinel_password = Some("<redacted>".into());
        }
        if let Some(mut url) = shown.redis_url.as_deref().and_then(|u| Url::parse(u).ok()) {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            shown.redis_url = Some(url.to_string());
        }
        let urls = [
            Some(&mut shown.proxy_url),
            Some(&mut shown.registry_url),
            Some(&mut shown.policy.malware_feed_url),
            shown.policy.osv_feed_url.as_mut(),
            Some(&mut shown.acme_directory_url),
            shown.registry_poll_url.as_mut(),
            shown.store.s3_endpoint.as_mut(),
        ];
        urls.into_iter().flatten().for_each(redact_url);
        shown
    }

    /// Checks that need more than a value parser: Redis URL syntax, a usable storage dir (the
    /// files the settings name are `crate::preflight`'s).
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if !self.registry_url.username().is_empty() || self.registry_url.password().is_some() {
            // Credentials in the URL would be npg's identity on every request, writes included.
            return Err(anyhow!(
                "REGISTRY_URL: must not carry credentials (user:token@); \
                 put npg's own upstream credentials in UPSTREAM_AUTH_FILE"
            ));
        }
        let deadlines = [
            ("UPSTREAM_TIMEOUT", self.upstream_timeout),
            ("UPSTREAM_FETCH_DEADLINE", self.upstream_fetch_deadline),
            ("UPSTREAM_TARBALL_DEADLINE", self.upstream_tarball_deadline),
            ("UPSTREAM_UPLOAD_TIMEOUT", self.upstream_upload_timeout),
        ];
        if let Some((name, _)) = deadlines.iter().find(|(_, d)| d.is_zero()) {
            return Err(anyhow!("{name}: must be more than 0"));
        }
        // Sentinels set beside REDIS_URL are an error even with the cache switched off.
        if self.redis_enabled() || !self.redis_sentinels.is_empty() {
            match self.redis_target()? {
                Target::Url(url) => {
                    redis::Client::open(url).map_err(|e| anyhow!("REDIS_URL: not a valid Redis URL ({e})"))?;
                }
                Target::Sentinels(target) => {
                    crate::cluster::sentinel::Sentinels::new(&target).map_err(|e| anyhow!("REDIS_SENTINELS: {e}"))?;
                }
            }
        }
        check_storage_dir(&self.storage_dir)?;
        if !self.npg_domain.is_empty() && self.tls_cert_file.is_some() {
            return Err(anyhow!(
                "NPG_DOMAIN (ACME) and TLS_CERT_FILE (static) exclude each other"
            ));
        }
        for domain in &self.npg_domain {
            let ok = !domain.is_empty()
                && domain.len() <= 253
                && domain.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !ok {
                return Err(anyhow!("NPG_DOMAIN: `{domain}` is not a DNS name"));
            }
        }
        if self.enable_npm_changes_poller && self.registry_poll_url.is_none() {
            return Err(anyhow!(
                "REGISTRY_POLL_URL: required when ENABLE_NPM_CHANGES_POLLER is on"
            ));
        }
        Ok(())
    }
}

/// A password from its `_FILE` setting (trimmed) or else its plain setting.
fn secret(
    file_setting: &str,
    file: Option<&std::path::Path>,
    plain: Option<&String>,
) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|p| Some(p.trim().to_string()))
            .map_err(|e| anyhow!("{file_setting}: cannot read {} ({e})", path.display())),
        None => Ok(plain.cloned()),
    }
}

/// STORAGE_DIR checked without writing anything (`check-config` must leave the disk as it
/// found it): a directory npg may write in, or one it may create (`serve` does).
fn check_storage_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let shown = dir.display();
    let Some(existing) = dir.ancestors().find(|a| a.as_os_str().is_empty() || a.exists()) else {
        return Err(anyhow!("STORAGE_DIR: {shown} has no existing parent"));
    };
    let existing = if existing.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        existing
    };
    if !existing.is_dir() {
        return Err(anyhow!("STORAGE_DIR: {} is not a directory", existing.display()));
    }
    // access(2) answers for this process's user, root included, without creating a file.
    let writable = rustix::fs::access(existing, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK);
    if let Err(e) = writable {
        let what = if existing == dir {
            "is not writable"
        } else {
            "cannot be created"
        };
        return Err(anyhow!(
            "STORAGE_DIR: {shown} {what} ({}: {})",
            existing.display(),
            std::io::Error::from(e)
        ));
    }
    Ok(())
}

fn parse_http_url(s: &str) -> anyhow::Result<Url> {
    let url = Url::parse(s.trim()).map_err(|e| anyhow!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(anyhow!("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(anyhow!("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(anyhow!("must not have a query or fragment"));
    }
    Ok(url)
}

fn parse_bool(s: &str) -> anyhow::Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(anyhow!("expected true or false")),
    }
}

/// A duration where a bare number means milliseconds (the Node NPG's interval settings).
fn parse_millis(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return parse_duration(&format!("{s}ms"));
    }
    parse_duration(s)
}

fn parse_reason(s: &str) -> anyhow::Result<String> {
    let reason = s.trim().to_ascii_uppercase();
    match reason.as_str() {
        "MALWARE" | "TELEMETRY" | "PROTESTWARE" => Ok(reason),
        _ => Err(anyhow!("unknown reason `{s}` (use MALWARE, TELEMETRY, PROTESTWARE)")),
    }
}

/// Where tarballs are kept: one block, shared by `serve` and `npg import`.
#[derive(Args, Debug, Clone)]
pub(crate) struct StoreSettings {
    /// Where tarballs are kept: `disk` (STORAGE_DIR) or `s3` (a bucket shared by replicas on
    /// several hosts, with a local disk cache in front of it under STORAGE_DIR).
    #[arg(long, env = "TARBALL_STORE", value_enum, default_value_t = TarballStoreKind::Disk)]
    pub(crate) tarball_store: TarballStoreKind,

    /// The bucket of TARBALL_STORE=s3 (required then).
    #[arg(long, env = "S3_BUCKET")]
    pub(crate) s3_bucket: Option<String>,

    /// Prefix of every object key: a tarball is `<prefix><2 chars>/<name>/<file>`, the disk
    /// layout, so a bucket can be seeded from a disk store (e.g. `npg/`).
    #[arg(long, env = "S3_PREFIX", default_value = "")]
    pub(crate) s3_prefix: String,

    /// The S3 endpoint (MinIO, another S3-compatible server; http allowed); default: AWS's
    /// for S3_REGION.
    #[arg(long, env = "S3_ENDPOINT", value_parser = parse_http_url)]
    pub(crate) s3_endpoint: Option<Url>,

    /// The bucket's region.
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub(crate) s3_region: String,

    /// Path-style requests (`<endpoint>/<bucket>/<key>`, as MinIO wants) rather than
    /// virtual-hosted style (`<bucket>.<endpoint>/<key>`).
    #[arg(long, env = "S3_PATH_STYLE", default_value = "false", value_parser = parse_bool)]
    pub(crate) s3_path_style: bool,

    /// Deadline of each bucket call; a bucket that misses it is taken as down (misses go to
    /// upstream) until a probe sees it answer.
    #[arg(long, env = "S3_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) s3_timeout: Duration,

    /// The bucket's credentials (never printed), unless S3_CREDENTIALS_FILE is set.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub(crate) aws_access_key_id: Option<String>,

    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub(crate) aws_secret_access_key: Option<String>,

    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub(crate) aws_session_token: Option<String>,

    /// File of the bucket's credentials (a compose or systemd secret): `KEY=VALUE` lines with
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN; it wins
    /// over the environment.
    #[arg(long, env = "S3_CREDENTIALS_FILE")]
    pub(crate) s3_credentials_file: Option<PathBuf>,

    /// Size of the local disk cache in front of the bucket (TARBALL_STORE=s3), in MiB; the
    /// least recently used files go past it. 0: none (memory, then the bucket).
    #[arg(long, env = "TARBALL_LOCAL_CACHE_MB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub(crate) tarball_local_cache_mb: u64,
}

impl StoreSettings {
    /// The bucket of TARBALL_STORE=s3 (`None` for disk), with its credentials from
    /// S3_CREDENTIALS_FILE or the environment; reads the file.
    pub(crate) fn tarball_bucket(&self) -> anyhow::Result<Option<BucketSettings>> {
        if self.tarball_store == TarballStoreKind::Disk {
            return Ok(None);
        }
        let bucket = self.s3_bucket.clone().unwrap_or_default();
        let named = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        if !named {
            return Err(anyhow!(
                "S3_BUCKET: required with TARBALL_STORE=s3, 3 to 63 lowercase letters, digits, dots or dashes"
            ));
        }
        let prefix = &self.s3_prefix;
        let escapes = prefix.starts_with('/') || prefix.split('/').any(|p| p == "." || p == ".." || p.starts_with('.'));
        if escapes || prefix.contains("//") || prefix.chars().any(char::is_control) {
            return Err(anyhow!(
                "S3_PREFIX: `{prefix}` must not start with `/`, hold `//` or a part starting with a dot"
            ));
        }
        if self.s3_timeout.is_zero() {
            return Err(anyhow!("S3_TIMEOUT: must be more than 0"));
        }
        let credentials = match &self.s3_credentials_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow!("S3_CREDENTIALS_FILE: cannot read {} ({e})", path.display()))?;
                Credentials::parse(&text).map_err(|e| anyhow!("S3_CREDENTIALS_FILE: {} {e}", path.display()))?
            }
            None => match (&self.aws_access_key_id, &self.aws_secret_access_key) {
                (Some(key_id), Some(secret)) => Credentials {
                    key_id: key_id.clone(),
                    secret: secret.clone(),
                    token: self.aws_session_token.clone(),
                },
                _ => {
                    return Err(anyhow!(
                        "TARBALL_STORE=s3 needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or S3_CREDENTIALS_FILE"
                    ));
                }
            },
        };
        Ok(Some(BucketSettings {
            bucket,
            prefix: prefix.clone(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            credentials,
            timeout: self.s3_timeout,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TarballStoreKind {
    Disk,
    S3,
}

/// A duration: a number with an optional unit `ms`, `s` (default), `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AcmeChallenge {
    #[value(name = "http-01")]
    Http01,
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
}

pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow!("`{s}` is not a duration like 300, 90s, 5m, 72h or 7d"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(anyhow!("unknown unit `{other}` (use ms, s, m, h or d)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| anyhow!("`{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["npg", "--registry-url", "http://127.0.0.1:9/r"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("72h").unwrap(), Duration::from_secs(72 * 3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_millis("1800000").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_millis("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = parse(&["--http-port", "70000"]).unwrap_err().to_string();
        assert!(err.contains("--http-port"), "{err}");
        let err = parse(&["--proxy-url", "ftp://x/npm"]).unwrap_err().to_string();
        assert!(err.contains("--proxy-url") && err.contains("http"), "{err}");
        let err = parse(&["--metadata-ttl", "soon"]).unwrap_err().to_string();
        assert!(err.contains("--metadata-ttl"), "{err}");
        let err = Cli::try_parse_from(["npg"]).unwrap_err().to_string();
        assert!(err.contains("--registry-url"), "{err}");
    }

    #[test]
    fn guard_settings() {
        let cli = parse(&[
            "--malware-feed-reasons",
            "malware, telemetry",
            "--update-interval",
            "60000",
        ])
        .unwrap();
        assert_eq!(cli.settings.policy.malware_feed_reasons, ["MALWARE", "TELEMETRY"]);
        assert_eq!(cli.settings.update_interval, Duration::from_secs(60));
        assert_eq!(parse(&[]).unwrap().settings.policy.malware_feed_reasons.len(), 3);
        let err = parse(&["--malware-feed-reasons", "SPAM"]).unwrap_err().to_string();
        assert!(err.contains("--malware-feed-reasons"), "{err}");
    }

    #[test]
    fn one_osv_source_at_most() {
        let none = parse(&[]).unwrap().settings.policy;
        assert!(
            none.osv_feed_url.is_none() && none.osv_feed_dir.is_none(),
            "off by default"
        );
        let dir = parse(&["--osv-feed-dir", "/srv/osv"]).unwrap().settings.policy;
        assert_eq!(dir.osv_feed_dir.as_deref(), Some(std::path::Path::new("/srv/osv")));
        let err = parse(&[
            "--osv-feed-dir",
            "/srv/osv",
            "--osv-feed-url",
            "http://127.0.0.1:9/osv.json",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--osv-feed-url") && err.contains("--osv-feed-dir"),
            "{err}"
        );
        let err = parse(&["--osv-feed-url", "file:///srv/osv.json"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--osv-feed-url"), "{err}");
    }

    #[test]
    fn signature_settings() {
        let defaults = parse(&[]).unwrap().settings;
        assert_eq!(defaults.signature_policy, SignatureMode::Warn);
        assert_eq!(defaults.signature_keys_interval, Duration::from_secs(3600));
        let cli = parse(&[
            "--signature-policy",
            "hide-unsigned",
            "--signature-keys-interval",
            "10m",
        ])
        .unwrap();
        assert_eq!(cli.settings.signature_policy, SignatureMode::HideUnsigned);
        assert_eq!(cli.settings.signature_keys_interval, Duration::from_secs(600));
        let err = parse(&["--signature-policy", "strict"]).unwrap_err().to_string();
        assert!(
            err.contains("--signature-policy") && err.contains("hide-invalid"),
            "{err}"
        );
    }

    #[test]
    fn redis_settings_as_the_node_npg() {
        let cli = parse(&["--redis-host", "cache", "--redis-password", "p@ss", "--redis-db", "2"]).unwrap();
        assert!(!cli.settings.redis_enabled());
        assert_eq!(
            cli.settings.redis_connection_url().unwrap(),
            "redis://:p%40ss@cache:6379/2"
        );
        let cli = parse(&["--redis-url", "redis://10.0.0.1:6380/1"]).unwrap();
        assert!(cli.settings.redis_enabled());
        let cli = parse(&["--redis-url", "redis://x", "--enable-redis-cache", "false"]).unwrap();
        assert!(!cli.settings.redis_enabled());
    }

    #[test]
    fn redis_sentinels_name_the_master_and_exclude_redis_url() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("sentinel-pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let pw = pw.to_str().unwrap();
        let base = [
            "--redis-sentinels",
            "10.0.0.1:26379, s2:26380",
            "--redis-sentinel-master",
            "main",
        ];
        let mut args = base.to_vec();
        args.extend([
            "--redis-sentinel-password-file",
            pw,
            "--redis-password",
            "m",
            "--redis-db",
            "3",
        ]);
        let cli = parse(&args).unwrap();
        assert!(cli.settings.redis_enabled(), "sentinels turn Redis on");
        let Target::Sentinels(t) = cli.settings.redis_target().unwrap() else {
            panic!("not sentinel mode")
        };
        let shown: Vec<String> = t.sentinels.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.1:26379", "s2:26380"]);
        assert_eq!(t.master_name, "main");
        assert_eq!(t.sentinel_password.as_deref(), Some("s3cret"));
        assert_eq!((t.master_password.as_deref(), t.db), (Some("m"), 3));

        let mut with_url = base.to_vec();
        with_url.extend(["--redis-url", "redis://r:6379/0"]);
        let err = parse(&with_url)
            .unwrap()
            .settings
            .redis_target()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("REDIS_URL and REDIS_SENTINELS"), "{err}");
        let err = parse(&base[..2])
            .unwrap()
            .settings
            .redis_target()
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("REDIS_SENTINEL_MASTER: required"), "{err}");
        assert!(parse(&["--redis-sentinels", "no-port"]).is_err());
        let shown = format!(
            "{:?}",
            parse(&["--redis-sentinel-password", "hunter2"])
                .unwrap()
                .settings
                .redacted()
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        // Without sentinels: the fixed node, as before.
        let cli = parse(&["--redis-url", "redis://r:6379/1"]).unwrap();
        assert!(matches!(cli.settings.redis_target().unwrap(), Target::Url(u) if u == "redis://r:6379/1"));
    }

    #[test]
    fn redis_password_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cr:t\n").unwrap();
        let f = file.to_str().unwrap();
        let cli = parse(&["--redis-url", "redis://redis:6379/0", "--redis-password-file", f]).unwrap();
        assert_eq!(
            cli.settings.redis_connection_url().unwrap(),
            "redis://:s3cr%3At@redis:6379/0"
        );
        let cli = parse(&["--redis-url", "redis://:own@redis:6379/0", "--redis-password-file", f]).unwrap();
        assert_eq!(
            cli.settings.redis_connection_url().unwrap(),
            "redis://:own@redis:6379/0"
        );
        let cli = parse(&["--redis-host", "cache", "--redis-password-file", f]).unwrap();
        assert_eq!(
            cli.settings.redis_connection_url().unwrap(),
            "redis://:s3cr%3At@cache:6379/0"
        );
        let cli = parse(&["--redis-url", "redis://r", "--redis-password-file", "/nonexistent/pw"]).unwrap();
        let err = cli.settings.validate().unwrap_err().to_string();
        assert!(err.contains("REDIS_PASSWORD_FILE"), "{err}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let cli = parse(&[
            "--redis-url",
            "redis://:hunter2@cache:6379/0",
            "--redis-password",
            "hunter3",
        ])
        .unwrap();
        let shown = format!("{:?}", cli.settings.redacted());
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
    }

    #[test]
    fn tarball_store_settings() {
        assert!(
            parse(&[]).unwrap().settings.store.tarball_bucket().unwrap().is_none(),
            "disk by default"
        );
        let s3 = |args: &[&str]| {
            let mut all = vec!["--tarball-store", "s3"];
            all.extend_from_slice(args);
            parse(&all)
                .unwrap()
                .settings
                .store
                .tarball_bucket()
                .map_err(|e| e.to_string())
        };
        let keys = ["--aws-access-key-id", "AKID", "--aws-secret-access-key", "hunter2"];
        assert!(s3(&keys).unwrap_err().contains("S3_BUCKET"));
        let with = |more: &[&str]| s3(&[&keys[..], more].concat());
        assert!(with(&["--s3-bucket", "Bad_Bucket"]).unwrap_err().contains("S3_BUCKET"));
        for prefix in ["/npg/", "a/../b/", "a//b", ".tmp/"] {
            assert!(
                with(&["--s3-bucket", "npg", "--s3-prefix", prefix])
                    .unwrap_err()
                    .contains("S3_PREFIX"),
                "{prefix}"
            );
        }
        let ok = with(&["--s3-bucket", "npg-tarballs", "--s3-prefix", "npg/"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (ok.bucket.as_str(), ok.prefix.as_str(), ok.credentials.key_id.as_str()),
            ("npg-tarballs", "npg/", "AKID")
        );
        let none = s3(&["--s3-bucket", "npg"]).unwrap_err();
        assert!(none.contains("credentials"), "{none}");
        let missing = s3(&["--s3-bucket", "npg", "--s3-credentials-file", "/nonexistent/creds"]).unwrap_err();
        assert!(missing.contains("S3_CREDENTIALS_FILE"), "{missing}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "AWS_ACCESS_KEY_ID=fromfile\nAWS_SECRET_ACCESS_KEY=hunter4\n",
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let ok = with(&["--s3-bucket", "npg", "--s3-credentials-file", path])
            .unwrap()
            .unwrap();
        assert_eq!(ok.credentials.key_id, "fromfile", "the file wins over the environment");
        let cli = parse(&[
            "--tarball-store",
            "s3",
            "--s3-bucket",
            "npg",
            "--s3-endpoint",
            "http://k:hunter5@s3.test:9000",
        ])
        .unwrap();
        let shown = format!("{:?}", cli.settings.redacted());
        let cli2 = parse(&keys).unwrap();
        let shown2 = format!("{:?}", cli2.settings.redacted());
        assert!(
            !shown.contains("hunter5") && !shown2.contains("hunter2") && !shown2.contains("AKID"),
            "{shown} {shown2}"
        );
    }

    #[test]
    fn upstream_credentials_only_from_the_auth_file() {
        let cli = Cli::try_parse_from(["npg", "--registry-url", "https://npg:t0ken@registry.test/r/"]).unwrap();
        let err = cli.settings.validate().unwrap_err().to_string();
        assert!(err.contains("UPSTREAM_AUTH_FILE") && !err.contains("t0ken"), "{err}");
        let shown = format!("{:?}", cli.settings.redacted());
        assert!(!shown.contains("t0ken"), "{shown}");
        let cli = parse(&["--upstream-auth-file", "/nonexistent/auth"]).unwrap();
        assert!(
            cli.settings
                .upstream()
                .unwrap_err()
                .to_string()
                .contains("UPSTREAM_AUTH_FILE")
        );
    }

    #[test]
    fn upstream_limits() {
        let cli = parse(&["--upstream-tarball-hosts", "cdn.test, http://files.test:8080"]).unwrap();
        let hosts: Vec<String> = cli
            .settings
            .upstream_tarball_hosts
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(hosts, ["https://cdn.test", "http://files.test:8080"]);
        assert_eq!(cli.settings.upstream_fetch_deadline, Duration::from_secs(60));
        let err = parse(&["--upstream-tarball-hosts", "cdn.test/x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--upstream-tarball-hosts"), "{err}");
        let err = parse(&["--upstream-fetch-deadline", "0"])
            .unwrap()
            .settings
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("UPSTREAM_FETCH_DEADLINE"), "{err}");
    }

    #[test]
    fn urls_are_normalised() {
        let cli = parse(&["--proxy-url", "https://npg.example.com/npm/"]).unwrap();
        assert_eq!(cli.settings.public_base(), "https://npg.example.com/npm");
        assert_eq!(cli.settings.upstream_base(), "http://127.0.0.1:9/r/");
    }
}
