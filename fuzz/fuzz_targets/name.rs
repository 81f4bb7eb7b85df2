//! Package names: `PackageName::parse` never panics, keeps the name as given within npm's
//! limits, and every name it accepts is reachable as npg's packument and tarball routes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use npg::npm::name::PackageName;
use npg::npm::path::version_from_file;
use npg_fuzz::assert_routed;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = PackageName::parse(text) else {
        return;
    };
    assert_eq!(name.as_str(), text);
    assert!(text.len() <= 214);
    let unscoped = name.unscoped();
    assert!(!unscoped.is_empty() && !unscoped.contains('/'), "{text}");
    assert!(!name.shard().is_empty());
    let file = format!("{unscoped}-1.0.0.tgz");
    assert_eq!(version_from_file(&name, &file), Some("1.0.0"));
    assert_routed(&name, Some(&file));
});
