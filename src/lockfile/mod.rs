//! `npg lockfile check <lockfile>...`: judges every entry of npm, pnpm and yarn lockfiles
//! against the guard's policy, through a running npg (`--npg`) or offline from the policy
//! files, before a CI job installs anything; `--rewrite` points the resolved URLs at npg.
//!
//! Exit codes: 0 clean, 1 blocked entries (or resolved URLs that bypass npg), 2 unreadable
//! input or entries that could not be judged.

mod berry;
mod judge;
mod npm;
mod pnpm;
mod rewrite;
mod yarn1;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::config::PolicySources;
use anyhow::anyhow;
use judge::{Judge, Verdict};

#[derive(Parser, Debug)]
#[command(name = "npg lockfile", about = "Check lockfiles against npg's policy")]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Judge every entry of the lockfiles (package-lock.json, npm-shrinkwrap.json,
    /// pnpm-lock.yaml, yarn.lock) against the policy; exit 1 listing the blocked ones.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The lockfiles.
    #[arg(required = true)]
    lockfiles: Vec<PathBuf>,

    /// A running npg (e.g. `https://npg.example.com`), asked `GET /api/guard/<name>` per
    /// package: its whole policy, release age and malware feed included. Without it the
    /// check is offline: the blocklist, the last malware feed kept on disk and the OSV
    /// advisories, no release age.
    #[arg(long, env = "NPG_URL")]
    npg: Option<Url>,

    /// Token for npg's access control (the `read` permission is enough for `/api/guard`).
    #[arg(long, env = "NPM_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// npg's public npm URL; resolved URLs elsewhere bypass the guard. Default with `--npg`:
    /// `<npg>/npm`.
    #[arg(long, env = "PROXY_URL")]
    proxy_url: Option<Url>,

    /// Point every registry tarball URL at `<PROXY_URL>/<name>/-/<file>` (npm `resolved`,
    /// yarn 1 `resolved`, pnpm `tarball:`), writing the file in place, atomically.
    #[arg(long)]
    rewrite: bool,

    /// Packages asked of npg at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,

    /// Set when the policy has a minimum release age: offline, it cannot be judged (it needs
    /// publication times), and the check says so.
    #[arg(long, env = "MIN_RELEASE_AGE")]
    min_release_age: Option<String>,

    #[command(flatten)]
    policy: PolicySources,
}

/// One locked package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) version: String,
    /// Where the client downloads it, when the lockfile says (no `#fragment`).
    pub(crate) resolved: Option<String>,
    /// The tarball's SRI hash, when the lockfile records one (npm, pnpm, yarn 1; yarn berry's
    /// checksum is of its own archive, not of the tarball).
    pub(crate) integrity: Option<String>,
}

impl Entry {
    /// An entry when `version` is a version (not a git, file or URL spec).
    fn new(name: &str, version: &str, resolved: Option<&str>) -> Option<Entry> {
        nodejs_semver::Version::parse(version).ok()?;
        let resolved = resolved.map(|r| r.split('#').next().unwrap_or(r).to_string());
        Some(Entry {
            name: name.to_string(),
            version: version.to_string(),
            resolved,
            integrity: None,
        })
    }

    /// The same entry with the lockfile's integrity.
    fn with_integrity(self, integrity: Option<&str>) -> Entry {
        Entry {
            integrity: integrity.map(str::to_string),
            ..self
        }
    }
}

/// `name@range` (or `@scope/name@range`) split at the `@` that ends the name.
fn split_spec(spec: &str) -> Option<(&str, &str)> {
    let at = spec.get(1..)?.find('@')? + 1;
    Some((&spec[..at], &spec[at + 1..]))
}

/// The lockfile formats, told by name and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Npm,
    Pnpm,
    Yarn1,
    Berry,
}

impl Format {
    fn of(path: &Path, text: &str) -> anyhow::Result<Format> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".json") {
            Ok(Format::Npm)
        } else if name.starts_with("pnpm-lock") {
            Ok(Format::Pnpm)
        } else if name.starts_with("yarn") && text.lines().any(|l| l.starts_with("__metadata:")) {
            Ok(Format::Berry)
        } else if name.starts_with("yarn") {
            Ok(Format::Yarn1)
        } else {
            Err(anyhow!(
                "not a lockfile npg knows (package-lock.json, npm-shrinkwrap.json, pnpm-lock.yaml, yarn.lock)"
            ))
        }
    }

    fn parse(self, text: &str) -> anyhow::Result<Vec<Entry>> {
        let mut entries = match self {
            Format::Npm => npm::parse(text)?,
            Format::Pnpm => pnpm::parse(text)?,
            Format::Yarn1 => yarn1::parse(text),
            Format::Berry => berry::parse(text)?,
        };
        entries.sort();
        entries.dedup();
        Ok(entries)
    }
}

/// A lockfile read and parsed.
struct Lockfile {
    path: PathBuf,
    text: String,
    entries: Vec<Entry>,
}

fn read(path: &Path) -> anyhow::Result<Lockfile> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read it ({e})"))?;
    let entries = Format::of(path, &text)?.parse(&text)?;
    Ok(Lockfile {
        path: path.to_path_buf(),
        text,
        entries,
    })
}

/// Every registry entry of the lockfiles, deduplicated (for `npg warm` and `npg export`);
/// `None`, each reason told on stderr, when one cannot be read.
pub(crate) fn entries_of(paths: &[PathBuf]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut unreadable = false;
    for path in paths {
        match read(path) {
            Ok(file) => entries.extend(file.entries),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                unreadable = true;
            }
        }
    }
    entries.sort();
    entries.dedup();
    (!unreadable).then_some(entries)
}

/// Runs `npg lockfile ...` with the arguments after `npg`.
pub(crate) fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let Action::Check(args) = Cli::parse_from(args).command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    ExitCode::from(runtime.block_on(check(args)))
}

async fn check(args: CheckArgs) -> u8 {
    let mut files = Vec::new();
    let mut unreadable = false;
    for path in &args.lockfiles {
        match read(path) {
            Ok(file) => files.push(file),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                unreadable = true;
            }
        }
    }
    let judge = match Judge::new(&args) {
        Ok(judge) => judge,
        Err(e) => {
            eprintln!("npg lockfile check: {e}");
            return 2;
        }
    };
    let proxy = args.proxy_url.clone().or_else(|| judge.default_proxy());
    let proxy = proxy.map(|u| u.as_str().trim_end_matches('/').to_string());
    let mut outcome = Outcome::default();
    for file in &files {
        let verdicts = judge.judge(&file.entries, args.concurrency.into()).await;
        outcome.report(file, &verdicts);
        match (&proxy, args.rewrite) {
            (Some(proxy), true) => outcome.rewrite(file, proxy),
            (None, true) => {
                eprintln!("{}: --rewrite needs PROXY_URL (or --npg)", file.path.display());
                outcome.failed = true;
            }
            (Some(proxy), false) => outcome.bypasses(file, proxy),
            (None, false) => {}
        }
    }
    eprintln!(
        "npg lockfile check: {} entries in {} files, {} blocked, {} not judged{}",
        outcome.entries,
        files.len(),
        outcome.blocked,
        outcome.unknown,
        judge.caveat()
    );
    if unreadable || outcome.failed || outcome.unknown > 0 {
        2
    } else if outcome.blocked > 0 || outcome.bypassing > 0 {
        1
    } else {
        0
    }
}

/// What the check found, over every file.
#[derive(Default)]
struct Outcome {
    entries: usize,
    blocked: usize,
    unknown: usize,
    bypassing: usize,
    failed: bool,
}

impl Outcome {
    fn report(&mut self, file: &Lockfile, verdicts: &[Verdict]) {
        let path = file.path.display();
        self.entries += file.entries.len();
        for (entry, verdict) in file.entries.iter().zip(verdicts) {
            let Entry { name, version, .. } = entry;
            match verdict {
                Verdict::Allowed => {}
                Verdict::Blocked { rule, reason } => {
                    println!("{path}: {name}@{version}: {rule}, {reason}");
                    self.blocked += 1;
                }
                Verdict::Unknown(why) => {
                    eprintln!("{path}: {name}@{version}: not judged: {why}");
                    self.unknown += 1;
                }
            }
        }
    }

    /// Lists the registry tarball URLs that do not go through npg.
    fn bypasses(&mut self, file: &Lockfile, proxy: &str) {
        for (entry, url) in rewrite::outside(&file.entries, proxy) {
            println!(
                "{}: {}@{}: resolved outside npg ({url}); the guard never sees it (--rewrite points it at npg)",
                file.path.display(),
                entry.name,
                entry.version
            );
            self.bypassing += 1;
        }
    }

    fn rewrite(&mut self, file: &Lockfile, proxy: &str) {
        let (text, changed) = rewrite::rewrite(&file.text, &file.entries, proxy);
        if changed == 0 {
            eprintln!("{}: every registry URL already points at npg", file.path.display());
            return;
        }
        match crate::files::write_atomic(&file.path, text.as_bytes()) {
            Ok(()) => eprintln!("{}: {changed} resolved URLs now point at npg", file.path.display()),
            Err(e) => {
                eprintln!("{}: not rewritten: {e}", file.path.display());
                self.failed = true;
            }
        }
    }
}
