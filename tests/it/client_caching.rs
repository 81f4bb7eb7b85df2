//! Policy changes take effect at once for clients: packuments say `no-cache` (with a strong
//! ETag, so revalidating costs a 304), and npm never resolves a version blocked a moment ago
//! from its own cache. With `CLIENT_MAX_AGE=300` it does, for five minutes: shown too.

use crate::support;
use crate::support::clients::{Client, Project};
use crate::support::guarded::{start_with, wait_hidden, write};

/// Installs `npg-fixture-a@^1 || ^2` with npm (2.0.0), blocks 2.0.0, and installs again
/// afresh (no lockfile, no node_modules) with the same npm cache; returns what it installed.
fn second_install_after_a_block(env: &[(&str, &str)]) -> Option<String> {
    let (_up, npg, dir) = start_with("", env);
    let project = Project::new(Client::Npm, &npg.proxy_url, &[("npg-fixture-a", "^1.0.0 || ^2.0.0")]);
    project.install().assert_success();
    assert_eq!(project.installed_version("npg-fixture-a").as_deref(), Some("2.0.0"));
    let rule = "packages:\n  - name: npg-fixture-a\n    versions: ['2.0.0']\n    reason: compromised release\n";
    write(&dir.path().join("blacklist.yml"), rule);
    npg.signal("HUP");
    wait_hidden(&npg, "npg-fixture-a", "2.0.0");
    std::fs::remove_dir_all(project.dir().join("node_modules")).unwrap();
    project.remove_lockfile();
    project.install().assert_success();
    project.installed_version("npg-fixture-a")
}

#[test]
fn a_new_block_applies_to_the_next_npm_install() {
    assert_eq!(second_install_after_a_block(&[]).as_deref(), Some("1.1.0"));
}

#[test]
fn with_a_client_max_age_npm_keeps_the_blocked_version_until_it_expires() {
    // npm takes the packument from its cache and the tarball too (by integrity): npg is not
    // even asked. This is why the default is no-cache.
    let reused = second_install_after_a_block(&[("CLIENT_MAX_AGE", "300")]);
    assert_eq!(reused.as_deref(), Some("2.0.0"));
}

#[tokio::test]
async fn revalidation_is_a_304() {
    let (_up, npg, _dir) = start_with("", &[]);
    let url = format!("{}/npg-fixture-a", npg.proxy_url);
    let first = support::http::get(&url, &[]).await;
    assert_eq!(first.header("cache-control"), "public, no-cache");
    let etag = first.header("etag").to_string();
    let again = support::http::get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert_eq!(again.header("cache-control"), "public, no-cache");
}
