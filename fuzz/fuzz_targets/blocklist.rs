//! The blocklist file: parsing never panics nor runs away, lookups on what it accepts never
//! panic, and a version rule blocks at least what node-semver's range holds, prereleases
//! included. Input: `<yaml> NUL <name or range> NUL <version>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodejs_semver::{Range, Version};
use npg::guard::blocklist::Blocklist;
use npg_fuzz::fields;

fuzz_target!(|data: &[u8]| {
    let Some([yaml, probe, version]) = fields::<3>(data) else {
        return;
    };
    if let Ok(list) = Blocklist::parse(yaml) {
        let _ = list.whole_package(probe);
        let _ = list.version(probe, version);
    }
    over_blocks(probe, version);
});

/// `versions: [<range>]` blocks every version the range holds with includePrerelease.
fn over_blocks(range: &str, version: &str) {
    let (Ok(parsed), Ok(v)) = (Range::parse(range), Version::parse(version)) else {
        return;
    };
    // A JSON string is a YAML double-quoted scalar.
    let spec = serde_json::to_string(range).expect("a string serialises");
    let Ok(list) = Blocklist::parse(&format!("packages:\n  - name: p\n    versions: [{spec}]\n")) else {
        return;
    };
    if parsed.satisfies_with_prerelease(&v, true) {
        assert!(list.version("p", version).is_some(), "{range} holds {version}");
    }
}
