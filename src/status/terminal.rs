//! `npg status`: a running npg's `/api/status` for the terminal: the whole cluster's replicas
//! and what the answering replica sees, in colour at a terminal, plain when piped, or the
//! report itself with `--json`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Parser;

use super::{Report, Status, human_age};

#[derive(Parser, Debug)]
#[command(
    name = "npg status",
    about = "Show a running npg cluster's state: its replicas, caches, upstream, guard, certificates"
)]
struct StatusArgs {
    /// npg's address (any replica of the cluster).
    #[arg(default_value = "http://127.0.0.1:3000", env = "NPG_URL")]
    url: url::Url,

    /// Token with the admin permission, when access control is on.
    #[arg(long, env = "NPM_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Extra root certificate (PEM) to trust for HTTPS (a private or test CA).
    #[arg(long)]
    ca_file: Option<PathBuf>,

    /// Print the report as JSON (for scripts).
    #[arg(long)]
    json: bool,

    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Exit 0 when every replica is ok, 1 when one is not (or npg did not answer), 2 on bad usage.
pub(crate) fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match StatusArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (report, raw) = match runtime.block_on(fetch(&args)) {
        Ok(got) => got,
        Err(e) => {
            eprintln!("npg status: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{raw}");
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", print(&report, colour));
    }
    let healthy = report.replicas.iter().all(|r| !r.gone && r.status == Status::Ok);
    if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn fetch(args: &StatusArgs) -> anyhow::Result<(Report, String)> {
    let url = args.url.join("/api/status")?;
    let builder = crate::upstream::client::builder(Some("status")).timeout(Duration::from_secs(args.timeout));
    let client = crate::upstream::client::trusting(builder, args.ca_file.as_deref())?.build()?;
    let mut request = client.get(url.clone());
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let resp = request
        .send()
        .await
        .map_err(|e| anyhow!("{url}: {}", crate::upstream::error_chain(&e)))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| anyhow!("{url}: {e}"))?;
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
            .unwrap_or_default();
        let hint = if status.as_u16() == 401 {
            " (give an admin token: --token or NPM_TOKEN)"
        } else {
            ""
        };
        return Err(anyhow!("{url}: HTTP {status} {reason}{hint}"));
    }
    let report = serde_json::from_str(&body).map_err(|e| anyhow!("{url}: not an npg status report ({e})"))?;
    Ok((report, body))
}

/// Paints `text` when `on`: green for what is well, red for what is not, yellow in between.
struct Paint(bool);

impl Paint {
    fn word(&self, word: &str) -> String {
        let code = match word {
            "ok" | "closed" => "32",
            "degraded" | "error" | "open" | "half_open" => "31",
            "draining" | "gone" | "loading" => "33",
            _ => return word.to_string(),
        };
        self.code(code, word)
    }

    fn code(&self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn bold(&self, text: &str) -> String {
        self.code("1", text)
    }
}

/// The report as lines for a terminal.
pub(crate) fn print(r: &Report, colour: bool) -> String {
    let p = Paint(colour);
    let now = r.generated_ms;
    let mut out = String::new();
    let up = r.replicas.iter().filter(|x| !x.gone).count();
    let _ = writeln!(
        out,
        "{} {} replicas up (Redis {}); seen from {} {}",
        p.bold("npg cluster:"),
        up,
        r.redis,
        r.instance,
        r.version
    );
    let width = r
        .replicas
        .iter()
        .map(|x| x.instance.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(
        out,
        "  {:width$}  {:9}  {:>8}  {:>7}  {:>9}  last seen",
        "instance", "health", "uptime", "req/s", "requests"
    );
    for x in &r.replicas {
        let state = if x.gone { "gone" } else { x.status.as_str() };
        let padded = format!("{state:9}");
        let _ = writeln!(
            out,
            "  {:width$}  {}  {:>8}  {:>7.1}  {:>9}  {} ago",
            x.instance,
            p.word(state).replace(state, &padded),
            human_age(x.uptime_seconds(now)),
            x.requests_per_second,
            x.requests,
            human_age(now.saturating_sub(x.seen_ms) / 1000),
        );
        for problem in &x.problems {
            let _ = writeln!(out, "      {problem}");
        }
    }
    let t = &r.traffic;
    let tiers: Vec<String> = t
        .tiers
        .iter()
        .map(|x| match x.ratio() {
            Some(ratio) => format!("{} {:.1} %", x.tier, ratio * 100.0),
            None => format!("{} -", x.tier),
        })
        .collect();
    let _ = writeln!(
        out,
        "{} {} requests since start; hit ratio: {}",
        p.bold("traffic:"),
        t.requests,
        if tiers.is_empty() {
            "-".to_string()
        } else {
            tiers.join(", ")
        }
    );
    let u = &r.upstream;
    let mean = u.mean_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
    let _ = writeln!(
        out,
        "{} breaker {}, {} requests, {} errors, mean {mean}",
        p.bold("upstream:"),
        p.word(&u.breaker),
        u.requests,
        u.errors
    );
    if let Some(e) = &u.last_error {
        let _ = writeln!(out, "      last error: {e}");
    }
    let g = &r.guard;
    let blocks: Vec<String> = g.blocks.iter().map(|(rule, n)| format!("{rule} {n}")).collect();
    let _ = writeln!(
        out,
        "{} policy v{}, {} blocklist rules, {} malware entries, blocks: {}",
        p.bold("guard:"),
        g.policy_version,
        g.blocklist_rules,
        g.malware_entries + g.osv_entries,
        if blocks.is_empty() {
            "none".to_string()
        } else {
            blocks.join(", ")
        }
    );
    for f in &g.feeds {
        let age = f.updated_ms.map_or_else(
            || "never updated".to_string(),
            |at| format!("{} old", human_age(now.saturating_sub(at) / 1000)),
        );
        let _ = writeln!(
            out,
            "      feed {}: {}, {} entries, {age}",
            f.name,
            p.word(&f.state),
            f.entries
        );
    }
    if let Some(b) = &g.last_block {
        let version = b.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "      last block: {}{version} ({}, {} ago): {}",
            b.package,
            b.rule,
            human_age(now.saturating_sub(b.at_ms) / 1000),
            b.reason
        );
    }
    let _ = writeln!(out, "{} {}", p.bold("tls:"), r.tls.mode.as_str());
    for c in &r.tls.certificates {
        let _ = writeln!(
            out,
            "      {}: not after {}, renewal {}",
            c.domain, c.not_after, c.next_renewal
        );
    }
    if let Some(e) = &r.tls.last_error {
        let _ = writeln!(out, "      last ACME error: {e}");
    }
    let c = &r.changes;
    let follower = match (c.enabled, c.leader) {
        (false, _) => "off".to_string(),
        (true, true) => format!(
            "followed here, sequence {}",
            c.seq.map_or_else(|| "-".to_string(), |s| s.to_string())
        ),
        (true, false) => "followed by another replica".to_string(),
    };
    let _ = writeln!(out, "{} {follower}", p.bold("changes:"));
    for problem in &r.problems {
        let _ = writeln!(out, "{} {problem}", p.word("error"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Replica, Tier, Traffic};

    fn report() -> Report {
        let replica = |name: &str, status, gone| Replica {
            instance: name.into(),
            version: "1.2.3".into(),
            started_ms: 0,
            seen_ms: 3_600_000,
            status,
            problems: vec![],
            requests_per_second: 2.25,
            requests: 42,
            gone,
        };
        Report {
            generated_ms: 3_610_000,
            instance: "npg1".into(),
            version: "1.2.3".into(),
            uptime_seconds: 3610,
            status: Status::Ok,
            problems: vec![],
            redis: "connected".into(),
            replicas: vec![replica("npg1", Status::Ok, false), replica("npg2", Status::Ok, true)],
            traffic: Traffic {
                requests: 42,
                tiers: vec![Tier {
                    tier: "l1".into(),
                    hits: 3,
                    misses: 1,
                }],
                ..Traffic::default()
            },
            upstream: crate::status::Upstream {
                breaker: "closed".into(),
                ..Default::default()
            },
            guard: Default::default(),
            tls: crate::tls::TlsStatus {
                mode: crate::tls::TlsMode::Off,
                ..Default::default()
            },
            changes: Default::default(),
        }
    }

    #[test]
    fn plain_when_piped_coloured_at_a_terminal() {
        let plain = print(&report(), false);
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(plain.contains("1 replicas up (Redis connected)"), "{plain}");
        assert!(plain.contains("npg2      gone"), "{plain}");
        assert!(plain.contains("1h 0m"), "uptime: {plain}");
        assert!(plain.contains("hit ratio: l1 75.0 %"), "{plain}");
        let coloured = print(&report(), true);
        assert!(coloured.contains("\x1b[33mgone     \x1b[0m"), "{coloured}");
        assert!(coloured.contains("\x1b[32mok       \x1b[0m"), "{coloured}");
    }
}
