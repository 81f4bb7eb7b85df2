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
