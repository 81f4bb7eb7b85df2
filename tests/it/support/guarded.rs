//! A real npg behind a blocklist file, in front of a fresh fake registry.

use std::path::Path;

use super::npg::NpgProcess;
use super::upstream::FakeRegistry;

/// Writes then renames, so the reloader never reads a half-written file.
pub fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// npg with `blocklist` as its BLACKLIST_PATH file (`blacklist.yml` in the returned directory),
/// scheduled updates off, plus `env`.
pub fn start_with(blocklist: &str, env: &[(&str, &str)]) -> (FakeRegistry, NpgProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blacklist.yml");
    write(&path, blocklist);
    let up = FakeRegistry::start();
    let mut all = vec![
        ("BLACKLIST_PATH", path.to_str().unwrap()),
        ("ENABLE_SCHEDULED_UPDATES", "false"),
    ];
    all.extend_from_slice(env);
    let npg = NpgProcess::start(&up.url(), &all);
    (up, npg, dir)
}

/// Polls `/api/guard/<name>` until the policy hides `version` (after a reload), at most 10 s.
pub fn wait_hidden(npg: &NpgProcess, name: &str, version: &str) {
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        let reply = rt.block_on(super::http::get(&format!("{}/api/guard/{name}", npg.base), &[]));
        if reply.json()["hidden"].get(version).is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the policy never hid {name}@{version}");
}
