//! The status page: a `Report` as HTML, drawn on the server (maud escapes every value: package
//! names, block reasons and replica names come from feeds, upstream and Redis). No script: it
//! reloads itself every `REFRESH_SECONDS` with a meta refresh, and the charts are inline SVG.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{Report, human_age};

const REFRESH_SECONDS: u32 = 15;

/// The page's rules, inline (no request for a style sheet; the CSP allows nothing else).
const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header h1{margin:0;font-size:20px}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px;padding:16px 24px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 16px}
section.wide{grid-column:1/-1}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px 3px 0;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#5a6272}
td.n{font-variant-numeric:tabular-nums}
.ok{color:#137333}.degraded,.error,.open,.half_open{color:#b3261e}.draining,.loading,.gone{color:#8a5a00}
.badge{padding:1px 8px;border-radius:10px;background:#fff;font-weight:600}
.problems{background:#fdecea;border-color:#f3b7b2}
.muted{color:#6b7280}
svg{display:block;margin:4px 0 10px}
svg rect{fill:#f1f4f9}
svg polyline{fill:none;stroke:#2563eb;stroke-width:1.5}
code{font-size:13px}
";

/// The whole page for `report`.
pub(crate) fn render(report: &Report) -> String {
    let now = report.generated_ms;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                title { "npg status: " (report.instance) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "npg" }
                    span { "replica " strong { (report.instance) } }
                    span { "version " (report.version) }
                    span { "up " (human_age(report.uptime_seconds)) }
                    span.badge.(report.status.as_str()) id="status" { (report.status.as_str()) }
                    span.muted { "at " (time(now)) ", every " (REFRESH_SECONDS) " s" }
                }
                main {
                    @if !report.problems.is_empty() {
                        section.wide.problems id="problems" {
                            h2 { "Problems" }
                            ul { @for p in &report.problems { li { (p) } } }
                        }
                    }
                    (replicas(report))
                    (traffic(report))
                    (upstream(report))
                    (guard(report))
                    (certificates(report))
                    (changes(report))
                }
            }
        }
    }
    .into_string()
}

fn replicas(report: &Report) -> Markup {
    let now = report.generated_ms;
    html! {
        section.wide id="replicas" {
            h2 { "Replicas (" (report.replicas.iter().filter(|r| !r.gone).count()) " up, Redis " (report.redis) ")" }
            table {
                tr { th { "instance" } th { "version" } th { "health" } th { "uptime" } th { "req/s (1 min)" } th { "requests" } th { "last seen" } }
                @for r in &report.replicas {
                    @let state = if r.gone { "gone" } else { r.status.as_str() };
                    tr {
                        td { (r.instance) @if r.instance == report.instance { span.muted { " (this page)" } } }
                        td { (r.version) }
                        td.(state) title=(r.problems.join("; ")) { (state) }
                        td.n { (human_age(r.uptime_seconds(now))) }
                        td.n { (format!("{:.1}", r.requests_per_second)) }
                        td.n { (r.requests) }
                        td.n { (human_age(now.saturating_sub(r.seen_ms) / 1000)) " ago" }
                    }
                }
            }
        }
    }
}

fn traffic(report: &Report) -> Markup {
    let t = &report.traffic;
    let rate: Vec<Option<f64>> = t.series.requests_per_second.iter().copied().map(Some).collect();
    html! {
        section id="traffic" {
            h2 { "Traffic and caches (this replica)" }
            p { (t.requests) " requests since start; tarballs on " (t.store) }
            p.muted { "requests per second, last hour (" (t.series.step_seconds) " s steps)" }
            (chart(&rate, None, "requests per second"))
            table {
                tr { th { "tier" } th { "hits" } th { "misses" } th { "hit ratio" } }
                @for tier in &t.tiers {
                    tr {
                        td { (tier.tier) }
                        td.n { (tier.hits) }
                        td.n { (tier.misses) }
                        td.n { (percent(tier.ratio())) }
                    }
                }
            }
            @for s in &t.series.hit_ratio {
                p.muted { "hit ratio " (s.tier) ", last hour" }
                (chart(&s.points, Some(1.0), &format!("hit ratio {}", s.tier)))
            }
        }
    }
}

fn upstream(report: &Report) -> Markup {
    let u = &report.upstream;
    html! {
        section id="upstream" {
            h2 { "Upstream" }
            table {
                tr { th { "breaker" } td.(u.breaker) { (u.breaker) } }
                tr { th { "requests" } td.n { (u.requests) } }
                tr { th { "errors" } td.n { (u.errors) } }
                tr { th { "mean latency" } td.n { (millis(u.mean_ms)) } }
                @if let Some(e) = &u.last_error { tr { th { "last error" } td.error { (e) } } }
            }
            p.muted { "mean latency (ms), last hour" }
            (chart(&report.traffic.series.upstream_ms, None, "upstream latency"))
        }
    }
}

fn guard(report: &Report) -> Markup {
    let g = &report.guard;
    let now = report.generated_ms;
    html! {
        section id="guard" {
            h2 { "Guard" }
            table {
                tr { th { "policy version" } td.n { (g.policy_version) } }
                tr { th { "blocklist rules" } td.n { (g.blocklist_rules) @if let Some(e) = &g.blocklist_error { span.error { " (" (e) ")" } } } }
                tr { th { "malware entries" } td.n { (g.malware_entries) " (OSV " (g.osv_entries) ")" } }
                tr { th { "release age" } td { (g.min_release_age.as_deref().unwrap_or("off")) } }
                tr { th { "install scripts" } td { (g.install_scripts) } }
                tr { th { "typosquats" } td { (g.typosquat) } }
                tr { th { "signatures" } td { (g.signatures) } }
            }
            h2 { "Feeds" }
            table {
                tr { th { "feed" } th { "state" } th { "entries" } th { "age" } }
                @for f in &g.feeds {
                    tr {
                        td { (f.name) }
                        td.(f.state) title=(f.last_error.as_deref().unwrap_or("")) { (f.state) }
                        td.n { (f.entries) }
                        td.n { @match f.updated_ms { Some(at) => { (human_age(now.saturating_sub(at) / 1000)) }, None => { "never" } } }
                    }
                }
            }
            h2 { "Blocks (this replica)" }
            @if g.blocks.is_empty() { p.muted { "none since start" } } @else {
                table {
                    tr { th { "rule" } th { "blocks" } }
                    @for (rule, n) in &g.blocks { tr { td { (rule) } td.n { (n) } } }
                }
            }
            @if let Some(b) = &g.last_block {
                p id="last-block" {
                    "last: " code { (b.package) @if let Some(v) = &b.version { "@" (v) } }
                    " (" (b.rule) ", " (human_age(now.saturating_sub(b.at_ms) / 1000)) " ago): " (b.reason)
                }
            }
        }
    }
}

fn certificates(report: &Report) -> Markup {
    let t = &report.tls;
    html! {
        section id="certificates" {
            h2 { "Certificates (TLS " (t.mode.as_str()) ")" }
            @if t.certificates.is_empty() { p.muted { "none" } } @else {
                table {
                    tr { th { "domain" } th { "not after" } th { "next renewal" } }
                    @for c in &t.certificates { tr { td { (c.domain) } td { (c.not_after) } td { (c.next_renewal) } } }
                }
            }
            @if let Some(e) = &t.last_error { p.error { "last ACME error: " (e) } }
        }
    }
}

fn changes(report: &Report) -> Markup {
    let c = &report.changes;
    html! {
        section id="changes" {
            h2 { "Changes follower" }
            table {
                tr { th { "enabled" } td { (c.enabled) } }
                @if c.enabled {
                    tr { th { "leader" } td { @if c.leader { "this replica" } @else { "another replica" } } }
                }
                tr { th { "sequence" } td.n { @match c.seq { Some(s) => { (s) }, None => { "-" } } } }
                @if let Some(e) = &c.last_error { tr { th { "last error" } td.error { (e) } } }
            }
        }
    }
}

const W: f64 = 360.0;
const H: f64 = 48.0;

/// A line of `points` (gaps where `None`) scaled to `max` or to its highest point.
fn chart(points: &[Option<f64>], max: Option<f64>, label: &str) -> Markup {
    let top = max.unwrap_or_else(|| points.iter().flatten().copied().fold(0.0, f64::max));
    if points.iter().all(Option::is_none) || top <= 0.0 {
        return html! { p.muted { "no data yet" } };
    }
    // One step so far: drawn across the box.
    let single;
    let points = match points {
        [only] => {
            single = [*only, *only];
            &single[..]
        }
        _ => points,
    };
    let step = W / (points.len() - 1) as f64;
    let mut lines = vec![String::new()];
    for (i, p) in points.iter().enumerate() {
        match p {
            Some(v) => {
                let y = H - (v / top).clamp(0.0, 1.0) * H;
                let line = lines.last_mut().expect("one line at least");
                line.push_str(&format!("{:.1},{:.1} ", i as f64 * step, y));
            }
            None if !lines.last().is_some_and(String::is_empty) => lines.push(String::new()),
            None => {}
        }
    }
    html! {
        svg width=(W) height=(H + 2.0) viewBox=(format!("0 -1 {W} {}", H + 2.0)) role="img" aria-label=(label) {
            title { (label) ", up to " (format!("{top:.2}")) }
            rect y="-1" width=(W) height=(H + 2.0) {}
            @for l in lines.iter().filter(|l| !l.is_empty()) { polyline points=(l) {} }
        }
    }
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_string(), |r| format!("{:.1} %", r * 100.0))
}

fn millis(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"))
}

fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::LastBlock;
    use crate::status::Status;
    use crate::status::{Guard, Replica, Traffic};

    fn report() -> Report {
        Report {
            generated_ms: 1_000_000,
            instance: "npg1".into(),
            version: "1.0.0".into(),
            uptime_seconds: 60,
            status: Status::Ok,
            problems: vec![],
            redis: "connected".into(),
            replicas: vec![Replica {
                instance: "<b>npg2</b>".into(),
                version: "1.0.0".into(),
                started_ms: 0,
                seen_ms: 900_000,
                status: Status::Degraded,
                problems: vec![],
                requests_per_second: 1.5,
                requests: 10,
                gone: true,
            }],
            traffic: Traffic::default(),
            upstream: Default::default(),
            guard: Guard {
                last_block: Some(LastBlock {
                    package: "evil".into(),
                    version: Some("1.0.0".into()),
                    rule: "malware".into(),
                    reason: "<script>alert(1)</script>".into(),
                    at_ms: 990_000,
                    private: false,
                }),
                ..Guard::default()
            },
            tls: Default::default(),
            changes: Default::default(),
        }
    }

    #[test]
    fn what_comes_from_outside_is_escaped() {
        let page = render(&report());
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
        assert!(page.contains("&lt;b&gt;npg2&lt;/b&gt;"), "{page}");
        assert!(page.contains(r#"class="gone""#), "a replica unheard of shows as gone");
    }

    #[test]
    fn charts_break_at_gaps_and_keep_to_their_box() {
        let svg = chart(&[Some(1.0), Some(3.0), None, Some(2.0), Some(9.0)], Some(4.0), "x").into_string();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("0.0,36.0 90.0,12.0 "), "{svg}");
        assert!(svg.contains("360.0,0.0 "), "clamped to the top: {svg}");
        assert_eq!(
            chart(&[Some(0.0), Some(0.0)], None, "x").into_string(),
            r#"<p class="muted">no data yet</p>"#
        );
    }

    #[test]
    fn every_status_has_a_colour() {
        for s in [Status::Ok, Status::Degraded, Status::Draining] {
            assert!(STYLE.contains(&format!(".{}", s.as_str())), "{s:?}");
        }
    }
}
