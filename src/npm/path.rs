//! Classifies a request path under the npm API prefix into the read routes npg answers itself;
//! everything else is passed through. Paths that try to leave their directory, in any
//! encoding, are refused here, before any route sees them. Empty segments (`//`, a trailing
//! `/`) are dropped before classifying, and a read path that names a package but is none of
//! npg's routes is refused: upstreams that merge slashes or ignore a trailing slash would
//! otherwise serve it unguarded.

use percent_encoding::percent_decode_str;

use super::name::{NameError, PackageName};

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/<name>`, `/@scope/<name>`, `/@scope%2f<name>`
    Packument(PackageName),
    /// `/<name>/<version-or-tag-or-range>`
    Version(PackageName, String),
    /// `/<name>/-/<file>.tgz`
    Tarball(PackageName, String),
    /// `/-/package/<name>/dist-tags`
    DistTags(PackageName),
    /// `/-/ping`
    Ping,
    /// Anything else that names no package: search, audit, whoami, ...
    Passthrough,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path tries to leave its directory")]
    Traversal,
    #[error("path is not valid UTF-8 after decoding")]
    NotUtf8,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("tarball file name is not valid")]
    BadFile,
    #[error("version is not valid")]
    BadVersion,
    #[error("this path names a package but is not a route of the read API")]
    NotARoute,
}

fn decode(s: &str) -> Result<String, PathError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| PathError::NotUtf8)
}

/// Refuses `.`/`..` segments, backslashes and NULs, raw, once-decoded and twice-decoded.
pub fn check_traversal(raw: &str) -> Result<(), PathError> {
    let escapes = |form: &str| form.contains(['\\', '\0']) || form.split('/').any(|seg| seg == "." || seg == "..");
    if escapes(raw) {
        return Err(PathError::Traversal);
    }
    // Without a `%` decoding changes nothing: no copies on the common path.
    if !raw.contains('%') {
        return Ok(());
    }
    let once = percent_decode_str(raw).decode_utf8_lossy().into_owned();
    let twice = percent_decode_str(&once).decode_utf8_lossy().into_owned();
    if escapes(&once) || escapes(&twice) {
        return Err(PathError::Traversal);
    }
    Ok(())
}

/// Classifies `raw` (the percent-encoded path after the API prefix, starting with `/`) for a
/// GET or HEAD request.
pub fn classify(raw: &str) -> Result<Route, PathError> {
    check_traversal(raw)?;
    let segs: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
    if api_namespace(&segs)? {
        return match segs.get(1..).unwrap_or_default() {
            ["ping"] => Ok(Route::Ping),
            ["package", name @ .., "dist-tags"] if !name.is_empty() && name.len() <= 2 => {
                let name = name.iter().map(|s| decode(s)).collect::<Result<Vec<_>, _>>()?.join("/");
                Ok(Route::DistTags(PackageName::parse(&name)?))
            }
            _ => Ok(Route::Passthrough),
        };
    }
    let first = decode(segs[0])?;
    let (name, rest) = if first.starts_with('@') && !first.contains('/') {
        match segs.get(1) {
            Some(second) => (format!("{first}/{}", decode(second)?), &segs[2..]),
            None => return Err(NameError::BadScope.into()),
        }
    } else {
        (first, &segs[1..])
    };
    let name = PackageName::parse(&name)?;
    match rest {
        [] => Ok(Route::Packument(name)),
        ["-", file] => {
            let file = decode(file)?;
            if !valid_file(&file) {
                return Err(PathError::BadFile);
            }
            Ok(Route::Tarball(name, file))
        }
        [spec] => {
            let spec = decode(spec)?;
            if spec.is_empty() || spec.len() > 256 || spec.chars().any(char::is_control) {
                return Err(PathError::BadVersion);
            }
            Ok(Route::Version(name, spec))
        }
        _ => Err(PathError::NotARoute),
    }
}

/// Whether `segs` is under the registry's own API (`/-/...`), or the root. Only a first
/// segment that is exactly `-` (in any encoding) is: `-foo` and the package `-` itself (`/-`,
/// `/-/-/--1.0.0.tgz`) are package names and go through the guard.
fn api_namespace(segs: &[&str]) -> Result<bool, PathError> {
    let Some(first) = segs.first() else {
        return Ok(true);
    };
    let dash = |s: &str| decode(s).map(|d| d == "-");
    Ok(dash(first)? && segs.len() >= 2 && !dash(segs[1])?)
}

/// A tarball file name npg accepts: `.tgz`, no leading dot, at most 255 bytes (the longest
/// file name a disk takes), a small safe alphabet: what a package name may hold (legacy names
/// keep `*`, `!`, `'`...) and a version's `+`.
pub fn valid_file(file: &str) -> bool {
    file.len() <= 255
        && file.ends_with(".tgz")
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+~!*()'".contains(c))
}

/// The version a tarball file name encodes: `core-7.23.0.tgz` of `@babel/core` is `7.23.0`.
pub fn version_from_file<'a>(name: &PackageName, file: &'a str) -> Option<&'a str> {
    file.strip_prefix(name.unscoped())?
        .strip_prefix('-')?
        .strip_suffix(".tgz")
}

/// The package a write names (`PUT /<name>` publish, `DELETE /<name>/-rev/<rev>` unpublish,
/// `PUT /-/package/<name>/dist-tags/<tag>`), so npg can forget its copy once upstream took
/// the write.
pub(crate) fn written_package(raw: &str) -> Option<PackageName> {
    let path = raw.trim_start_matches('/');
    let path = path.strip_prefix("-/package/").unwrap_or(path);
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    let mut segments = decoded.split('/');
    // `-` is the API's namespace, never a package.
    let first = segments.next().filter(|s| *s != "-")?;
    let name = match first.starts_with('@') {
        true => format!("{first}/{}", segments.next()?),
        false => first.to_string(),
    };
    PackageName::parse(&name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> PackageName {
        PackageName::parse(n).unwrap()
    }

    /// The check without its shortcut: every form decoded, whatever it holds.
    fn traversal_everywhere(raw: &str) -> bool {
        let once = percent_decode_str(raw).decode_utf8_lossy().into_owned();
        let twice = percent_decode_str(&once).decode_utf8_lossy().into_owned();
        [raw, &once, &twice]
            .iter()
            .any(|f| f.contains(['\\', '\0']) || f.split('/').any(|seg| seg == "." || seg == ".."))
    }

    #[test]
    fn the_shortcut_without_percent_decides_as_decoding_would() {
        // Every path of up to 5 characters over an alphabet that spells traversals in any
        // encoding (`%2e`, `%252e`, `%5c`, `%00`...).
        let alphabet = ['/', '.', '%', '2', '5', 'e', 'c', '0', 'a', '\\'];
        let mut paths = vec![String::new()];
        for _ in 0..5 {
            // the paths one character longer
            let next: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths = next;
            for path in &paths {
                assert_eq!(check_traversal(path).is_err(), traversal_everywhere(path), "{path:?}");
            }
        }
        for path in ["/%2e%2e/x", "/%252e%252e", "/a%5cb", "/a%00", "/%2E", "/.%2e"] {
            assert!(check_traversal(path).is_err(), "{path}");
        }
    }

    #[test]
    fn packuments_in_every_spelling() {
        assert_eq!(classify("/left-pad"), Ok(Route::Packument(name("left-pad"))));
        assert_eq!(classify("/left-pad/"), Ok(Route::Packument(name("left-pad"))));
        for p in ["/@babel/core", "/@babel%2fcore", "/@babel%2Fcore"] {
            assert_eq!(classify(p), Ok(Route::Packument(name("@babel/core"))), "{p}");
        }
    }

    #[test]
    fn versions_and_tarballs() {
        assert_eq!(classify("/a/1.0.0"), Ok(Route::Version(name("a"), "1.0.0".into())));
        assert_eq!(classify("/a/%5E1.0.0"), Ok(Route::Version(name("a"), "^1.0.0".into())));
        assert_eq!(
            classify("/@s%2fn/latest"),
            Ok(Route::Version(name("@s/n"), "latest".into()))
        );
        for p in ["/@s/n/-/n-1.0.0.tgz", "/@s%2fn/-/n-1.0.0.tgz", "/@s%2Fn/-/n-1.0.0.tgz"] {
            assert_eq!(
                classify(p),
                Ok(Route::Tarball(name("@s/n"), "n-1.0.0.tgz".into())),
                "{p}"
            );
        }
        assert_eq!(classify("/a/-/a-1.0.0.zip"), Err(PathError::BadFile));
        assert_eq!(classify("/a/-/.a.tgz"), Err(PathError::BadFile));
        assert_eq!(classify("/a/-/a%2fb.tgz"), Err(PathError::BadFile));
    }

    #[test]
    fn other_paths_pass_through() {
        assert_eq!(classify("/-/ping"), Ok(Route::Ping));
        for p in [
            "/-/v1/search",
            "/-/whoami",
            "/-/npm/v1/security/advisories/bulk",
            "/",
            "//-/v1/search",
        ] {
            assert_eq!(classify(p), Ok(Route::Passthrough), "{p}");
        }
    }

    #[test]
    fn empty_segments_are_dropped_before_classifying() {
        let tarball = Ok(Route::Tarball(name("a"), "a-1.0.0.tgz".into()));
        for p in [
            "/a/-/a-1.0.0.tgz/",
            "/a//-/a-1.0.0.tgz",
            "/a/-//a-1.0.0.tgz",
            "//a/-/a-1.0.0.tgz/",
        ] {
            assert_eq!(classify(p), tarball, "{p}");
        }
        assert_eq!(classify("/a/1.0.0/"), Ok(Route::Version(name("a"), "1.0.0".into())));
        assert_eq!(
            classify("/@s//n//1.0.0"),
            Ok(Route::Version(name("@s/n"), "1.0.0".into()))
        );
        assert_eq!(classify("/a//"), Ok(Route::Packument(name("a"))));
        assert_eq!(classify("/-/package/a/dist-tags/"), Ok(Route::DistTags(name("a"))));
    }

    #[test]
    fn package_paths_that_are_no_route_are_refused() {
        for p in [
            "/a/b/c/d",
            "/a/-rev/1",
            "/a/-/a-1.0.0.tgz/x",
            "/@s/n/-/x/n-1.0.0.tgz",
            "/a/1.0.0/x",
        ] {
            assert_eq!(classify(p), Err(PathError::NotARoute), "{p}");
        }
    }

    #[test]
    fn names_starting_with_a_dash_are_packages() {
        // Found by fuzzing: these were passed through unguarded.
        assert_eq!(classify("/-foo"), Ok(Route::Packument(name("-foo"))));
        assert_eq!(classify("/-"), Ok(Route::Packument(name("-"))));
        assert_eq!(
            classify("/-foo/-/-foo-1.0.0.tgz"),
            Ok(Route::Tarball(name("-foo"), "-foo-1.0.0.tgz".into()))
        );
        assert_eq!(
            classify("/-/-/--1.0.0.tgz"),
            Ok(Route::Tarball(name("-"), "--1.0.0.tgz".into()))
        );
        assert_eq!(classify("/%2D/-/--1.0.0.tgz"), classify("/-/-/--1.0.0.tgz"));
        assert_eq!(
            classify("/-foo/1.0.0"),
            Ok(Route::Version(name("-foo"), "1.0.0".into()))
        );
        assert_eq!(classify("/%2D/package/a/dist-tags"), Ok(Route::DistTags(name("a"))));
    }

    #[test]
    fn dist_tags() {
        assert_eq!(classify("/-/package/a/dist-tags"), Ok(Route::DistTags(name("a"))));
        assert_eq!(
            classify("/-/package/@s%2fn/dist-tags"),
            Ok(Route::DistTags(name("@s/n")))
        );
        assert_eq!(classify("/-/package/@s/n/dist-tags"), Ok(Route::DistTags(name("@s/n"))));
        assert_eq!(classify("/-/package/a/dist-tags/latest"), Ok(Route::Passthrough));
        assert!(matches!(classify("/-/package/_a/dist-tags"), Err(PathError::Name(_))));
    }

    #[test]
    fn traversal_in_any_encoding() {
        for p in [
            "/../etc/passwd",
            "/%2e%2e/etc",
            "/%2E%2E%2Fetc",
            "/%252e%252e/x",
            "/a/-/..%2f..%2fx.tgz",
            "/a/..",
            "/a%5c..%5cb",
            "/a%00",
            "/-/../x",
        ] {
            assert_eq!(classify(p), Err(PathError::Traversal), "{p}");
        }
    }

    #[test]
    fn bad_names() {
        assert!(matches!(classify("/_x"), Err(PathError::Name(_))));
        assert!(matches!(classify("/@scope"), Err(PathError::Name(_))));
        assert!(matches!(classify("/A%20B"), Err(PathError::Name(_))));
        assert!(matches!(classify("/%ff"), Err(PathError::NotUtf8)));
    }

    #[test]
    fn file_versions() {
        let n = name("@babel/core");
        assert_eq!(version_from_file(&n, "core-7.23.0.tgz"), Some("7.23.0"));
        assert_eq!(version_from_file(&n, "core-1.0.0-beta.1.tgz"), Some("1.0.0-beta.1"));
        assert_eq!(version_from_file(&n, "other-1.0.0.tgz"), None);
    }

    #[test]
    fn every_legal_name_has_a_tarball_route() {
        // Found by fuzz/fuzz_targets/name.rs: `*` (legal in legacy names) made these BadFile.
        for n in ["a*b", "@s/x*", "a.b_c-d~e!f'(g)*"] {
            let n = name(n);
            let file = format!("{}-1.0.0+build.1.tgz", n.unscoped());
            let path = format!("/{}/-/{file}", n.url_segment());
            assert_eq!(classify(&path), Ok(Route::Tarball(n.clone(), file.clone())), "{path}");
            assert_eq!(version_from_file(&n, &file), Some("1.0.0+build.1"));
        }
    }

    #[test]
    fn the_package_a_write_names() {
        let name = |raw| written_package(raw).map(|n| n.to_string());
        assert_eq!(name("/left-pad").as_deref(), Some("left-pad"));
        assert_eq!(name("/@scope%2fpkg").as_deref(), Some("@scope/pkg"));
        assert_eq!(name("/left-pad/-rev/3-abc").as_deref(), Some("left-pad"));
        assert_eq!(name("/-/package/@s%2fp/dist-tags/next").as_deref(), Some("@s/p"));
        assert_eq!(name("/-/user/org.couchdb.user:me"), None);
        assert_eq!(name("/-/npm/v1/security/audits"), None);
    }
}
