//! Blocklist ranges match prereleases (issue hole 12): node-semver leaves them out of a range
//! unless asked, so `versions: ["*"]` let a hijacked package's `latest: 9.9.9-0` through.

use crate::support::guarded::start_with;
use crate::support::http::{ABBREVIATED, Reply, get};
use crate::support::npg::NpgProcess;

const RULES: &str = r#"
packages:
  - name: hijacked-star
    versions: ["*"]
    reason: account taken over
  - name: hijacked-from
    versions: [">=1.0.0"]
    reason: account taken over
"#;

async fn tarball(npg: &NpgProcess, name: &str, version: &str) -> Reply {
    get(&format!("{}/{name}/-/{name}-{version}.tgz", npg.proxy_url), &[]).await
}

/// The prerelease is neither in the packument (either form, nor as `latest`) nor downloadable.
async fn assert_hidden(npg: &NpgProcess, name: &str, version: &str) {
    let url = format!("{}/{name}", npg.proxy_url);
    for accept in [[("accept", "application/json")], [("accept", ABBREVIATED)]] {
        let r = get(&url, &accept).await;
        if r.status == 200 {
            let doc = r.json();
            assert!(doc["versions"].get(version).is_none(), "{name}@{version} listed: {doc}");
            assert_ne!(doc["dist-tags"]["latest"], version, "{doc}");
        }
    }
    let r = tarball(npg, name, version).await;
    assert_eq!(r.status.as_u16(), 403, "{name}@{version} tarball");
    assert_eq!(r.json()["type"], "version");
}

#[tokio::test]
async fn star_blocks_a_prerelease_latest() {
    let (up, npg, _dir) = start_with(RULES, &[]);
    up.add_package("hijacked-star", &["1.0.0", "9.9.9-0"]);
    assert_hidden(&npg, "hijacked-star", "9.9.9-0").await;
    assert_eq!(up.tarball_requests_any("hijacked-star"), 0);
}

#[tokio::test]
async fn lower_bound_blocks_later_prereleases() {
    let (up, npg, _dir) = start_with(RULES, &[]);
    up.add_package("hijacked-from", &["0.9.0", "1.0.0", "2.0.0-beta"]);
    assert_hidden(&npg, "hijacked-from", "2.0.0-beta").await;
    let doc = get(&format!("{}/hijacked-from", npg.proxy_url), &[]).await.json();
    assert_eq!(doc["dist-tags"]["latest"], "0.9.0");
    assert_eq!(tarball(&npg, "hijacked-from", "0.9.0").await.status, 200);
    assert_eq!(up.tarball_requests("hijacked-from", "hijacked-from-2.0.0-beta.tgz"), 0);
}
