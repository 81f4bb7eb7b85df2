//! The hidden versions told to npm inside the packument, as npm's `policyRestrictions`.
//!
//! npm (npm-pick-manifest) picks a version listed there only when nothing else fits, and then
//! fails with "Could not download x@2.0.0 due to policy violations: <message>" instead of
//! "No matching version found": `npm install x@<hidden>` and a range only hidden versions
//! satisfy say why. pnpm and yarn ignore the field.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::Block;

/// Versions named in the message; the rest are counted.
const NAMED: usize = 10;

/// `body` (a JSON object) with `policyRestrictions` for `hidden` as its last member.
/// Added at the end, so byte ranges into the body stay valid.
pub(crate) fn append(mut body: Vec<u8>, name: &str, hidden: &HashMap<String, Block>) -> Vec<u8> {
    if hidden.is_empty() || body.last() != Some(&b'}') {
        return body;
    }
    let versions: Map<String, Value> = hidden
        .keys()
        .map(|v| (v.clone(), json!({"name": name, "version": v})))
        .collect();
    let field = json!({"message": message(name, hidden), "versions": versions});
    body.pop();
    if body.len() > 1 {
        body.push(b',');
    }
    body.extend_from_slice(b"\"policyRestrictions\":");
    serde_json::to_writer(&mut body, &field).expect("writing to a Vec");
    body.push(b'}');
    body
}

/// One line per hidden version, newest first, then what to do.
fn message(name: &str, hidden: &HashMap<String, Block>) -> String {
    let mut versions: Vec<(&String, &Block)> = hidden.iter().collect();
    let key = |v: &str| nodejs_semver::Version::parse(v).ok();
    versions.sort_by(|a, b| key(b.0).cmp(&key(a.0)).then_with(|| b.0.cmp(a.0)));
    let mut lines: Vec<String> = versions
        .iter()
        .take(NAMED)
        .map(|(v, block)| format!("{name}@{v} is {}", block.message()))
        .collect();
    if versions.len() > NAMED {
        lines.push(format!("and {} more versions", versions.len() - NAMED));
    }
    lines.push(format!(
        "Use another version, or ask your npg administrator. GET /api/guard/{name} on npg shows what is hidden and why."
    ));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Rule;

    #[test]
    fn appended_as_the_last_member() {
        let hidden = HashMap::from([("2.0.0".to_string(), Block::new(Rule::Version, "bad"))]);
        let body = append(br#"{"name":"a","versions":{}}"#.to_vec(), "a", &hidden);
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["policyRestrictions"]["versions"]["2.0.0"]["version"], "2.0.0");
        let message = doc["policyRestrictions"]["message"].as_str().unwrap();
        assert!(message.starts_with("a@2.0.0 is blocked by the blocklist (bad)\nUse another"));
        assert!(body.starts_with(br#"{"name":"a","versions":{}}"#[..25].as_ref()));
        let nothing_hidden = append(b"{}".to_vec(), "a", &HashMap::new());
        assert_eq!(nothing_hidden, b"{}");
    }

    #[test]
    fn the_message_is_bounded() {
        let hidden: HashMap<String, Block> = (0..30)
            .map(|i| (format!("1.0.{i}"), Block::new(Rule::Version, "bad")))
            .collect();
        let text = message("a", &hidden);
        assert!(text.starts_with("a@1.0.29 is blocked"), "{text}");
        assert_eq!(text.lines().count(), NAMED + 2);
        assert!(text.contains("and 20 more versions"));
    }
}
