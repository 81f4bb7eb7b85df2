//! Packument rendering (`rendered::render`: parse, judge, hide, rewrite tarballs, full form
//! with manifest ranges, abbreviated form) on whatever upstream sends: both forms are JSON,
//! each recorded range is exactly its version's manifest in the full form, and no hidden
//! version shows, neither in `versions` nor behind a dist-tag. Input: one byte choosing the
//! package and policy, then the document.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use npg::guard::Policy;
use npg::guard::age::AgeGate;
use npg::guard::blocklist::Blocklist;
use npg::npm::name::PackageName;
use npg::proxy::rendered::{DocMeta, Package, Raw, render};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

const BASE: &str = "http://npg.test/npm";
/// 2025-01-01T00:00:00Z: versions the documents date after 2024-12-31 are quarantined.
const NOW_MS: u64 = 1_735_689_600_000;
const RULES: &str = r#"
packages:
  - name: a
    versions: ["2.x", "0.0.1", ">=9.0.0"]
  - name: "@s/a"
    versions: ["*"]
"#;

/// With and without the release-age gate.
static POLICIES: LazyLock<[Policy; 2]> = LazyLock::new(|| {
    let blocklist = Arc::new(Blocklist::parse(RULES).expect("rules parse"));
    let gate = AgeGate::new(Duration::from_secs(86_400), &[]).expect("gate");
    [None, Some(Arc::new(gate))].map(|age| Policy {
        version: 1,
        blocklist: blocklist.clone(),
        malware: Arc::default(),
        age,
        signatures: Arc::default(),
    })
});

const META: DocMeta = DocMeta {
    etag: None,
    fetched_ms: 1,
    checked_ms: 1,
};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, doc)) = data.split_first() else {
        return;
    };
    let name = PackageName::parse(if choice & 1 == 0 { "a" } else { "@s/a" }).expect("valid name");
    let policy = &POLICIES[usize::from(choice >> 1 & 1)];
    let raw = Raw {
        plain: Some(bytes::Bytes::copy_from_slice(doc)),
        gz: None,
    };
    if let Ok(pkg) = render(&name, raw, &META, policy, BASE, NOW_MS) {
        check(&pkg);
    }
});

/// What a client can read of a served form. Numbers out of f64's range stay valid JSON
/// (passed through raw), so values are only parsed where npg wrote them itself.
#[derive(Deserialize)]
struct Served<'a> {
    #[serde(borrow, default)]
    versions: Option<HashMap<String, &'a RawValue>>,
    #[serde(rename = "dist-tags", default)]
    dist_tags: Option<Map<String, Value>>,
}

fn check(pkg: &Package) {
    let full: Served = serde_json::from_slice(&pkg.full.body).expect("the full form is JSON");
    let abbreviated: Served = serde_json::from_slice(&pkg.abbreviated.body).expect("the abbreviated form is JSON");
    let versions = full.versions.clone().unwrap_or_default();
    assert_eq!(pkg.manifests.len(), versions.len());
    let start_of = |raw: &RawValue| raw.get().as_ptr() as usize - pkg.full.body.as_ptr() as usize;
    for (version, range) in pkg.manifests.iter() {
        let manifest = versions.get(version).expect("a recorded manifest is served");
        assert_eq!(range.start, start_of(manifest), "{version}");
        assert_eq!(range.len(), manifest.get().len(), "{version}");
    }
    for form in [&full, &abbreviated] {
        for hidden in pkg.hidden.keys() {
            assert!(
                form.versions.as_ref().is_none_or(|v| !v.contains_key(hidden)),
                "{hidden} served"
            );
        }
        let tags = form.dist_tags.iter().flatten();
        for target in tags.filter_map(|(_, t)| t.as_str()) {
            assert!(!pkg.hidden.contains_key(target), "a dist-tag points at hidden {target}");
        }
    }
    assert!(pkg.index.versions.iter().all(|v| !pkg.hidden.contains_key(v)));
}
