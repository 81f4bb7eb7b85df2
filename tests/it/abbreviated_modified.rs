//! The abbreviated document carries `modified` as npm's does: `time.modified`, else the newest
//! version time, else when npg fetched it (an upstream without `time.modified`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::support;
use crate::support::http::ABBREVIATED;
use crate::support::npg::NpgProcess;
use crate::support::upstream::FakeRegistry;

fn doc(name: &str, time: Option<serde_json::Value>) -> Vec<u8> {
    let mut doc = json!({
        "name": name,
        "dist-tags": {"latest": "1.1.0"},
        "versions": {
            "1.0.0": {"name": name, "version": "1.0.0", "dist": {"tarball": format!("http://127.0.0.1:9/{name}/-/{name}-1.0.0.tgz")}},
            "1.1.0": {"name": name, "version": "1.1.0", "dist": {"tarball": format!("http://127.0.0.1:9/{name}/-/{name}-1.1.0.tgz")}}
        }
    });
    if let Some(time) = time {
        doc["time"] = time;
    }
    serde_json::to_vec(&doc).unwrap()
}

#[tokio::test]
async fn abbreviated_documents_carry_modified() {
    let up = FakeRegistry::start();
    let times = json!({"created": "2024-01-01T00:00:00.000Z", "1.0.0": "2024-01-01T00:00:00.000Z",
                       "1.1.0": "2024-05-06T07:08:09.010Z"});
    up.set_raw_packument("no-modified", doc("no-modified", Some(times)));
    up.set_raw_packument("no-time", doc("no-time", None));
    let npg = NpgProcess::start(&up.url(), &[]);
    let abbreviated = async |name: &str| {
        let url = format!("{}/{name}", npg.proxy_url);
        support::http::get(&url, &[("accept", ABBREVIATED)]).await.json()
    };
    // The fake's own packuments have `time.modified`.
    let own = abbreviated("npg-fixture-a").await;
    assert_eq!(own["modified"], up.packument_json("npg-fixture-a")["time"]["modified"]);
    assert_eq!(abbreviated("no-modified").await["modified"], "2024-05-06T07:08:09.010Z");
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let fetched = abbreviated("no-time").await["modified"].as_str().unwrap().to_string();
    let at = humantime::parse_rfc3339(&fetched).unwrap();
    let at_ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(
        at_ms + 60_000 > before && at_ms < before + 60_000,
        "{fetched} is not the fetch time"
    );
}
