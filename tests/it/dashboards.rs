//! The monitoring files against a running npg: every metric the Grafana dashboard's panels
//! (`deploy/grafana/npg-dashboard.json`), the alerting rules (`deploy/prometheus/npg-rules.yml`)
//! and their unit tests' series query is one npg exports at `/metrics`, and every label their
//! matchers name is one npg sets on it. `deploy/check` checks the rest in the real promtool
//! (the rules' logic, the panels' PromQL).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::blob_registry::{Blob, BlobRegistry, sri};
use crate::support::feed_server::FakeFeed;
use crate::support::guarded::start_with;
use crate::support::npg::NpgProcess;
use crate::support::redis::RedisServer;
use crate::support::tls;
use crate::support::upstream::{Failure, FakeRegistry};

/// PromQL words that are not metric names: aggregations, keywords, and `up`, which
/// Prometheus writes itself. Functions are known by the `(` that follows them.
const NOT_METRICS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "up",
];

/// Keywords followed by a list of label names, not metrics.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Metric names, each with the label names its matchers use (`{route="tarball"}`).
type Used = BTreeMap<String, BTreeSet<String>>;

fn merge(into: &mut Used, more: Used) {
    for (name, labels) in more {
        into.entry(name).or_default().extend(labels);
    }
}

/// The metric names one PromQL expression (or series selector) reads, with their matchers'
/// label names: outside matchers, ranges and strings, not functions, keywords nor Grafana's
/// `$variables`.
fn metric_names(expr: &str) -> Used {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Used::new();
    let (mut braces, mut brackets) = (0usize, 0usize);
    // the metric just read, whose matchers a `{` would open; the one they are open for
    let (mut pending, mut selector): (Option<String>, Option<String>) = (None, None);
    let mut i = 0;
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if !c.is_whitespace() && c != '{' {
            pending = None;
        }
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => {
                if braces == 0 {
                    selector = pending.take();
                }
                (braces, i) = (braces + 1, i + 1);
            }
            '}' => (braces, i) = (braces.saturating_sub(1), i + 1),
            '[' => (brackets, i) = (brackets + 1, i + 1),
            ']' => (brackets, i) = (brackets.saturating_sub(1), i + 1),
            // Grafana's variables: ${name} or $name
            '$' if chars.get(i + 1) == Some(&'{') => {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            }
            // $name, numbers and durations (0.95, 1e3, 5m)
            '$' | '0'..='9' | '.' => {
                i += 1;
                while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if word(c) => {
                let start = i;
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if braces > 0 {
                    // a matcher's label name (values are strings)
                    if let Some(metric) = &selector {
                        names.entry(metric.clone()).or_default().insert(ident);
                    }
                } else if call && LABEL_LISTS.contains(&ident.as_str()) {
                    // by (le, route): label names up to the closing parenthesis
                    while next < chars.len() && chars[next] != ')' {
                        next += 1;
                    }
                    i = next + 1;
                } else if brackets == 0 && !call && !NOT_METRICS.contains(&ident.as_str()) {
                    names.entry(ident.clone()).or_default();
                    pending = Some(ident);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every metric name the dashboard's queries read: the panels' expressions (rows' panels
/// too) and the variables' `label_values(metric, label)`.
fn dashboard_names(dashboard: &Value) -> Used {
    fn walk(v: &Value, out: &mut Used) {
        match v {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(expr)) => merge(out, metric_names(expr)),
                        ("query" | "definition", Value::String(q)) => {
                            if let Some(inner) = q.strip_prefix("label_values(").and_then(|q| q.rsplit_once(',')) {
                                merge(out, metric_names(inner.0));
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Used::new();
    walk(dashboard, &mut out);
    out
}

/// Every metric name in the rules' expressions and in their unit tests' input series.
fn rules_names(rules: &serde_yaml_ng::Value, tests: &serde_yaml_ng::Value) -> Used {
    let seq = |v: &serde_yaml_ng::Value, key: &str| v[key].as_sequence().cloned().unwrap_or_default();
    let mut out = Used::new();
    for group in seq(rules, "groups") {
        for rule in seq(&group, "rules") {
            merge(
                &mut out,
                metric_names(rule["expr"].as_str().expect("every rule has an expr")),
            );
        }
    }
    for test in seq(tests, "tests") {
        for series in seq(&test, "input_series") {
            merge(
                &mut out,
                metric_names(series["series"].as_str().expect("every input has a series")),
            );
        }
    }
    out
}

/// The sample names a Prometheus text exposition offers: each `# TYPE` family's (a counter's
/// `_total`; a histogram's `_bucket`, `_sum`, `_count`: a histogram is never read bare) and
/// each sample's. A family without a series yet is not printed at all: the tests make them.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let (family, kind) = decl.split_once(' ').expect("# TYPE <family> <kind>");
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The names `used` reads that `scrape` does not offer.
fn missing(used: &Used, scrape: &str) -> Vec<String> {
    let offered = exported(scrape);
    used.keys().filter(|n| !offered.contains(*n)).cloned().collect()
}

/// The label names of each sample name in `scrape`.
fn sample_labels(scrape: &str) -> Used {
    let mut out = Used::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, mut rest)) = line.split_once('{') else {
            continue;
        };
        let labels = out.entry(name.to_string()).or_default();
        // name="value",...}: a value ends at its first quote not escaped by a backslash
        while let Some((label, value)) = rest.split_once("=\"") {
            labels.insert(label.trim_start_matches(',').to_string());
            let mut escaped = false;
            let end = value
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(value.len(), |(at, _)| at + 1);
            rest = &value[end..];
        }
    }
    out
}

/// `metric{label}` for each matcher of `used` on a label npg does not put on that metric
/// (`instance` and `job` are Prometheus's own).
fn unknown_labels(used: &Used, scrape: &str) -> Vec<String> {
    let offered = sample_labels(scrape);
    let mut unknown = Vec::new();
    for (name, labels) in used {
        let has = offered.get(name).cloned().unwrap_or_default();
        for label in labels {
            if !has.contains(label) && label != "instance" && label != "job" {
                unknown.push(format!("{name}{{{label}}}"));
            }
        }
    }
    unknown
}

fn deploy(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const BLOCKLIST: &str = "packages:\n  - name: npg-legacy\n    reason: unmaintained\n";

async fn get_ok(url: &str, status: u16) {
    let reply = support::http::get(url, &[]).await;
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{url}: {}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// Polls `url` until its body says `what`; returns the body.
async fn wait_for(url: &str, what: &str) -> String {
    let started = Instant::now();
    loop {
        let body = String::from_utf8(support::http::get(url, &[]).await.body).unwrap();
        if body.contains(what) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{url} never said {what}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// npg with Redis and each rule the dashboard charts, after the traffic that makes each
/// labelled family exist: a packument, a tarball, a blocked package, a typosquat warning, a
/// signature check, a silent connection cut, a packument served stale while upstream fails.
async fn busy_npg_scrape() -> String {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (osv, popular) = (dir.path().join("osv"), dir.path().join("popular.txt"));
    std::fs::create_dir(&osv).unwrap();
    std::fs::write(&popular, "npg-widgets\n").unwrap();
    let (redis_url, osv, popular) = (redis.url(), osv.to_str().unwrap(), popular.to_str().unwrap());
    let (up, npg, _dir) = start_with(
        BLOCKLIST,
        &[
            ("REDIS_URL", &redis_url),
            ("ENABLE_REDIS_CACHE", "true"),
            ("OSV_FEED_DIR", osv),
            ("TYPOSQUAT_LIST", popular),
            ("TYPOSQUAT_POLICY", "warn"),
            ("SIGNATURE_POLICY", "warn"),
            ("METADATA_TTL", "1s"),
            ("HEADER_READ_TIMEOUT", "1s"),
        ],
    );
    up.add_package("npg-wigdets", &["1.0.0"]);
    // signatures are checked once the registry's keys are in force
    wait_for(&format!("{}/api/health", npg.base), r#""count":1"#).await;
    let proxy = &npg.proxy_url;
    // a cold tarball miss first: asked early (where this upstream does not keep it)
    get_ok(&format!("{proxy}/npg-fixture-b/-/npg-fixture-b-1.0.0.tgz"), 200).await;
    get_ok(&format!("{proxy}/npg-fixture-a"), 200).await;
    get_ok(&format!("{proxy}/npg-fixture-a/-/npg-fixture-a-1.0.0.tgz"), 200).await;
    get_ok(&format!("{proxy}/npg-legacy"), 403).await;
    get_ok(&format!("{proxy}/npg-wigdets"), 200).await;
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", npg.port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = std::io::Read::read(&mut silent, &mut [0u8; 16]);
    up.set_failure(Failure::Status(500));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    get_ok(&format!("{proxy}/npg-fixture-a"), 200).await;
    // the Redis monitor pings once a second
    wait_for(&format!("{}/metrics", npg.base), "npg_redis_up 1").await
}

/// npg whose upstream serves a tarball that is not the bytes its integrity names.
async fn refusing_npg_scrape() -> String {
    let up = BlobRegistry::start();
    up.set_package(
        "npg-forged",
        vec![Blob {
            version: "1.0.0",
            file: "npg-forged-1.0.0.tgz",
            bytes: b"not the bytes the integrity names".to_vec(),
            integrity: Some(sri(b"the bytes it names")),
        }],
    );
    let npg = NpgProcess::start(&up.url(), &[]);
    // headers go out before the last byte is checked: the body breaks off, whatever the status
    let url = format!("{}/npg-forged/-/npg-forged-1.0.0.tgz", npg.proxy_url);
    if let Ok(reply) = support::http::client().get(url).send().await {
        let _ = reply.bytes().await;
    }
    String::from_utf8(support::http::get(&format!("{}/metrics", npg.base), &[]).await.body).unwrap()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_rules_query_is_exported() {
    let scrape = busy_npg_scrape().await + &refusing_npg_scrape().await;
    for series in [
        "npg_redis_enabled 1",
        r#"npg_guard_blocks_total{type="package"} 1"#,
        r#"npg_tarball_downloads_total{role="lead"} 1"#,
        r#"npg_cache_lookups_total{tier="l1",result="miss"}"#,
        r#"npg_upstream_requests_total{kind="packument",outcome="ok"}"#,
        r#"npg_http_request_duration_seconds_bucket{le="+Inf",route="packument"}"#,
        r#"npg_feed_updated_timestamp_seconds{feed="malware"}"#,
        r#"npg_feed_refresh_interval_seconds{feed="osv"}"#,
        r#"npg_typosquat_suspects_total{action="warn"} 1"#,
        r#"npg_connections_cut_total{deadline="head"}"#,
        r#"npg_stale_served_total{why="upstream_error"}"#,
        r#"npg_tarball_refused_total{reason="integrity"} 1"#,
    ] {
        assert!(scrape.contains(series), "{series} missing in\n{scrape}");
    }

    let dashboard: Value = serde_json::from_str(&deploy("grafana/npg-dashboard.json")).expect("dashboard JSON");
    let used = dashboard_names(&dashboard);
    assert!(used.len() > 20, "the extractor found too few names: {used:?}");
    assert_eq!(
        missing(&used, &scrape),
        Vec::<String>::new(),
        "dashboard panels name metrics npg does not export"
    );
    assert_eq!(
        unknown_labels(&used, &scrape),
        Vec::<String>::new(),
        "dashboard panels match labels npg does not set"
    );

    let rules = serde_yaml_ng::from_str(&deploy("prometheus/npg-rules.yml")).expect("rules YAML");
    let tests = serde_yaml_ng::from_str(&deploy("prometheus/npg-rules.test.yml")).expect("rules tests YAML");
    let used = rules_names(&rules, &tests);
    assert!(used.len() > 8, "the extractor found too few names: {used:?}");
    assert_eq!(
        missing(&used, &scrape),
        Vec::<String>::new(),
        "alerting rules name metrics npg does not export"
    );
    assert_eq!(
        unknown_labels(&used, &scrape),
        Vec::<String>::new(),
        "alerting rules match labels npg does not set"
    );
}

/// The value of the sample `series` (name and labels as printed) in `scrape`.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The gauges the alerts watch follow npg's state: the expiry of the certificate served, the
/// malware feed's last fetch and its refresh interval. (With TLS on, `/metrics` is served over
/// HTTPS only, so this reads it as Prometheus does.)
#[tokio::test]
async fn the_alerting_gauges_follow_npg() {
    let up = FakeRegistry::start();
    let feed = FakeFeed::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::TestCa::new("npg dashboards test CA");
    let issued = ca.issue(&["npg.test"]);
    let cert = tls::write_file(dir.path(), "cert.pem", &issued.cert_pem);
    let key = tls::write_file(dir.path(), "key.pem", &issued.key_pem);
    let https_port = support::free_port();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let _npg = NpgProcess::start(
        &up.url(),
        &[
            ("TLS_CERT_FILE", cert.to_str().unwrap()),
            ("TLS_KEY_FILE", key.to_str().unwrap()),
            ("HTTPS_PORT", &https_port.to_string()),
            ("MALWARE_FEED_URL", &feed.url()),
            ("ENABLE_SCHEDULED_UPDATES", "true"),
            ("UPDATE_INTERVAL", "1h"),
        ],
    );
    let client = tls::https_client(&ca.cert_pem, "npg.test", support::loopback(https_port));
    let url = format!("https://npg.test:{https_port}/metrics");
    let updated = r#"npg_feed_updated_timestamp_seconds{feed="malware"}"#;
    let started = Instant::now();
    let scrape = loop {
        let scrape = match client.get(&url).send().await {
            Ok(reply) => reply.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if sample(&scrape, updated).is_some_and(|t| t > 0.0) {
            break scrape;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the feed was never fetched:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leaf = tls::parse_leaf(&tls::pem_certs(&issued.cert_pem)[0]);
    assert_eq!(
        sample(&scrape, "npg_certificate_expiry_timestamp_seconds"),
        Some(leaf.not_after as f64),
        "{scrape}"
    );
    assert!(sample(&scrape, updated).unwrap() >= before as f64, "{scrape}");
    assert_eq!(
        sample(&scrape, r#"npg_feed_refresh_interval_seconds{feed="malware"}"#),
        Some(3600.0),
        "{scrape}"
    );
    assert_eq!(sample(&scrape, "npg_acme_last_order_failed"), Some(0.0), "{scrape}");
    assert_eq!(sample(&scrape, "npg_redis_enabled"), Some(0.0), "{scrape}");
}

/// In a cluster one replica looks at the feed per interval: the others' feed age follows its
/// looks (found unchanged), not the last change of the list, or NpgMalwareFeedStale would fire
/// on every replica but the one that fetches.
#[tokio::test]
async fn a_replica_that_does_not_fetch_ages_its_feed_with_the_cluster() {
    let redis = RedisServer::start();
    let (up, feed) = (FakeRegistry::start(), FakeFeed::start());
    feed.set_entries(serde_json::json!([{"package_name": "npg-fixture-b", "version": "1.0.1", "reason": "MALWARE"}]));
    let (redis_url, feed_url) = (redis.url(), feed.url());
    let node = |name: &str, interval: &str| {
        NpgProcess::start(
            &up.url(),
            &[
                ("REDIS_URL", redis_url.as_str()),
                ("ENABLE_REDIS_CACHE", "true"),
                ("INSTANCE_NAME", name),
                ("MALWARE_FEED_URL", feed_url.as_str()),
                ("ENABLE_SCHEDULED_UPDATES", "true"),
                ("UPDATE_INTERVAL", interval),
            ],
        )
    };
    let updated = r#"npg_feed_updated_timestamp_seconds{feed="malware"}"#;
    let age_stamp = |npg: &NpgProcess| {
        let url = format!("{}/metrics", npg.base);
        async move {
            let scrape = String::from_utf8(support::http::get(&url, &[]).await.body).unwrap();
            sample(&scrape, updated).unwrap_or(0.0)
        }
    };
    // `fetcher` looks every 2 s; `other` would only after an hour, the cluster having looked
    let fetcher = node("fetcher", "2s");
    let started = Instant::now();
    while age_stamp(&fetcher).await == 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the feed was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = node("other", "1h");
    let first = loop {
        let at = age_stamp(&other).await;
        if at > 0.0 {
            break at;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the other replica never loaded the feed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // the feed does not change: only the looks move on (the other replica syncs every 10 s)
    let started = Instant::now();
    while age_stamp(&other).await < first + 3.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the other replica's feed still dates from {first} after {} looks of the cluster: {} {}",
            feed.requests(),
            redis.command(&["HMGET", "npg:malware:feed", "checked", "updated", "etag"]),
            String::from_utf8(
                support::http::get(&format!("{}/api/health", other.base), &[])
                    .await
                    .body
            )
            .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        feed.log().iter().filter(|r| r.status == 200).count(),
        1,
        "the feed was downloaded once: {:?}",
        feed.log()
    );
}

/// The extractor on its own: a panel naming a metric that does not exist is reported, and so
/// is a counter without `_total`, a histogram without its suffix, and a matcher on a label the
/// metric does not have; functions, keywords, label lists, matchers and Grafana variables are
/// not names.
#[test]
fn a_panel_with_a_bogus_metric_is_reported() {
    let scrape = "# HELP npg_http_requests HTTP requests.\n# TYPE npg_http_requests counter\n\
        npg_http_requests_total{route=\"packument\",status=\"200\"} 1\n\
        # TYPE npg_http_request_duration_seconds histogram\n# TYPE npg_redis_up gauge\nnpg_redis_up 1\n";
    let dashboard = serde_json::json!({
        "templating": {"list": [{"query": {"query": "label_values(npg_http_requests_total, instance)"}}]},
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "sum by (route, le) (rate(npg_bogus_total{route=~\"a|b\"}[$__rate_interval]))"}]}]},
            {"targets": [
                {"expr": "histogram_quantile(0.95, sum by (le) (rate(npg_http_request_duration_seconds_bucket{instance=~\"$instance\"}[5m])))"},
                {"expr": "sum(rate(npg_http_requests_total{status=~\"5..\"}[${__range}])) / ignoring (x) group_left npg_http_requests"},
                {"expr": "npg_redis_up == 0 and on (instance) up{job=\"npg\"} offset 1h > 1e3"},
                {"expr": "npg_http_request_duration_seconds"},
                {"expr": "npg_http_requests_total {rule=\"malware\", route!=\"}\"} > 0"},
            ]},
        ],
    });
    let used = dashboard_names(&dashboard);
    let want = [
        "npg_bogus_total",
        "npg_http_request_duration_seconds",
        "npg_http_request_duration_seconds_bucket",
        "npg_http_requests",
        "npg_http_requests_total",
        "npg_redis_up",
    ];
    assert_eq!(used.keys().collect::<Vec<_>>(), want);
    assert_eq!(
        missing(&used, scrape),
        [
            "npg_bogus_total",
            "npg_http_request_duration_seconds",
            "npg_http_requests"
        ]
    );
    // matchers on labels the metric does not have: a label that npg never sets is as empty
    // a panel as a metric that does not exist (instance and job are Prometheus's)
    assert_eq!(
        used["npg_http_requests_total"],
        ["route", "rule", "status"].map(String::from).into()
    );
    assert_eq!(
        unknown_labels(&used, scrape),
        ["npg_bogus_total{route}", "npg_http_requests_total{rule}"]
    );
    let quoted = sample_labels("npg_x{a=\"q\\\"},b=\\\"c\",e=\"f\"} 1\n");
    assert_eq!(quoted["npg_x"], ["a", "e"].map(String::from).into());
}
