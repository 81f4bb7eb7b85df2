//! Air-gapped sites: `npg export` writes what lockfiles name, fetched through a running npg,
//! to a signed `.tar.zst` bundle (`manifest`: the files and their hashes; `signing`: the
//! operator's Ed25519 key); `npg import` checks all of it before anything enters the
//! STORAGE_DIR of an npg that may have no upstream at all.
//!
//! Exit codes: 0 done; 1 blocked entries (export); 2 anything else, a refused bundle included.

mod export;
mod import;
mod manifest;
mod signing;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser};
use url::Url;

#[derive(Parser, Debug)]
#[command(
    name = "npg export",
    about = "Write what lockfiles name to a signed bundle for an air-gapped npg"
)]
struct ExportCli {
    #[command(flatten)]
    args: ExportArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// The lockfiles (package-lock.json, npm-shrinkwrap.json, pnpm-lock.yaml, yarn.lock).
    #[arg(required_unless_present = "gen_key")]
    lockfiles: Vec<PathBuf>,

    /// The running npg the packages are fetched through (its guard applies).
    #[arg(long, env = "NPG_URL")]
    npg: Option<Url>,

    /// Token for npg's access control (the `read` permission is enough).
    #[arg(long, env = "NPM_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The bundle to write (`.tar.zst`).
    #[arg(short, long)]
    output: Option<PathBuf>,

    /// The Ed25519 private key that signs the manifest (PKCS#8, base64 or PEM).
    #[arg(long)]
    key: Option<PathBuf>,

    /// Write a new key pair instead: the private key to this path (owner-only), the public
    /// key to `<path>.pub` (for `npg import --key`).
    #[arg(long, exclusive = true)]
    gen_key: Option<PathBuf>,

    /// Packages asked of npg at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
}

#[derive(Parser, Debug)]
#[command(
    name = "npg import",
    about = "Check a signed bundle whole, then put it into STORAGE_DIR"
)]
struct ImportCli {
    /// The bundle (`npg export`'s `.tar.zst`).
    bundle: PathBuf,

    /// The Ed25519 public key of the exporting operator (`<key>.pub`, or openssl's PEM).
    #[arg(long)]
    key: PathBuf,

    /// npg's storage directory (the one `npg` serves with).
    #[arg(long, env = "STORAGE_DIR", default_value = "./var/storage")]
    storage_dir: PathBuf,

    /// Where npg keeps tarballs (TARBALL_STORE=s3: the tarballs go to the bucket).
    #[command(flatten)]
    store: crate::config::StoreSettings,
}

/// Runs `npg export ...` with the arguments after `npg`.
pub(crate) fn export_main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = ExportCli::parse_from(args).args;
    if let Some(path) = &args.gen_key {
        return match signing::SigningKey::generate(path) {
            Ok(()) => {
                eprintln!(
                    "npg export: key written to {} (public key: <that path>.pub)",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("npg export: {e}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    ExitCode::from(runtime.block_on(export::export(args)))
}

/// Runs `npg import ...` with the arguments after `npg`.
pub(crate) fn import_main(args: impl Iterator<Item = String>) -> ExitCode {
    let cli = ImportCli::parse_from(args);
    let bucket = cli.store.tarball_bucket().map_err(|e| e.to_string());
    let imported = signing::VerifyingKey::load(&cli.key)
        .map_err(|e| format!("--key: {e}"))
        .and_then(|key| Ok((key, bucket?)))
        .and_then(|(key, bucket)| {
            import::import(&cli.bundle, &key, &cli.storage_dir, bucket.as_ref()).map_err(|e| match e {
                import::Refused::Store(_) => format!("{}: {e}", cli.bundle.display()),
                e => format!("{}: refused, nothing imported: {e}", cli.bundle.display()),
            })
        });
    match imported {
        Ok(done) => {
            eprintln!(
                "npg import: {} packuments and {} tarballs into {}",
                done.packuments,
                done.tarballs,
                cli.storage_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("npg import: {why}");
            ExitCode::from(2)
        }
    }
}
