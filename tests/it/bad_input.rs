//! The bad-input suite: hostile requests on a raw socket and hostile or broken upstream
//! answers, each with the status npg must give. Every case must get exactly that status (a
//! panic in a handler would close the connection with none); afterwards npg still serves and
//! nothing exists outside its storage layout. Run with `--nocapture` for the table.

use std::path::Path;
use std::time::Duration;

use crate::support::http::raw;
use crate::support::npg::NpgProcess;
use crate::support::upstream::{Failure, FakeRegistry};

struct Case {
    what: &'static str,
    request: Vec<u8>,
    expect: u16,
}

fn get(what: &'static str, path: &str, expect: u16) -> Case {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    Case {
        what,
        request: request.into_bytes(),
        expect,
    }
}

fn raw_case(what: &'static str, request: impl Into<Vec<u8>>, expect: u16) -> Case {
    Case {
        what,
        request: request.into(),
        expect,
    }
}

fn hostile_requests() -> Vec<Case> {
    let long_name = "a".repeat(215);
    vec![
        get("traversal, raw", "/npm/../../etc/passwd", 400),
        get("traversal, encoded", "/npm/%2e%2e/%2e%2e/etc/passwd", 400),
        get("traversal, double-encoded", "/npm/%252e%252e/x", 400),
        get("traversal in a tarball name", "/npm/a/-/..%2f..%2fx.tgz", 400),
        get("backslashes", "/npm/a%5c..%5cb", 400),
        get("NUL byte", "/npm/a%00", 400),
        get("not UTF-8", "/npm/%ff", 400),
        get("CRLF in a name", "/npm/a%0d%0aSet-Cookie:%20x=1", 400),
        get("name of 215 characters", &format!("/npm/{long_name}"), 400),
        get("empty scope", "/npm/@/x", 400),
        get("tarball not .tgz", "/npm/npg-fixture-a/-/npg-fixture-a-1.0.0.exe", 400),
        get(
            "tarball name of 256 bytes (no file system takes it)",
            &format!("/npm/npg-fixture-a/-/{}.tgz", "a".repeat(252)),
            400,
        ),
        get("control character in a version", "/npm/npg-fixture-a/%0a", 400),
        get(
            "path beyond any route",
            "/npm/npg-fixture-a/-/x/npg-fixture-a-1.0.0.tgz",
            400,
        ),
        get("guard API traversal", "/api/guard/..%2f..%2fetc", 400),
        get("URI of 9,000 bytes", &format!("/npm/{}", "a".repeat(9000)), 414),
        raw_case(
            "request head of 70 KB",
            format!(
                "GET /npm/npg-fixture-a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "x".repeat(70_000)
            ),
            431,
        ),
        raw_case(
            "200 header lines",
            format!(
                "GET /npm/npg-fixture-a HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ),
            431,
        ),
        raw_case(
            "bad chunked body",
            "PUT /npm/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
            400,
        ),
        raw_case(
            "TRACE (reflects headers)",
            "TRACE /npm/npg-fixture-a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
        raw_case(
            "WebDAV method",
            "PROPFIND /npm/npg-fixture-a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
        raw_case(
            "absolute-form target to another host (no relay)",
            "GET http://evil.invalid/npm/npg-fixture-a HTTP/1.1\r\nHost: evil.invalid\r\nConnection: close\r\n\r\n",
            200,
        ),
        raw_case(
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
            400,
        ),
    ]
}

/// Documents an honest registry never sends, served for their own package names.
fn hostile_documents(up: &FakeRegistry) -> Vec<Case> {
    let deep = format!(
        "{{\"name\":\"deep\",\"versions\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let docs: [(&'static str, &str, String, u16); 6] = [
        ("upstream: truncated JSON", "hostile-truncated", r#"{"name":"hostile-truncated","versions":{"#.into(), 502),
        ("upstream: JSON array", "hostile-array", "[1,2,3]".into(), 502),
        ("upstream: 100,000 nested arrays", "hostile-deep", deep, 502),
        ("upstream: versions is a string", "hostile-versions", r#"{"name":"hostile-versions","versions":"x"}"#.into(), 502),
        (
            "upstream: tarball on file:, traversal in a version",
            "hostile-file",
            r#"{"name":"hostile-file","dist-tags":{"latest":"../../x"},"versions":{"../../x":{"version":"../../x","dist":{"tarball":"file:///etc/passwd"}}}}"#.into(),
            200,
        ),
        ("upstream: not JSON", "hostile-binary", "\u{0}\u{1}\u{2}".into(), 502),
    ];
    docs.into_iter()
        .map(|(what, name, body, expect)| {
            up.set_raw_packument(name, body);
            get(what, &format!("/npm/{name}"), expect)
        })
        .collect()
}

fn run(port: u16, cases: &[Case], results: &mut Vec<(String, u16, u16)>) {
    for case in cases {
        let (status, text) = raw(port, &case.request, Duration::from_secs(15));
        println!("| {} | {} | {} |", case.what, case.expect, status);
        let answered_by_npg = status != 0 && text.contains("content-type: application/json");
        if answered_by_npg {
            assert!(
                text.contains("x-content-type-options: nosniff"),
                "{}: {text}",
                case.what
            );
        }
        results.push((case.what.to_string(), case.expect, status));
    }
}

/// Everything under the storage dir is npg's layout: `.tmp`, `.malware-list`, or
/// `<2 chars>/<name>/<file>.tgz` (scoped: one level more).
fn assert_layout(storage: &Path) {
    for entry in std::fs::read_dir(storage).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        if name == ".tmp" || name == ".malware-list" {
            continue;
        }
        assert!(name.chars().count() <= 2, "unexpected entry in STORAGE_DIR: {name}");
        for file in walk(&entry.path()) {
            let rel = file.strip_prefix(storage).unwrap().display().to_string();
            assert!(rel.ends_with(".tgz") && !rel.contains(".."), "unexpected file {rel}");
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[tokio::test]
async fn every_hostile_input_gets_its_status() {
    let outer = tempfile::tempdir().unwrap();
    let storage = outer.path().join("storage");
    let up = FakeRegistry::start();
    let npg = NpgProcess::start_with_storage(&up.url(), &[("UPSTREAM_TIMEOUT", "2s")], storage.clone(), None);
    println!("| case | expected | got |\n|---|--:|--:|");
    let mut results = Vec::new();
    run(npg.port, &hostile_requests(), &mut results);
    run(npg.port, &hostile_documents(&up), &mut results);
    // Follow the rendered URL of the hostile-file document: it must not reach the file system.
    let (_, doc) = raw(
        npg.port,
        b"GET /npm/hostile-file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let tarball = doc.split("\"tarball\":\"").nth(1).unwrap().split('"').next().unwrap();
    let path = tarball.strip_prefix(&npg.base).unwrap().to_string();
    run(
        npg.port,
        &[get("tarball of file: / traversal version", &path, 400)],
        &mut results,
    );
    for (what, failure, expect) in [
        ("upstream: 500", Failure::Status(500), 502),
        ("upstream: 404", Failure::Status(404), 404),
        ("upstream: garbage JSON", Failure::GarbageJson, 502),
        ("upstream: connection reset", Failure::ResetConnection, 502),
        ("upstream: never answers (UPSTREAM_TIMEOUT=2s)", Failure::Hang, 504),
    ] {
        up.set_failure(failure);
        let name = what.replace([':', ' ', '(', ')', '=', ','], "").to_ascii_lowercase();
        up.add_package(&name, &["1.0.0"]);
        run(npg.port, &[get(what, &format!("/npm/{name}"), expect)], &mut results);
    }
    up.set_failure(Failure::None);

    // Two framings (RFC 9112 §6.1): the body is read by Transfer-Encoding alone and the
    // connection closed after the answer, so a request hidden in the body is never served.
    let (status, text) = raw(
        npg.port,
        b"PUT /npm/x HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /npm/npg-fixture-a HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    println!(
        "| Content-Length with Transfer-Encoding, a request smuggled behind | one answer | {status}, {} answers |",
        text.matches("HTTP/1.1 ").count()
    );
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "a smuggled request was served: {text}"
    );
    let wrong: Vec<_> = results.iter().filter(|(_, expect, got)| expect != got).collect();
    assert!(wrong.is_empty(), "cases with another status: {wrong:?}");
    let (status, _) = raw(
        npg.port,
        b"GET /npm/npg-fixture-a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status, 200, "npg still serves");
    assert_eq!(
        std::fs::read_dir(outer.path()).unwrap().count(),
        1,
        "only STORAGE_DIR in its parent"
    );
    assert_layout(&storage);
}
