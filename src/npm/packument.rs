//! Packuments: checks the upstream document, rewrites tarball URLs to npg's public URL,
//! derives npm's abbreviated ("corgi") form, and indexes the tarballs it names.

use std::borrow::Cow;
use std::collections::HashMap;

use indexmap::IndexMap;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use nodejs_semver::Version;

use super::name::PackageName;

/// Fields an abbreviated version manifest keeps when present (npm's documented list).
const ABBREVIATED_FIELDS: &[&str] = &[
    "name",
    "version",
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "acceptDependencies",
    "bin",
    "directories",
    "engines",
    "_hasShrinkwrap",
    "hasInstallScript",
    "funding",
    "cpu",
    "os",
    "libc",
    "dist",
];

const INSTALL_SCRIPTS: &[&str] = &["preinstall", "install", "postinstall"];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DocError {
    #[error("upstream sent invalid JSON: {0}")]
    Json(String),
    #[error("upstream document is not a packument: {0}")]
    Shape(&'static str),
    #[error("upstream document is for `{0}`")]
    WrongName(String),
}

/// What npg needs to know of one tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TarballInfo {
    pub(crate) version: String,
    /// Where upstream serves it (the document's original `dist.tarball`).
    pub(crate) upstream_url: Option<String>,
    pub(crate) integrity: Option<String>,
    pub(crate) shasum: Option<String>,
    /// The manifest declares an install script (see `Document::index`).
    pub(crate) install_script: bool,
}

/// What a version's manifest says that the guard judges it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionFacts {
    pub(crate) version: String,
    /// From the packument's `time` (unix ms).
    pub(crate) published: Option<u64>,
    /// It runs code when installed (see `Document::index`).
    pub(crate) install_script: bool,
}

/// Each version's `dist` as upstream wrote it, in the order of `VersionFacts`, none where it
/// has none.
pub(crate) type Dists<'a> = Vec<Option<&'a RawValue>>;

/// Versions, tags and tarballs of one packument.
#[derive(Debug, Default, Clone)]
pub struct Index {
    pub(crate) files: HashMap<String, TarballInfo>,
    pub(crate) dist_tags: HashMap<String, String>,
    pub versions: Vec<String>,
}

impl Index {
    pub(crate) fn approx_bytes(&self) -> usize {
        self.files
            .iter()
            .map(|(k, v)| k.len() * 2 + v.upstream_url.as_ref().map_or(0, String::len) + 200)
            .sum()
    }
}

/// A checked upstream document. Only what npg changes is parsed into values (`dist-tags`,
/// `time`, and one version manifest at a time while writing); everything else is kept as the
/// raw text it came as, borrowed from the input. A 40 MB packument thus never becomes a tree
/// of values several times its size.
pub(crate) struct Document<'a> {
    /// Top-level members in upstream order.
    top: Vec<(String, &'a RawValue)>,
    versions: IndexMap<String, &'a RawValue>,
    time: Option<Map<String, Value>>,
    tags: Option<Map<String, Value>>,
    /// `(name, public base)` once `rewrite_tarballs` was asked for: applied while writing.
    rewrite: Option<(PackageName, String)>,
}

/// What kind of output a version manifest is written into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Full,
    Abbreviated,
}

fn shape_or_json(e: serde_json::Error, shape: &'static str) -> DocError {
    match e.classify() {
        serde_json::error::Category::Data => DocError::Shape(shape),
        _ => DocError::Json(e.to_string()),
    }
}

impl<'a> Document<'a> {
    pub(crate) fn parse(raw: &'a [u8], name: &PackageName) -> Result<Document<'a>, DocError> {
        let top: Vec<(String, &'a RawValue)> = serde_json::from_slice::<IndexMap<String, &'a RawValue>>(raw)
            .map_err(|e| shape_or_json(e, "not a JSON object"))?
            .into_iter()
            .collect();
        let member = |key: &str| top_member(&top, key);
        if let Some(n) = member("name") {
            match serde_json::from_str::<Value>(n.get()) {
                Ok(Value::String(n)) if n != name.as_str() => return Err(DocError::WrongName(n)),
                Ok(Value::String(_)) => {}
                _ => return Err(DocError::Shape("`name` is not a string")),
            }
        }
        let versions = match member("versions") {
            Some(v) => serde_json::from_str::<IndexMap<String, &'a RawValue>>(v.get())
                .map_err(|e| shape_or_json(e, "`versions` is not an object"))?,
            None => IndexMap::new(),
        };
        let tags = match member("dist-tags") {
            Some(t) => Some(
                serde_json::from_str::<Map<String, Value>>(t.get())
                    .map_err(|e| shape_or_json(e, "`dist-tags` is not an object"))?,
            ),
            None => None,
        };
        // A `time` that is not an object is passed on untouched.
        let time = member("time").and_then(|t| serde_json::from_str::<Map<String, Value>>(t.get()).ok());
        Ok(Document {
            top,
            versions,
            time,
            tags,
            rewrite: None,
        })
    }

    /// Indexes the tarballs by file name, from the original (upstream) URLs, and tells what
    /// the guard judges each version by, and each version's `dist` (what its registry
    /// signatures cover) as the text it is: one parse of each manifest for all three.
    pub(crate) fn index(&self, name: &PackageName) -> (Index, Vec<VersionFacts>, Dists<'a>) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head<'a> {
            #[serde(default, borrow)]
            dist: Option<&'a RawValue>,
            #[serde(default)]
            scripts: Option<Value>,
            #[serde(default)]
            has_install_script: Option<Value>,
            #[serde(default)]
            gypfile: Option<Value>,
        }
        #[derive(serde::Deserialize)]
        struct Dist {
            #[serde(default)]
            tarball: Option<Value>,
            #[serde(default)]
            integrity: Option<Value>,
            #[serde(default)]
            shasum: Option<Value>,
        }
        impl Head<'_> {
            /// npm's `hasInstallScript` rule: an install hook, or a `binding.gyp` (npm runs
            /// `node-gyp rebuild` for it; the registry records it as `gypfile`).
            fn install_script(&self) -> bool {
                let scripts = self.scripts.as_ref().and_then(Value::as_object);
                let hook = scripts.is_some_and(|s| INSTALL_SCRIPTS.iter().any(|k| s.contains_key(*k)));
                let truthy = |v: &Option<Value>| matches!(v, Some(Value::Bool(true)));
                hook || truthy(&self.has_install_script) || truthy(&self.gypfile)
            }
        }
        let mut index = Index::default();
        let mut facts = Vec::with_capacity(self.versions.len());
        let mut dists = Vec::with_capacity(self.versions.len());
        for (version, raw) in &self.versions {
            let head = serde_json::from_str::<Head<'a>>(raw.get()).ok();
            let dist = head.as_ref().and_then(|h| h.dist);
            let fields = dist.and_then(|d| serde_json::from_str::<Dist>(d.get()).ok());
            let field = |f: fn(&Dist) -> &Option<Value>| {
                let value = fields.as_ref().and_then(|d| f(d).as_ref());
                value.and_then(Value::as_str).map(str::to_string)
            };
            let upstream_url = field(|d| &d.tarball);
            let file = tarball_file(name, version, upstream_url.as_deref());
            let install_script = head.as_ref().is_some_and(Head::install_script);
            let info = TarballInfo {
                version: version.clone(),
                upstream_url,
                integrity: field(|d| &d.integrity),
                shasum: field(|d| &d.shasum),
                install_script,
            };
            index.files.insert(file, info);
            index.versions.push(version.clone());
            facts.push(VersionFacts {
                version: version.clone(),
                published: self.published(version),
                install_script,
            });
            dists.push(dist);
        }
        index.dist_tags = self.index_tags();
        (index, facts, dists)
    }

    /// The dist-tags as a map.
    pub(crate) fn index_tags(&self) -> HashMap<String, String> {
        let tags = self.tags.iter().flatten();
        tags.filter_map(|(tag, v)| Some((tag.clone(), v.as_str()?.to_string())))
            .collect()
    }

    /// A version's publication time from `time` (unix ms), if it has one.
    fn published(&self, version: &str) -> Option<u64> {
        let time = self.time.as_ref()?.get(version)?;
        parse_time_ms(time.as_str()?)
    }

    /// Removes the versions `hide` selects from `versions` and `time`, and moves each dist-tag
    /// that pointed at one to the highest remaining version not newer than it (never from a
    /// release to a prerelease), dropping the tag when there is none. Returns how many went.
    pub(crate) fn hide(&mut self, hide: impl Fn(&str) -> bool) -> usize {
        let before = self.versions.len();
        self.versions.retain(|v, _| !hide(v));
        let removed = before - self.versions.len();
        if removed == 0 {
            return 0;
        }
        let remaining: Vec<Version> = self.versions.keys().filter_map(|v| Version::parse(v).ok()).collect();
        if let Some(time) = self.time.as_mut() {
            time.retain(|k, _| k == "created" || k == "modified" || !hide(k));
        }
        if let Some(tags) = self.tags.as_mut() {
            tags.retain(|_, target| {
                let Some(t) = target.as_str().filter(|t| hide(t)) else {
                    return true;
                };
                let Ok(old) = Version::parse(t) else { return false };
                let best = remaining
                    .iter()
                    .filter(|v| **v <= old && (old.is_prerelease() || !v.is_prerelease()))
                    .max();
                match best {
                    Some(v) => {
                        *target = Value::String(v.to_string());
                        true
                    }
                    None => false,
                }
            });
        }
        removed
    }

    /// Points every `dist.tarball` at `<public_base>/<name>/-/<file>` (applied while writing).
    pub(crate) fn rewrite_tarballs(&mut self, name: &PackageName, public_base: &str) {
        self.rewrite = Some((name.clone(), public_base.to_string()));
    }

    /// One version manifest as written: tarball rewritten, abbreviated if asked. Only its
    /// members are split and `dist` read: every other value is copied as the text it is
    /// (parsing each manifest whole cost a third of rendering a 40 MB document). A member
    /// given twice counts once, its last value in its first place, as a JSON parser reads it.
    fn write_version(&self, out: &mut Vec<u8>, version: &str, raw: &RawValue, form: Form) {
        let Ok(mut manifest) = serde_json::from_str::<Members>(raw.get()) else {
            out.extend_from_slice(raw.get().as_bytes());
            return;
        };
        let dist = match (&self.rewrite, manifest.get("dist")) {
            (Some((name, base)), Some(dist)) => rewritten_dist(dist, name, version, base),
            _ => None,
        };
        if let Some(dist) = &dist {
            manifest.insert("dist".into(), dist);
        }
        let install_hook = |scripts: &RawValue| {
            let scripts = serde_json::from_str::<Members>(scripts.get()).unwrap_or_default();
            INSTALL_SCRIPTS.iter().any(|k| scripts.contains_key(*k))
        };
        let members: Vec<(&str, &RawValue)> = match form {
            Form::Full => manifest.iter().map(|(k, v)| (k.as_ref(), *v)).collect(),
            Form::Abbreviated => {
                let hook = manifest.get("scripts").is_some_and(|s| install_hook(s));
                let mut kept = ABBREVIATED_FIELDS
                    .iter()
                    .filter_map(|&f| Some((f, *manifest.get(f)?)))
                    .collect::<Vec<_>>();
                let truth: &RawValue = serde_json::from_str("true").expect("a JSON literal");
                match kept.iter_mut().find(|(k, _)| *k == "hasInstallScript") {
                    Some(member) if hook => member.1 = truth,
                    None if hook => kept.push(("hasInstallScript", truth)),
                    _ => {}
                }
                kept
            }
        };
        out.push(b'{');
        for (i, (key, value)) in members.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(out, key);
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
    }

    /// Writes `versions`; with `manifests`, records where each version's manifest lies.
    fn write_versions(&self, out: &mut Vec<u8>, form: Form, mut manifests: Option<&mut Manifests>) {
        out.push(b'{');
        for (i, (version, raw)) in self.versions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(out, version);
            let start = out.len();
            self.write_version(out, version, raw, form);
            if let Some(m) = manifests.as_deref_mut() {
                m.insert(version.clone(), start..out.len());
            }
        }
        out.push(b'}');
    }

    /// The full document as JSON bytes, members in upstream order, with where each version's
    /// manifest lies in them (a manifest request is then a slice, not a parse).
    pub(crate) fn to_full(&self) -> Full {
        let mut manifests = Manifests::new();
        let body = self.write_full(&mut manifests);
        Full { body, manifests }
    }

    fn write_full(&self, manifests: &mut Manifests) -> Vec<u8> {
        let size = self.top.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>();
        let mut out = Vec::with_capacity(size + self.rewrite_growth());
        out.push(b'{');
        for (i, (key, raw)) in self.top.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(&mut out, key);
            match (key.as_str(), &self.time, &self.tags) {
                ("versions", _, _) => self.write_versions(&mut out, Form::Full, Some(&mut *manifests)),
                ("time", Some(time), _) => serde_json::to_writer(&mut out, time).expect("writing to a Vec"),
                ("dist-tags", _, Some(tags)) => serde_json::to_writer(&mut out, tags).expect("writing to a Vec"),
                _ => out.extend_from_slice(raw.get().as_bytes()),
            }
        }
        out.push(b'}');
        out.shrink_to_fit();
        out
    }

    /// At most how much rewriting the tarball URLs adds: the new URLs' length, for the
    /// output's first allocation. Growing a buffer of tens of MB copies it and leaves both
    /// resident; unused capacity of a large allocation is never touched, and is given back.
    fn rewrite_growth(&self) -> usize {
        let Some((name, base)) = &self.rewrite else { return 0 };
        let url = base.len() + 2 * name.as_str().len() + ".tgz".len() + 8;
        self.versions.keys().map(|v| url + v.len()).sum()
    }

    /// When the document last changed, as npm's abbreviated form says it: `time.modified`,
    /// else the newest time of a version it holds, else `fetched_ms` (when npg fetched it).
    fn modified(&self, fetched_ms: u64) -> Value {
        let time = self.time.as_ref();
        if let Some(modified) = time.and_then(|t| t.get("modified")) {
            return modified.clone();
        }
        let versions = time
            .into_iter()
            .flatten()
            .filter(|(v, _)| self.versions.contains_key(*v));
        let newest = versions
            .filter_map(|(_, t)| Some((parse_time_ms(t.as_str()?)?, t)))
            .max_by_key(|(ms, _)| *ms);
        match newest {
            Some((_, t)) => t.clone(),
            None => {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(fetched_ms);
                Value::String(humantime::format_rfc3339_millis(at).to_string())
            }
        }
    }

    /// npm's abbreviated form, keeping `time` for the release-age gates of pnpm and yarn;
    /// `fetched_ms` is when npg fetched it (the last resort for `modified`).
    pub(crate) fn to_abbreviated(&self, fetched_ms: u64) -> Vec<u8> {
        // Abbreviated manifests are smaller than the full ones, and `time` is as upstream sent it.
        let versions = self.versions.values().map(|v| v.get().len() + 1).sum::<usize>();
        let time = top_member(&self.top, "time").map_or(0, |t| t.get().len());
        let mut out = Vec::with_capacity(versions + time + self.rewrite_growth() + 4096);
        out.push(b'{');
        let mut first = true;
        let mut member = |out: &mut Vec<u8>, key: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            write_key(out, key);
        };
        if let Some(name) = top_member(&self.top, "name") {
            member(&mut out, "name");
            out.extend_from_slice(name.get().as_bytes());
        }
        if let Some(tags) = &self.tags {
            member(&mut out, "dist-tags");
            serde_json::to_writer(&mut out, tags).expect("writing to a Vec");
        }
        member(&mut out, "modified");
        serde_json::to_writer(&mut out, &self.modified(fetched_ms)).expect("writing to a Vec");
        member(&mut out, "versions");
        self.write_versions(&mut out, Form::Abbreviated, None);
        if let Some(time) = &self.time {
            member(&mut out, "time");
            serde_json::to_writer(&mut out, time).expect("writing to a Vec");
        }
        out.push(b'}');
        out.shrink_to_fit();
        out
    }
}

/// A top-level member as upstream wrote it.
fn top_member<'a>(top: &[(String, &'a RawValue)], key: &str) -> Option<&'a RawValue> {
    top.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn write_key(out: &mut Vec<u8>, key: &str) {
    serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
    out.push(b':');
}

/// An object's members, each value as its text.
type Members<'a> = IndexMap<Cow<'a, str>, &'a RawValue>;

/// A `dist` object with `tarball` pointing at `<base>/<name>/-/<file>`; none when it is not
/// an object.
fn rewritten_dist(dist: &RawValue, name: &PackageName, version: &str, base: &str) -> Option<Box<RawValue>> {
    let mut members = serde_json::from_str::<Members>(dist.get()).ok()?;
    let upstream = members
        .get("tarball")
        .and_then(|t| serde_json::from_str::<String>(t.get()).ok());
    let file = tarball_file(name, version, upstream.as_deref());
    let url = serde_json::value::to_raw_value(&format!("{base}/{name}/-/{file}")).expect("a string");
    members.insert("tarball".into(), &url);
    serde_json::value::to_raw_value(&members).ok()
}

/// Byte ranges of each version's manifest in a rendered full document.
pub(crate) type Manifests = HashMap<String, std::ops::Range<usize>>;

/// A rendered full document.
pub(crate) struct Full {
    pub(crate) body: Vec<u8>,
    pub(crate) manifests: Manifests,
}

/// The file name of a version's tarball: the last segment of its URL when that is a sane
/// `.tgz` name, else npm's convention `<unscoped name>-<version>.tgz`.
fn tarball_file(name: &PackageName, version: &str, url: Option<&str>) -> String {
    let from_url = url
        .and_then(|u| u.split(['?', '#']).next())
        .and_then(|u| u.rsplit('/').next())
        .map(|f| percent_encoding::percent_decode_str(f).decode_utf8_lossy().into_owned());
    match from_url {
        Some(f) if super::path::valid_file(&f) => f,
        _ => format!("{}-{version}.tgz", name.unscoped()),
    }
}

/// Milliseconds since the epoch of a time as npm writes them (`2024-01-02T03:04:05.678Z`).
pub(crate) fn parse_time_ms(time: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(time.trim_end_matches('Z')).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(n: &str) -> PackageName {
        PackageName::parse(n).unwrap()
    }

    fn sample() -> Value {
        json!({
            "_id": "@s/pkg", "name": "@s/pkg",
            "dist-tags": {"latest": "1.1.0"},
            "time": {"created": "2024-01-01T00:00:00.000Z", "modified": "2024-02-01T00:00:00.000Z",
                     "1.0.0": "2024-01-01T00:00:00.000Z", "1.1.0": "2024-02-01T00:00:00.000Z"},
            "readme": "long text",
            "versions": {
                "1.0.0": {"name": "@s/pkg", "version": "1.0.0", "description": "d", "readme": "r",
                          "scripts": {"test": "x"}, "dependencies": {"a": "^1"},
                          "dist": {"tarball": "https://up.example/@s/pkg/-/pkg-1.0.0.tgz", "shasum": "ab", "integrity": "sha512-x", "signatures": [{"sig": "s"}]}},
                "1.1.0": {"name": "@s/pkg", "version": "1.1.0", "scripts": {"postinstall": "node x"}, "bin": {"p": "x.js"},
                          "dist": {"tarball": "https://cdn.example/files/abc/weird%2Bname.tgz?sig=1", "integrity": "sha512-y"}}
            }
        })
    }

    /// Documents borrow their input: tests keep it alive for the whole run.
    fn leak(v: &Value) -> &'static [u8] {
        Box::leak(serde_json::to_vec(v).unwrap().into_boxed_slice())
    }

    fn doc() -> Document<'static> {
        Document::parse(leak(&sample()), &name("@s/pkg")).unwrap()
    }

    #[test]
    fn rewrites_tarballs_and_keeps_the_rest() {
        let mut d = doc();
        d.rewrite_tarballs(&name("@s/pkg"), "https://npg.test/npm");
        let full: Value = serde_json::from_slice(&d.to_full().body).unwrap();
        assert_eq!(
            full["versions"]["1.0.0"]["dist"]["tarball"],
            "https://npg.test/npm/@s/pkg/-/pkg-1.0.0.tgz"
        );
        assert_eq!(
            full["versions"]["1.1.0"]["dist"]["tarball"],
            "https://npg.test/npm/@s/pkg/-/weird+name.tgz"
        );
        assert_eq!(full["time"], sample()["time"]);
        assert_eq!(full["readme"], "long text");
        assert_eq!(
            full["versions"]["1.0.0"]["dist"]["signatures"],
            sample()["versions"]["1.0.0"]["dist"]["signatures"]
        );
    }

    #[test]
    fn abbreviates_by_npm_field_list() {
        let a: Value = serde_json::from_slice(&doc().to_abbreviated(0)).unwrap();
        assert_eq!(a["name"], "@s/pkg");
        assert_eq!(a["modified"], "2024-02-01T00:00:00.000Z");
        assert_eq!(a["dist-tags"]["latest"], "1.1.0");
        assert!(a.get("readme").is_none() && a.get("_id").is_none());
        let v0 = &a["versions"]["1.0.0"];
        assert_eq!(v0["dependencies"]["a"], "^1");
        assert!(v0.get("description").is_none() && v0.get("scripts").is_none() && v0.get("readme").is_none());
        assert!(v0.get("hasInstallScript").is_none());
        assert_eq!(v0["dist"], sample()["versions"]["1.0.0"]["dist"]);
        assert_eq!(a["versions"]["1.1.0"]["hasInstallScript"], true);
        assert_eq!(a["versions"]["1.1.0"]["bin"]["p"], "x.js");
        assert_eq!(a["time"], sample()["time"]);
    }

    #[test]
    fn modified_from_time_else_newest_version_else_fetch_time() {
        let modified = |doc: Value| {
            let d = Document::parse(leak(&doc), &name("@s/pkg")).unwrap();
            let a: Value = serde_json::from_slice(&d.to_abbreviated(1_700_000_000_123)).unwrap();
            a["modified"].clone()
        };
        assert_eq!(modified(sample()), "2024-02-01T00:00:00.000Z");
        let mut doc = sample();
        doc["time"].as_object_mut().unwrap().remove("modified");
        doc["time"]["1.0.0"] = json!("2024-03-05T06:07:08.900Z");
        doc["time"]["9.9.9"] = json!("2025-01-01T00:00:00.000Z"); // no such version in the doc
        assert_eq!(modified(doc.clone()), "2024-03-05T06:07:08.900Z");
        doc.as_object_mut().unwrap().remove("time");
        assert_eq!(modified(doc), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn indexes_tarballs_by_original_file() {
        let (idx, _, _) = doc().index(&name("@s/pkg"));
        assert_eq!(idx.files["pkg-1.0.0.tgz"].version, "1.0.0");
        assert_eq!(idx.files["pkg-1.0.0.tgz"].shasum.as_deref(), Some("ab"));
        assert_eq!(
            idx.files["weird+name.tgz"].upstream_url.as_deref(),
            Some("https://cdn.example/files/abc/weird%2Bname.tgz?sig=1")
        );
        assert_eq!(idx.dist_tags["latest"], "1.1.0");
        assert_eq!(idx.versions.len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        let n = name("a");
        assert!(matches!(
            Document::parse(b"{\"name\": \"a\", \"versions\": {", &n),
            Err(DocError::Json(_))
        ));
        assert!(matches!(Document::parse(b"[1,2]", &n), Err(DocError::Shape(_))));
        assert!(matches!(
            Document::parse(b"{\"versions\": []}", &n),
            Err(DocError::Shape(_))
        ));
        assert_eq!(
            Document::parse(b"{\"name\": \"b\"}", &n).err(),
            Some(DocError::WrongName("b".into()))
        );
        assert!(Document::parse(b"{\"name\": \"a\"}", &n).is_ok());
    }

    fn tagged(versions: &[&str], tags: Value) -> Document<'static> {
        let versions: Map<String, Value> = versions
            .iter()
            .map(|v| (v.to_string(), json!({"version": v})))
            .collect();
        let time: Map<String, Value> = versions
            .keys()
            .map(|v| (v.clone(), json!("2024-01-01T00:00:00.000Z")))
            .collect();
        let doc = json!({"name": "a", "dist-tags": tags, "versions": versions, "time": time});
        Document::parse(leak(&doc), &name("a")).unwrap()
    }

    #[test]
    fn hiding_versions_moves_dist_tags() {
        let mut d = tagged(
            &["1.0.0", "1.1.0", "1.2.0", "2.0.0-beta.1", "2.0.0", "3.0.0"],
            json!({"latest": "2.0.0", "next": "3.0.0", "beta": "2.0.0-beta.1", "old": "1.0.0"}),
        );
        let hidden = ["2.0.0", "3.0.0", "1.0.0"];
        assert_eq!(d.hide(|v| hidden.contains(&v)), 3);
        let v: Value = serde_json::from_slice(&d.to_full().body).unwrap();
        assert_eq!(
            v["dist-tags"]["latest"], "1.2.0",
            "a release never moves to a prerelease"
        );
        assert_eq!(
            v["dist-tags"]["next"], "1.2.0",
            "highest remaining not newer than 3.0.0"
        );
        assert_eq!(v["dist-tags"]["beta"], "2.0.0-beta.1", "untouched");
        assert!(v["dist-tags"].get("old").is_none(), "nothing older than 1.0.0 remains");
        let versions: Vec<&String> = v["versions"].as_object().unwrap().keys().collect();
        assert_eq!(versions, ["1.1.0", "1.2.0", "2.0.0-beta.1"]);
        assert!(v["time"].get("2.0.0").is_none() && v["time"].get("1.1.0").is_some());
        let a: Value = serde_json::from_slice(&d.to_abbreviated(0)).unwrap();
        assert!(a["versions"].get("2.0.0").is_none() && a["time"].get("3.0.0").is_none());
    }

    #[test]
    fn prerelease_tags_move_to_prereleases_too() {
        let mut d = tagged(
            &["1.0.0", "2.0.0-rc.1", "2.0.0-rc.2"],
            json!({"next": "2.0.0-rc.2", "latest": "1.0.0"}),
        );
        d.hide(|v| v == "2.0.0-rc.2");
        let v: Value = serde_json::from_slice(&d.to_full().body).unwrap();
        assert_eq!(v["dist-tags"]["next"], "2.0.0-rc.1");
        assert_eq!(v["dist-tags"]["latest"], "1.0.0");
        assert_eq!(d.hide(|_| false), 0);
    }

    #[test]
    fn manifests_are_copied_member_by_member() {
        let raw = br#"{"name":"a","versions":{
            "1.0.0":{"name":"a","version":"1.0.0","n":123456789012345678901234567890,"dist":{"shasum":"x"},
                     "dist":{"integrity":"sha512-A","tarball":"http:\/\/up\/a\/-\/a-1.0.0.tgz"},"version":"1.0.0"},
            "2.0.0":{"version":"2.0.0","dist":{"integrity":"sha512-B"},"hasInstallScript":false,
                     "scripts":{"postinstall":"x"},"bin":{"a":"b"}},
            "3.0.0":{"version":"3.0.0","dist":"odd"}}}"#;
        let mut d = Document::parse(raw, &name("a")).unwrap();
        d.rewrite_tarballs(&name("a"), "http://npg/npm");
        let full: Value = serde_json::from_slice(&d.to_full().body).unwrap();
        let v1 = full["versions"]["1.0.0"].as_object().unwrap();
        assert_eq!(
            v1.keys().collect::<Vec<_>>(),
            ["name", "version", "n", "dist"],
            "the last of twins, first place"
        );
        assert_eq!(
            v1["dist"],
            json!({"integrity": "sha512-A", "tarball": "http://npg/npm/a/-/a-1.0.0.tgz"})
        );
        assert!(
            String::from_utf8_lossy(&d.to_full().body).contains("123456789012345678901234567890"),
            "numbers are copied, not read as floats"
        );
        let v2 = &full["versions"]["2.0.0"];
        assert_eq!(
            v2["dist"]["tarball"], "http://npg/npm/a/-/a-2.0.0.tgz",
            "added when missing"
        );
        assert_eq!(full["versions"]["3.0.0"]["dist"], "odd");
        let abbreviated: Value = serde_json::from_slice(&d.to_abbreviated(0)).unwrap();
        let v2 = abbreviated["versions"]["2.0.0"].as_object().unwrap();
        assert_eq!(
            v2.keys().collect::<Vec<_>>(),
            ["version", "bin", "hasInstallScript", "dist"]
        );
        assert_eq!(v2["hasInstallScript"], true);
    }

    #[test]
    fn keeps_member_order_and_unknown_members() {
        let d = doc();
        let full: Map<String, Value> = serde_json::from_slice(&d.to_full().body).unwrap();
        let keys: Vec<&String> = full.keys().collect();
        assert_eq!(keys, ["_id", "name", "dist-tags", "time", "readme", "versions"]);
        let weird = br#"{"name":"a","time":"not an object","x":{"y":[1,2,{"z":null}]},"versions":{"1.0.0":"odd"}}"#;
        let d = Document::parse(weird, &name("a")).unwrap();
        let v: Value = serde_json::from_slice(&d.to_full().body).unwrap();
        assert_eq!(v["time"], "not an object");
        assert_eq!(v["x"]["y"][2]["z"], Value::Null);
        assert_eq!(v["versions"]["1.0.0"], "odd");
        let a: Value = serde_json::from_slice(&d.to_abbreviated(0)).unwrap();
        assert_eq!(a["versions"]["1.0.0"], "odd");
    }

    #[test]
    fn npm_times() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(parse_time_ms("2024-01-01T00:00:00Z"), Some(1_704_067_200_000));
        assert_eq!(parse_time_ms("yesterday"), None);
    }

    #[test]
    fn version_facts() {
        let (_, facts, _) = doc().index(&name("@s/pkg"));
        assert_eq!(facts[0].published, Some(1_704_067_200_000));
        let scripts = |manifest: Value| {
            let doc = json!({"name": "p", "versions": {"1.0.0": manifest}});
            let (_, facts, _) = Document::parse(leak(&doc), &name("p")).unwrap().index(&name("p"));
            facts[0].install_script
        };
        assert!(scripts(json!({"scripts": {"postinstall": "node x"}})));
        assert!(scripts(json!({"scripts": {"preinstall": "x"}})));
        assert!(scripts(json!({"hasInstallScript": true})));
        assert!(scripts(json!({"gypfile": true})), "binding.gyp");
        assert!(!scripts(json!({"scripts": {"test": "x", "prepare": "x"}})));
        assert!(!scripts(json!({"scripts": "postinstall"})));
        assert!(!scripts(json!({"gypfile": "yes"})));
        assert_eq!(parse_time_ms("nonsense"), None);
    }

    #[test]
    fn one_version_manifest() {
        let full = doc().to_full();
        let m: Value = serde_json::from_slice(&full.body[full.manifests["1.1.0"].clone()]).unwrap();
        assert_eq!(m["version"], "1.1.0");
        assert!(!full.manifests.contains_key("9.9.9"));
        let whole: Value = serde_json::from_slice(&full.body).unwrap();
        for (v, range) in &full.manifests {
            let slice: Value = serde_json::from_slice(&full.body[range.clone()]).unwrap();
            assert_eq!(slice, whole["versions"][v], "{v}: the slice is that version's manifest");
        }
    }
}
