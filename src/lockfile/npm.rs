//! npm's `package-lock.json` and `npm-shrinkwrap.json`: v2 and v3 list every package under
//! `packages` by its `node_modules/...` path; v1 nests them under `dependencies`.

use serde_json::Value;

use super::{Entry, split_spec};
use anyhow::anyhow;

pub(crate) fn parse(text: &str) -> anyhow::Result<Vec<Entry>> {
    let doc: Value = serde_json::from_str(text).map_err(|e| anyhow!("not JSON: {e}"))?;
    if let Some(packages) = doc.get("packages").and_then(Value::as_object) {
        return Ok(packages.iter().filter_map(|(path, meta)| package(path, meta)).collect());
    }
    match doc.get("dependencies") {
        Some(deps) => {
            let mut entries = Vec::new();
            walk_v1(deps, &mut entries);
            Ok(entries)
        }
        None => Err(anyhow!(
            "neither `packages` nor `dependencies`: not a package-lock.json"
        )),
    }
}

fn str_of<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta.get(key).and_then(Value::as_str)
}

/// A v2/v3 `packages` member; the root, workspaces and links are not packages of a registry.
fn package(path: &str, meta: &Value) -> Option<Entry> {
    let installed_as = &path[path.rfind("node_modules/")? + "node_modules/".len()..];
    if meta.get("link").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    // An alias (`"x": "npm:real@1"`) is installed as `x` and names the real package.
    let name = str_of(meta, "name").unwrap_or(installed_as);
    Entry::new(name, str_of(meta, "version")?, str_of(meta, "resolved"))
        .map(|e| e.with_integrity(str_of(meta, "integrity")))
}

/// v1's nested `dependencies`: `{name: {version, resolved, dependencies}}`; an alias's version
/// is `npm:real@1.0.0`.
fn walk_v1(deps: &Value, out: &mut Vec<Entry>) {
    for (name, meta) in deps.as_object().into_iter().flatten() {
        let version = str_of(meta, "version").unwrap_or_default();
        let (name, version) = match version.strip_prefix("npm:").and_then(split_spec) {
            Some((real, version)) => (real, version),
            None => (name.as_str(), version),
        };
        let entry = Entry::new(name, version, str_of(meta, "resolved"));
        out.extend(entry.map(|e| e.with_integrity(str_of(meta, "integrity"))));
        if let Some(nested) = meta.get("dependencies") {
            walk_v1(nested, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_packages() {
        let text = r#"{"name": "p", "lockfileVersion": 3, "packages": {
            "": {"name": "p", "dependencies": {"a": "^1"}},
            "node_modules/a": {"version": "1.0.0", "resolved": "http://127.0.0.1:9/a/-/a-1.0.0.tgz", "integrity": "sha512-a"},
            "node_modules/a/node_modules/@s/b": {"version": "2.0.0-beta.1"},
            "node_modules/alias": {"name": "real", "version": "3.0.0"},
            "node_modules/ws": {"resolved": "packages/ws", "link": true},
            "packages/ws": {"version": "0.0.1"},
            "node_modules/g": {"version": "git+ssh://git@127.0.0.1/g.git#abc"}}}"#;
        let entries = parse(text).unwrap();
        let names: Vec<_> = entries.iter().map(|e| format!("{}@{}", e.name, e.version)).collect();
        assert_eq!(names, ["a@1.0.0", "@s/b@2.0.0-beta.1", "real@3.0.0"]);
        assert_eq!(
            entries[0].resolved.as_deref(),
            Some("http://127.0.0.1:9/a/-/a-1.0.0.tgz")
        );
        assert_eq!(entries[0].integrity.as_deref(), Some("sha512-a"));
        assert_eq!(entries[1].integrity, None);
    }

    #[test]
    fn v1_dependencies() {
        let text = r#"{"lockfileVersion": 1, "dependencies": {
            "a": {"version": "1.0.0", "resolved": "http://127.0.0.1:9/a/-/a-1.0.0.tgz",
                  "dependencies": {"b": {"version": "2.0.0"}}},
            "x": {"version": "npm:@s/real@1.2.3"},
            "f": {"version": "file:../f"}}}"#;
        let names: Vec<_> = parse(text)
            .unwrap()
            .iter()
            .map(|e| format!("{}@{}", e.name, e.version))
            .collect();
        assert_eq!(names, ["a@1.0.0", "b@2.0.0", "@s/real@1.2.3"]);
        assert!(parse("{}").is_err() && parse("not json").is_err());
    }
}
