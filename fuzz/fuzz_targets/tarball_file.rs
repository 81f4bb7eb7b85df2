//! Tarball file name → version (what the guard checks a tarball request against): the
//! version read back is exactly the one npm's file name spells, and every valid version's
//! file is a tarball route of its package. Input: `<name> NUL <version or file name>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodejs_semver::Version;
use npg::npm::name::PackageName;
use npg::npm::path::{valid_file, version_from_file};
use npg_fuzz::{assert_routed, fields};

fuzz_target!(|data: &[u8]| {
    let Some([name, rest]) = fields::<2>(data) else {
        return;
    };
    let Ok(name) = PackageName::parse(name) else {
        return;
    };
    let unscoped = name.unscoped();
    if let Some(v) = version_from_file(&name, rest) {
        assert_eq!(format!("{unscoped}-{v}.tgz"), rest);
    }
    // Versions as npm publishes them: canonical, identifiers of `[0-9A-Za-z-]` (the semver
    // crate also takes other characters, that npm refuses).
    let npm_alphabet = rest.chars().all(|c| c.is_ascii_alphanumeric() || "-.+".contains(c));
    if npm_alphabet && Version::parse(rest).is_ok_and(|v| v.to_string() == rest) {
        let file = format!("{unscoped}-{rest}.tgz");
        assert_eq!(version_from_file(&name, &file), Some(rest));
        if file.len() <= 255 {
            assert!(valid_file(&file), "{name}@{rest}: {file} is refused");
            assert_routed(&name, Some(&file));
        }
    }
});
