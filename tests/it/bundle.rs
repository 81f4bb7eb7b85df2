//! `npg export` + `npg import`: a bundle of what a real npm lockfile names, exported from one
//! npg and imported into a fresh STORAGE_DIR, serves `npm ci` from an npg whose upstream is a
//! dead port, under that npg's own guard; a bundle with one altered byte (in a tarball, in the
//! manifest) or signed by another key is refused whole and nothing enters the store; an export
//! with a blocked entry writes no bundle.

use std::path::{Path, PathBuf};

use crate::support;
use crate::support::clients::Client;
use crate::support::guarded::write;
use crate::support::npg::NpgProcess;
use crate::support::upstream::FakeRegistry;
use crate::warm::{fixture_lockfile, install_from, npg, text};

/// A registry URL nothing answers.
const DEAD_UPSTREAM: &str = "http://127.0.0.1:9";

/// `npg export --gen-key dir/<name>`: the private key and its `.pub`.
pub(crate) fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let out = npg(&["export", "--gen-key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    (key.clone(), dir.join(format!("{name}.pub")))
}

/// The fixture project's npm lockfile (pointing at `exporter`) and its bundle signed by `key`.
pub(crate) fn exported(dir: &Path, key: &Path) -> (FakeRegistry, NpgProcess, PathBuf, PathBuf) {
    let up = FakeRegistry::start();
    let exporter = NpgProcess::start(&up.url(), &[]);
    let lockfile = fixture_lockfile(Client::Npm, &up, &exporter, dir);
    let bundle = dir.join("bundle.tar.zst");
    let out = npg(&[
        "export",
        lockfile.to_str().unwrap(),
        "--npg",
        &exporter.base,
        "-o",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    (up, exporter, lockfile, bundle)
}

fn import(bundle: &Path, public: &Path, storage: &Path) -> std::process::Output {
    npg(&[
        "import",
        bundle.to_str().unwrap(),
        "--key",
        public.to_str().unwrap(),
        "--storage-dir",
        storage.to_str().unwrap(),
    ])
}

#[tokio::test]
async fn exported_bundle_serves_npm_ci_without_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "site.key");
    let (up, exporter, lockfile, bundle) = exported(dir.path(), &key);
    let storage = tempfile::tempdir().unwrap();
    let out = import(&bundle, &public, storage.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("4 packuments and 4 tarballs"), "{}", text(&out));
    // Re-importing the same bundle is harmless.
    let out = import(&bundle, &public, storage.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    drop(up);

    // No upstream at all: npm ci from the imported packuments and tarballs.
    let airgapped = NpgProcess::start_with_storage(DEAD_UPSTREAM, &[], storage.path().to_path_buf(), None);
    let text_there = std::fs::read_to_string(&lockfile)
        .unwrap()
        .replace(&exporter.proxy_url, &airgapped.proxy_url);
    let there = dir.path().join("there");
    std::fs::create_dir_all(&there).unwrap();
    std::fs::write(there.join("package-lock.json"), text_there).unwrap();
    install_from(Client::Npm, &airgapped.proxy_url, &there.join("package-lock.json"));
    let packument = support::http::get(&format!("{}/npm/npg-fixture-a", airgapped.base), &[]).await;
    assert_eq!(packument.status, 200);
    assert_eq!(packument.header("x-cache"), "STALE");
    let metrics = support::http::get(&format!("{}/metrics", airgapped.base), &[]).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("npg_stale_served_total{why=\"imported\"}"),
        "{metrics}"
    );
    drop(airgapped);

    // The air-gapped site's own blocklist applies to what it imported.
    let rules = dir.path().join("blacklist.yml");
    write(
        &rules,
        "packages:\n  - name: npg-fixture-b\n    versions: ['1.0.1']\n    reason: compromised release\n",
    );
    let guarded = NpgProcess::start_with_storage(
        DEAD_UPSTREAM,
        &[("BLACKLIST_PATH", rules.to_str().unwrap())],
        storage.path().to_path_buf(),
        None,
    );
    // The imported packument is rendered under that policy: the version is hidden, told why.
    let manifest = support::http::get(&format!("{}/npm/npg-fixture-b/1.0.1", guarded.base), &[]).await;
    assert_eq!(manifest.status, 403);
    assert_eq!(manifest.json()["reason"], "compromised release");
    let url = format!("{}/npm/npg-fixture-b/-/npg-fixture-b-1.0.1.tgz", guarded.base);
    assert_eq!(support::http::get(&url, &[]).await.status, 403);
    let allowed = format!("{}/npm/npg-fixture-a/-/npg-fixture-a-2.0.0.tgz", guarded.base);
    assert_eq!(support::http::get(&allowed, &[]).await.status, 200);
}

/// The bundle with the byte at `offset` of the archive member `member` changed.
fn altered(bundle: &Path, member: &str, offset: u64, out: &Path) {
    let mut tar_bytes = zstd::decode_all(std::fs::File::open(bundle).unwrap()).unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let position = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some(member))
        .map(|e| e.raw_file_position())
        .unwrap_or_else(|| panic!("{member} is not in the bundle"));
    tar_bytes[(position + offset) as usize] ^= 0x01;
    std::fs::write(out, zstd::encode_all(&tar_bytes[..], 3).unwrap()).unwrap();
}

#[test]
fn altered_or_foreign_bundles_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "site.key");
    let (_other, other_public) = key_pair(dir.path(), "other.key");
    let (_up, _exporter, _lockfile, bundle) = exported(dir.path(), &key);
    let refused = |bundle: &Path, public: &Path, why: &str| {
        let storage = tempfile::tempdir().unwrap();
        let out = import(bundle, public, storage.path());
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("refused, nothing imported"), "{}", text(&out));
        assert!(text(&out).contains(why), "{}", text(&out));
        let left: Vec<_> = std::fs::read_dir(storage.path()).unwrap().collect();
        assert!(left.is_empty(), "the storage dir holds {left:?}");
    };

    let tarball = dir.path().join("tarball-altered.tar.zst");
    altered(&bundle, "tarballs/npg-fixture-a/npg-fixture-a-2.0.0.tgz", 10, &tarball);
    refused(
        &tarball,
        &public,
        "tarballs/npg-fixture-a/npg-fixture-a-2.0.0.tgz: size or SHA-512 differs",
    );

    let manifest = dir.path().join("manifest-altered.tar.zst");
    altered(&bundle, "manifest.json", 40, &manifest);
    refused(&manifest, &public, "signature does not verify");

    refused(&bundle, &other_public, "signature does not verify");

    // The untouched bundle goes in.
    let storage = tempfile::tempdir().unwrap();
    let out = import(&bundle, &public, storage.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        storage
            .path()
            .join("np/npg-fixture-a/npg-fixture-a-2.0.0.tgz")
            .is_file()
    );
    assert!(storage.path().join(".imported/npg-fixture-a.json.gz").is_file());
}

#[test]
fn blocked_entries_are_not_exported() {
    let rules = "packages:\n  - name: npg-fixture-b\n    versions: ['1.0.1']\n    reason: compromised release\n";
    let (up, exporter, dir) = crate::support::guarded::start_with(rules, &[]);
    let (key, _public) = key_pair(dir.path(), "site.key");
    // A lockfile written before the block, straight from the upstream.
    let project = crate::support::clients::Project::new(Client::Npm, &up.url(), &[("npg-fixture-a", "^2.0.0")]);
    project.install().assert_success();
    let bundle = dir.path().join("bundle.tar.zst");
    let out = npg(&[
        "export",
        project.lockfile_path().to_str().unwrap(),
        "--npg",
        &exporter.base,
        "-o",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("npg-fixture-b@1.0.1: blocked: version, compromised release"),
        "{}",
        text(&out)
    );
    assert!(!bundle.exists(), "no bundle is written");
}
