//! pnpm's `pnpm-lock.yaml`: `packages` keyed `/name@1.2.3(peer@1)` (v6), `name@1.2.3` (v9)
//! or `/name/1.2.3_peer` (v5), a `resolution.tarball` URL when the tarball is not where the
//! registry's convention puts it.

use serde_yaml_ng::{Mapping, Value};

use super::{Entry, split_spec};
use anyhow::anyhow;

pub(crate) fn parse(text: &str) -> anyhow::Result<Vec<Entry>> {
    let doc: Mapping = serde_yaml_ng::from_str(text).map_err(|e| anyhow!("not YAML: {e}"))?;
    let v5 = match doc.get("lockfileVersion") {
        Some(Value::Number(n)) => n.as_f64().is_some_and(|v| v < 6.0),
        Some(Value::String(s)) => s.starts_with('5'),
        _ => return Err(anyhow!("no lockfileVersion: not a pnpm-lock.yaml")),
    };
    let packages = doc.get("packages").and_then(Value::as_mapping);
    let entries = packages
        .into_iter()
        .flatten()
        .filter_map(|(key, meta)| entry(key.as_str()?, meta, v5));
    Ok(entries.collect())
}

fn entry(key: &str, meta: &Value, v5: bool) -> Option<Entry> {
    let field = |k: &str| meta.get(k).and_then(Value::as_str);
    let key = key.strip_prefix('/').unwrap_or(key);
    let key = key.split('(').next().unwrap_or(key);
    let (name, version) = if v5 {
        // `name/1.2.3_peer@1`.
        let key = key.split('_').next().unwrap_or(key);
        key.rsplit_once('/')?
    } else {
        split_spec(key)?
    };
    let resolution = |k: &str| meta.get("resolution").and_then(|r| r.get(k)).and_then(Value::as_str);
    // Tarball and git dependencies carry their real name and version as fields.
    Entry::new(
        field("name").unwrap_or(name),
        field("version").unwrap_or(version),
        resolution("tarball"),
    )
    .map(|e| e.with_integrity(resolution("integrity")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        let entries = parse(text).unwrap();
        entries.iter().map(|e| format!("{}@{}", e.name, e.version)).collect()
    }

    #[test]
    fn v9_v6_and_v5_keys() {
        let v9 = "lockfileVersion: '9.0'\npackages:\n  '@s/a@1.2.0':\n    resolution: {integrity: sha512-x}\n  b@2.0.0:\n    resolution: {integrity: sha512-y, tarball: 'http://127.0.0.1:9/b/-/b-2.0.0.tgz'}\nsnapshots:\n  b@2.0.0: {}\n";
        assert_eq!(names(v9), ["@s/a@1.2.0", "b@2.0.0"]);
        assert_eq!(
            parse(v9).unwrap()[1].resolved.as_deref(),
            Some("http://127.0.0.1:9/b/-/b-2.0.0.tgz")
        );
        assert_eq!(parse(v9).unwrap()[1].integrity.as_deref(), Some("sha512-y"));
        let v6 = "lockfileVersion: '6.0'\npackages:\n  /@s/a@1.2.0(b@2.0.0):\n    resolution: {integrity: sha512-x}\n  /c@1.0.0:\n    resolution: {integrity: sha512-z}\n";
        assert_eq!(names(v6), ["@s/a@1.2.0", "c@1.0.0"]);
        let v5 = "lockfileVersion: 5.4\npackages:\n  /@s/a/1.2.0_b@2.0.0:\n    resolution: {integrity: sha512-x}\n";
        assert_eq!(names(v5), ["@s/a@1.2.0"]);
        assert!(parse("a: 1\n").is_err());
    }
}
