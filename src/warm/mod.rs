//! `npg warm <lockfile>...`: fills npg's caches with every package a lockfile names, as a
//! client would ask for them (npm's abbreviated packument, then the tarball, checked against
//! the lockfile's integrity), through the guard, a few packages at a time; safe to re-run.
//! What a team runs before a release or a CI fleet's cold start. Either a running npg
//! (`--npg`), or `--direct`: npg started in this process from the environment's settings, so
//! its STORAGE_DIR and Redis are filled before any replica runs (`local`).
//!
//! Exit codes: 0 all cached, 1 blocked entries (listed), 2 unreadable input or entries that
//! could not be fetched (listed).

pub(crate) mod client;
mod local;
mod progress;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use futures_util::StreamExt;
use url::Url;

use crate::lockfile::Entry;
use crate::npm::integrity::Expected;
use client::{Form, Npg, Packument, Refusal};
use progress::Progress;

#[derive(Parser, Debug)]
#[command(name = "npg warm", about = "Fill npg's caches with what lockfiles name")]
#[command(group = clap::ArgGroup::new("target").required(true).args(["npg", "direct"]))]
pub(crate) struct Cli {
    /// The lockfiles (package-lock.json, npm-shrinkwrap.json, pnpm-lock.yaml, yarn.lock).
    #[arg(required = true)]
    lockfiles: Vec<PathBuf>,

    /// The running npg (e.g. `https://npg.example.com`); packages are asked of `<npg>/npm`.
    #[arg(long, env = "NPG_URL")]
    npg: Option<Url>,

    /// No running npg: fill STORAGE_DIR and Redis (REDIS_URL...) directly, through npg's own
    /// code started in this process with the settings `npg serve` reads from the environment.
    #[arg(long)]
    direct: bool,

    /// Token for npg's access control (the `read` permission is enough).
    #[arg(long, env = "NPM_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Packages asked of npg at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
}

/// What became of one entry.
pub(crate) enum Warmed {
    Fetched,
    Cached,
    Refused(Refusal),
}

/// Runs `npg warm ...` with the arguments after `npg`.
pub(crate) fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        match cli.npg.clone() {
            Some(npg) => warm(&cli, &npg).await,
            None => local::with_local_npg(async |npg| warm(&cli, &npg).await)
                .await
                .unwrap_or_else(|e| {
                    eprintln!("npg warm --direct: {e:#}");
                    2
                }),
        }
    });
    ExitCode::from(code)
}

async fn warm(cli: &Cli, npg: &Url) -> u8 {
    let Some(entries) = crate::lockfile::entries_of(&cli.lockfiles) else {
        return 2;
    };
    let npg = match Npg::new(npg, cli.token.clone(), "warm") {
        Ok(npg) => npg,
        Err(e) => {
            eprintln!("npg warm: HTTP client: {e}");
            return 2;
        }
    };
    let progress = Progress::new(entries.len() as u64);
    let results: Vec<(&Entry, Warmed)> = futures_util::stream::iter(by_name(&entries))
        .map(|(name, versions)| {
            let (npg, progress) = (&npg, &progress);
            async move {
                let warmed = warm_package(npg, name, &versions).await;
                for (entry, outcome) in &warmed {
                    progress.done(entry, outcome);
                }
                warmed
            }
        })
        .buffer_unordered(cli.concurrency.into())
        .flat_map(futures_util::stream::iter)
        .collect()
        .await;
    progress.finish();
    summarize(&results)
}

/// The entries grouped by package: one packument for all its versions.
pub(crate) fn by_name(entries: &[Entry]) -> BTreeMap<&str, Vec<&Entry>> {
    let mut names: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for entry in entries {
        names.entry(&entry.name).or_default().push(entry);
    }
    names
}

/// The packument once, then each version's tarball.
async fn warm_package<'a>(npg: &Npg, name: &str, versions: &[&'a Entry]) -> Vec<(&'a Entry, Warmed)> {
    let packument = npg.packument(name, Form::Abbreviated).await;
    let mut warmed = Vec::with_capacity(versions.len());
    for entry in versions {
        let outcome = match &packument {
            Err(refusal) => Warmed::Refused(refusal.clone()),
            Ok(packument) => match tarball(npg, packument, entry, None).await {
                Ok(tarball) if tarball.hit && packument.hit => Warmed::Cached,
                Ok(_) => Warmed::Fetched,
                Err(refusal) => Warmed::Refused(refusal),
            },
        };
        warmed.push((*entry, outcome));
    }
    warmed
}

/// The tarball of `entry`, as `packument` names it, checked against the lockfile's
/// integrity (else the packument's).
pub(crate) async fn tarball(
    npg: &Npg,
    packument: &Packument,
    entry: &Entry,
    sink: Option<&mut tokio::fs::File>,
) -> Result<client::Tarball, Refusal> {
    let Some(dist) = packument.dist(&entry.version) else {
        return Err(npg.why_missing(&entry.name, &entry.version).await);
    };
    let field = |k: &str| dist.get(k).and_then(serde_json::Value::as_str);
    let expected = Expected::from_dist(entry.integrity.as_deref(), None)
        .or_else(|| Expected::from_dist(field("integrity"), field("shasum")))
        .ok_or_else(|| Refusal::Failed("no integrity to check the tarball against".into()))?;
    npg.tarball(&entry.name, dist, &expected, sink).await
}

/// Lists what was blocked (stdout) and what failed (stderr), and the counts; the exit code.
fn summarize(results: &[(&Entry, Warmed)]) -> u8 {
    let (mut fetched, mut cached, mut blocked, mut failed) = (0, 0, 0, 0);
    for (entry, warmed) in results {
        let Entry { name, version, .. } = entry;
        match warmed {
            Warmed::Fetched => fetched += 1,
            Warmed::Cached => cached += 1,
            Warmed::Refused(Refusal::Blocked { rule, reason }) => {
                println!("{name}@{version}: blocked: {rule}, {reason}");
                blocked += 1;
            }
            Warmed::Refused(Refusal::Failed(why)) => {
                eprintln!("{name}@{version}: failed: {why}");
                failed += 1;
            }
        }
    }
    eprintln!(
        "npg warm: {} entries: {fetched} fetched, {cached} already cached, {blocked} blocked, {failed} failed",
        results.len()
    );
    match (failed, blocked) {
        (0, 0) => 0,
        (0, _) => 1,
        _ => 2,
    }
}
