//! Request paths: `classify` and `check_traversal` never panic and agree, a path that names a
//! package never passes through unguarded, and every route reads back from npm's spelling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use npg::npm::path::{PathError, Route, check_traversal, classify, valid_file, version_from_file};
use npg_fuzz::assert_routed;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let raw = format!("/{text}");
    let route = classify(&raw);
    if check_traversal(&raw).is_err() {
        assert_eq!(route, Err(PathError::Traversal), "{raw}");
    }
    let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
    match route {
        Ok(Route::Passthrough) => {
            // Only the root and the registry's own API, `/-/...` (`-` in any encoding, once),
            // are about no package; `/-`, `/-foo`, `/-/-/...` name packages. Fuzzing found
            // those passed through unguarded.
            let dash = |s: &str| s == "-" || s.eq_ignore_ascii_case("%2d");
            let api = segments.len() > 1 && dash(segments[0]) && !dash(segments[1]);
            assert!(segments.is_empty() || api, "{raw} passes through");
        }
        Ok(Route::Packument(name)) => assert_routed(&name, None),
        Ok(Route::Tarball(name, file)) => {
            assert!(valid_file(&file), "{raw}: {file}");
            if let Some(v) = version_from_file(&name, &file) {
                assert_eq!(format!("{}-{v}.tgz", name.unscoped()), file);
            }
            assert_routed(&name, Some(&file));
        }
        Ok(Route::Version(name, spec)) => {
            assert!(!spec.is_empty() && spec.len() <= 256, "{raw}");
            assert!(!spec.chars().any(char::is_control), "{raw}");
            assert_routed(&name, None);
        }
        Ok(Route::DistTags(name)) => assert_routed(&name, None),
        Ok(Route::Ping) | Err(_) => {}
    }
});
