//! `npg export`: what lockfiles name, fetched through a running npg (its full packuments as
//! it serves them, and the tarballs, checked against the lockfile's integrity), written to a
//! `.tar.zst` with the signed manifest first. Nothing is written unless every entry came.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use sha2::{Digest, Sha512};

use super::ExportArgs;
use super::manifest::{FileRecord, Kind, MANIFEST, Manifest, SIGNATURE, packument_path, sri_sha512, tarball_path};
use super::signing::SigningKey;
use crate::lockfile::Entry;
use crate::warm::client::{Form, Npg, Refusal};

/// A file fetched into the staging directory, and its record.
struct Staged {
    local: PathBuf,
    record: FileRecord,
}

/// Exit code: 0 written, 1 blocked entries, 2 anything else.
pub(crate) async fn export(args: ExportArgs) -> u8 {
    let (Some(npg_url), Some(output), Some(key_path)) = (&args.npg, &args.output, &args.key) else {
        eprintln!("npg export: --npg, -o and --key are required (or --gen-key <path>)");
        return 2;
    };
    let key = match SigningKey::load(key_path) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("npg export: --key: {e}");
            return 2;
        }
    };
    let Some(entries) = crate::lockfile::entries_of(&args.lockfiles) else {
        return 2;
    };
    let (npg, staging) = match (Npg::new(npg_url, args.token.clone(), "export"), tempfile::tempdir()) {
        (Ok(npg), Ok(staging)) => (npg, staging),
        (Err(e), _) => return fail(format!("HTTP client: {e}")),
        (_, Err(e)) => return fail(format!("temporary directory: {e}")),
    };
    let fetched: Vec<Result<Vec<Staged>, (String, Refusal)>> =
        futures_util::stream::iter(crate::warm::by_name(&entries))
            .enumerate()
            .map(|(i, (name, versions))| {
                let (npg, dir) = (&npg, staging.path().join(i.to_string()));
                async move { fetch_package(npg, name, &versions, &dir).await }
            })
            .buffer_unordered(args.concurrency.into())
            .collect()
            .await;
    let (mut staged, mut blocked, mut failed) = (Vec::new(), 0, 0);
    for result in fetched {
        match result {
            Ok(files) => staged.extend(files),
            Err((what, Refusal::Blocked { rule, reason })) => {
                println!("{what}: blocked: {rule}, {reason}");
                blocked += 1;
            }
            Err((what, Refusal::Failed(why))) => {
                eprintln!("{what}: failed: {why}");
                failed += 1;
            }
        }
    }
    if blocked + failed > 0 {
        eprintln!("npg export: {blocked} blocked, {failed} failed: no bundle written");
        return if failed > 0 { 2 } else { 1 };
    }
    let tarballs = staged.iter().filter(|s| s.record.kind == Kind::Tarball).count();
    match write_bundle(output, &key, staged) {
        Ok(()) => {
            eprintln!(
                "npg export: {} entries, {tarballs} tarballs written to {}",
                entries.len(),
                output.display()
            );
            0
        }
        Err(e) => fail(format!("{}: {e:#}", output.display())),
    }
}

fn fail(why: String) -> u8 {
    eprintln!("npg export: {why}");
    2
}

/// One package's full packument and the tarballs of its locked versions, into `dir`.
async fn fetch_package(
    npg: &Npg,
    name: &str,
    versions: &[&Entry],
    dir: &Path,
) -> Result<Vec<Staged>, (String, Refusal)> {
    let io = |e: std::io::Error| (name.to_string(), Refusal::Failed(format!("staging: {e}")));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let packument = npg
        .packument(name, Form::Full)
        .await
        .map_err(|r| (name.to_string(), r))?;
    let local = dir.join("packument.json");
    tokio::fs::write(&local, &packument.body).await.map_err(io)?;
    let mut staged = vec![Staged {
        local,
        record: FileRecord {
            path: packument_path(name),
            kind: Kind::Packument,
            package: name.to_string(),
            version: None,
            size: packument.body.len() as u64,
            integrity: sri_sha512(Sha512::new_with_prefix(&packument.body)),
            lockfile_integrity: None,
        },
    }];
    for (i, entry) in versions.iter().enumerate() {
        let what = format!("{name}@{}", entry.version);
        let local = dir.join(format!("{i}.tgz"));
        let mut file = tokio::fs::File::create(&local).await.map_err(io)?;
        let tarball = crate::warm::tarball(npg, &packument, entry, Some(&mut file))
            .await
            .map_err(|r| (what.clone(), r))?;
        file.sync_all().await.map_err(io)?;
        staged.push(Staged {
            local,
            record: FileRecord {
                path: tarball_path(name, &tarball.file),
                kind: Kind::Tarball,
                package: name.to_string(),
                version: Some(entry.version.clone()),
                size: tarball.size,
                integrity: tarball.sha512,
                lockfile_integrity: entry.integrity.clone(),
            },
        });
    }
    Ok(staged)
}

/// The archive: manifest and signature first (an import checks them before reading on),
/// then the files in the manifest's order; written beside `output`, renamed over it.
fn write_bundle(output: &Path, key: &SigningKey, staged: Vec<Staged>) -> anyhow::Result<()> {
    use anyhow::Context;
    let records = staged.iter().map(|s| s.record.clone()).collect();
    let manifest = Manifest::new(crate::clock::now_ms(), records);
    let manifest_bytes = manifest.to_bytes();
    let signature = key.sign(&manifest_bytes);
    let dir = output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".npg-bundle-")
        .tempfile_in(dir)
        .context("temporary file beside the output")?;
    let encoder = zstd::Encoder::new(tmp.as_file(), 3)?;
    let mut tar = tar::Builder::new(encoder);
    let mut append = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(manifest.created_ms / 1000);
        tar.append_data(&mut header, path, bytes)
    };
    append(MANIFEST, &manifest_bytes)?;
    append(SIGNATURE, &signature)?;
    let mut by_path: std::collections::HashMap<&str, &Path> = staged
        .iter()
        .map(|s| (s.record.path.as_str(), s.local.as_path()))
        .collect();
    for record in &manifest.files {
        let local = by_path
            .remove(record.path.as_str())
            .context("a staged file went missing")?;
        let mut file = std::fs::File::open(local)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(record.size);
        header.set_mode(0o644);
        header.set_mtime(manifest.created_ms / 1000);
        tar.append_data(&mut header, &record.path, &mut file)?;
    }
    tar.into_inner()?.finish()?;
    tmp.as_file().sync_all()?;
    tmp.persist(output).map_err(|e| e.error)?;
    Ok(())
}
