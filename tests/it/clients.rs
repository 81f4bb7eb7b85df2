//! The real package managers install a fixture project through npg.
//!
//! For each of npm, pnpm, yarn 1 and yarn 4: a cold install (empty npg cache, empty client
//! cache) resolves and downloads everything through npg; the lockfile must hold the upstream's
//! integrity and point at npg, never at the upstream. Then node_modules and the client's caches
//! are deleted and the lockfile is installed again (`npm ci`, `pnpm install --frozen-lockfile`,
//! `yarn install --frozen-lockfile`, `yarn install --immutable`): everything must come from npg's
//! cache, the upstream seeing no packument or tarball request at all.
//!
//! The clients are pinned by scripts/install-test-deps (npm is the one on PATH).

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::support::clients::{Client, FIXTURE_RESOLUTION, Project};
use crate::support::npg::NpgProcess;
use crate::support::upstream::FakeRegistry;

struct Setup {
    upstream: FakeRegistry,
    npg: NpgProcess,
}

fn start() -> Setup {
    let upstream = FakeRegistry::start();
    let npg = NpgProcess::start(&upstream.url(), &[]);
    Setup { upstream, npg }
}

/// Upstream packument and tarball request counts of every fixture package.
fn upstream_counts(upstream: &FakeRegistry) -> BTreeMap<String, (usize, usize)> {
    FIXTURE_RESOLUTION
        .iter()
        .map(|(name, _)| {
            (
                name.to_string(),
                (upstream.packument_requests(name), upstream.tarball_requests_any(name)),
            )
        })
        .collect()
}

/// Integrity strings a lockfile may hold for this version: the upstream's `dist.integrity`, or
/// for a shasum-only version the SRI form of its sha1 (what clients derive) or a sha512 of the
/// tarball (should npg compute one).
fn accepted_integrity(upstream: &FakeRegistry, name: &str, version: &str) -> Vec<String> {
    match upstream.integrity(name, version) {
        Some(integrity) => vec![integrity],
        None => {
            let sha1 = hex::decode(upstream.shasum(name, version)).unwrap();
            vec![
                format!("sha1-{}", base64::engine::general_purpose::STANDARD.encode(sha1)),
                upstream.sha512_integrity(name, version),
            ]
        }
    }
}

/// node_modules holds the fixture's packages at the expected versions, and they load.
fn check_installed(project: &Project) {
    for (name, version) in FIXTURE_RESOLUTION {
        let found = if *name == "npg-fixture-b" {
            // Transitive: hoisted by npm and yarn, behind npg-fixture-a's symlink for pnpm.
            project.installed_dependency_version("npg-fixture-a", name)
        } else {
            project.installed_version(name)
        };
        assert_eq!(
            found.as_deref(),
            Some(*version),
            "{} installed {name}",
            project.client.name()
        );
    }
    let out = project.node_eval(
        "const a = require('npg-fixture-a'), s = require('@npg-test/scoped'), l = require('npg-legacy');\
         console.log([a.version, s.version, l.version].join(' '))",
    );
    out.assert_success();
    assert_eq!(out.stdout.trim(), "2.0.0 1.2.0 1.0.0", "{out}");
}

/// The lockfile records exactly the fixture's packages, with the upstream's integrity and URLs
/// of npg (for pnpm and yarn 4: no URL at all, which they write only for URLs that are not
/// `<registry>/<name>/-/<file>`). `yarn4_checksums` are yarn 4's checksums of an install straight
/// from the upstream.
fn check_lockfile(project: &Project, setup: &Setup, yarn4_checksums: &BTreeMap<String, String>) {
    let client = project.client.name();
    let text = project.lockfile_text();
    let port = setup.upstream.addr().port();
    for needle in [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1%3A{port}"),
        format!("127.0.0.1%3a{port}"),
    ] {
        assert!(
            !text.contains(&needle),
            "{client}: the lockfile names the upstream ({needle}) instead of npg:\n{text}"
        );
    }

    let locked = project.locked_packages();
    let mut found: Vec<(String, String)> = locked.iter().map(|p| (p.name.clone(), p.version.clone())).collect();
    found.sort();
    let mut expected: Vec<(String, String)> = FIXTURE_RESOLUTION
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    expected.sort();
    assert_eq!(found, expected, "{client}: packages in the lockfile:\n{text}");

    let proxy = &setup.npg.proxy_url;
    for pkg in &locked {
        let (name, version) = (pkg.name.as_str(), pkg.version.as_str());
        let file = setup.upstream.tarball_file(name, version);
        let npg_tarball = format!("{proxy}/{name}/-/{file}");
        let what = format!("{client}: {name}@{version} in the lockfile");
        match project.client {
            Client::Npm => {
                assert_eq!(pkg.resolved.as_deref(), Some(npg_tarball.as_str()), "{what}: resolved");
            }
            Client::Yarn1 => {
                let with_sha1 = format!("{npg_tarball}#{}", setup.upstream.shasum(name, version));
                assert_eq!(pkg.resolved.as_deref(), Some(with_sha1.as_str()), "{what}: resolved");
            }
            Client::Pnpm => {
                assert_eq!(
                    pkg.resolved, None,
                    "{what}: pnpm wrote a tarball URL, so npg's dist.tarball is not the conventional \
                     {npg_tarball}"
                );
            }
            Client::Yarn4 => {
                let plain = format!("{name}@npm:{version}");
                assert_eq!(
                    pkg.resolved.as_deref(),
                    Some(plain.as_str()),
                    "{what}: yarn 4 adds __archiveUrl when dist.tarball is not the conventional {npg_tarball}"
                );
                assert_eq!(
                    pkg.checksum.as_ref(),
                    yarn4_checksums.get(name),
                    "{what}: yarn 4 checksum differs from an install straight from the upstream \
                     (npg served other bytes)"
                );
            }
        }
        if project.client != Client::Yarn4 {
            let accepted = accepted_integrity(&setup.upstream, name, version);
            let integrity = pkg.integrity.clone().unwrap_or_default();
            assert!(
                accepted.contains(&integrity),
                "{what}: integrity {integrity:?}, expected one of {accepted:?}"
            );
        }
    }
}

/// yarn 4 locks its own checksum (of the zip it makes from the tarball), not the npm integrity:
/// the reference is a yarn 4 install straight from the upstream.
fn yarn4_reference_checksums(upstream: &FakeRegistry) -> BTreeMap<String, String> {
    let direct = Project::fixture(Client::Yarn4, &upstream.url());
    direct.install().assert_success();
    let checksums: BTreeMap<String, String> = direct
        .locked_packages()
        .into_iter()
        .filter_map(|p| Some((p.name, p.checksum?)))
        .collect();
    assert_eq!(checksums.len(), FIXTURE_RESOLUTION.len(), "{}", direct.lockfile_text());
    upstream.reset_counts();
    checksums
}

fn install_cold_then_warm(client: Client) {
    let setup = start();
    let yarn4_checksums = if client == Client::Yarn4 {
        yarn4_reference_checksums(&setup.upstream)
    } else {
        BTreeMap::new()
    };
    let project = Project::fixture(client, &setup.npg.proxy_url);

    // Cold: npg's cache and the client's are empty.
    let cold = project.install();
    cold.assert_success();
    check_installed(&project);
    check_lockfile(&project, &setup, &yarn4_checksums);
    let lockfile = project.lockfile_text();
    let cold_counts = upstream_counts(&setup.upstream);
    for (name, (packuments, tarballs)) in &cold_counts {
        assert!(
            *packuments >= 1,
            "{}: npg never asked the upstream for {name}'s packument",
            client.name()
        );
        assert!(
            *tarballs >= 1,
            "{}: npg never asked the upstream for {name}'s tarball",
            client.name()
        );
    }

    // Warm: the client starts from nothing but the lockfile, npg answers from its cache.
    project.forget_installation();
    let requests_before = setup.upstream.all_requests().len();
    let warm = project.install_frozen();
    warm.assert_success();
    check_installed(&project);
    check_lockfile(&project, &setup, &yarn4_checksums);
    assert_eq!(
        project.lockfile_text(),
        lockfile,
        "{}: the frozen install changed the lockfile",
        client.name()
    );
    let warm_requests: Vec<String> = setup.upstream.all_requests()[requests_before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    assert_eq!(
        upstream_counts(&setup.upstream),
        cold_counts,
        "{}: the warm install reached the upstream (npg should have served it from its cache); upstream saw:\n{}\n{warm}",
        client.name(),
        warm_requests.join("\n")
    );
}

#[test]
fn npm_installs_through_npg_cold_then_warm() {
    install_cold_then_warm(Client::Npm);
}

#[test]
fn pnpm_installs_through_npg_cold_then_warm() {
    install_cold_then_warm(Client::Pnpm);
}

#[test]
fn yarn1_installs_through_npg_cold_then_warm() {
    install_cold_then_warm(Client::Yarn1);
}

#[test]
fn yarn4_installs_through_npg_cold_then_warm() {
    install_cold_then_warm(Client::Yarn4);
}

/// npg-corrupt's served tarball does not match its dist.integrity: the install must fail, and
/// npg must not keep the bad bytes (a second install fails too, fetching from upstream again).
#[test]
fn npm_install_of_a_corrupt_tarball_fails() {
    let setup = start();
    let project = Project::new(Client::Npm, &setup.npg.proxy_url, &[]);
    let file = setup.upstream.tarball_file("npg-corrupt", "1.0.0");

    let out = project.add("npg-corrupt@1.0.0");
    out.assert_failure();
    assert_eq!(project.installed_version("npg-corrupt"), None, "{out}");
    assert!(
        setup.upstream.tarball_requests("npg-corrupt", &file) >= 1,
        "npg never fetched the tarball\n{out}"
    );

    let stored: Vec<_> = walk(&setup.npg.storage)
        .into_iter()
        .filter(|p| p.ends_with(&file))
        .collect();
    assert!(
        stored.is_empty(),
        "npg stored a tarball that does not match its integrity: {stored:?}"
    );

    project.forget_installation();
    let again = project.add("npg-corrupt@1.0.0");
    again.assert_failure();
    assert_eq!(project.installed_version("npg-corrupt"), None, "{again}");

    // npg itself refuses the bytes (an error status or an aborted body), rather than leaving the
    // client's own integrity check to catch them.
    let url = format!("{}/npg-corrupt/-/{file}", setup.npg.proxy_url);
    let served = fetch(&url);
    assert!(
        !matches!(&served, Ok((200, body)) if !body.is_empty()),
        "npg served the corrupt tarball as a complete 200 response ({:?} bytes)",
        served.map(|(_, b)| b.len())
    );
}

/// GET `url`: Ok((status, whole body)), or Err when the response is cut off or fails.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    // reqwest is built with `rustls-no-provider`: it wants a process-wide provider, even for http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        let resp = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| format!("{e:?}"))?;
        Ok((status, body.to_vec()))
    })
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
