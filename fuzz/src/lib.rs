//! What the fuzz targets share: splitting one input into fields, and the routes a package's
//! requests must take.

use npg::npm::name::PackageName;
use npg::npm::path::{Route, classify};

/// The input as text cut at NUL bytes into `N` fields (the last keeps any further NULs);
/// `None` for non-UTF-8 input or too few fields.
pub fn fields<const N: usize>(data: &[u8]) -> Option<[&str; N]> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.splitn(N, '\0');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next()?;
    }
    Some(out)
}

/// Asserts that npm's spelling of the packument and tarball paths of `name` reach npg's
/// routes for them (so the guard sees them), not a pass-through.
pub fn assert_routed(name: &PackageName, file: Option<&str>) {
    let segment = name.url_segment();
    assert_eq!(
        classify(&format!("/{segment}")),
        Ok(Route::Packument(name.clone())),
        "{name}"
    );
    if let Some(file) = file {
        assert_eq!(
            classify(&format!("/{segment}/-/{file}")),
            Ok(Route::Tarball(name.clone(), file.to_string())),
            "{name} {file}"
        );
    }
}
