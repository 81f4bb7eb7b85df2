//! The status page (`GET /` and `/status`) and its report as JSON (`/api/status`, what
//! `npg status` reads), built from this replica's state and the replicas announced in Redis;
//! and this replica's own announcement, every `history::STEP`.
//!
//! Who sees it: with access control on, the admin token only (the middleware asks for it; a
//! browser is asked for it as a password, `auth`). With it off, anyone who reaches npg, as
//! `/api/health`'s details: then the name of a package fetched with credentials is not shown.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::health::{keys_summary, state};
use super::observe::RouteLabel;
use crate::app::App;
use crate::clock::now_ms;
use crate::guard::block::human_duration;
use crate::guard::scripts::ScriptPolicy;
use crate::metrics::TIERS;
use crate::status::{FORGET_AFTER_MS, Feed, GONE_AFTER_MS, Guard, Replica, Report, Tier, Traffic, Upstream};
use crate::tls::{TlsMode, TlsStatus};

/// Nothing but the inline style: no script, no frame, no request elsewhere.
const PAGE_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub(crate) async fn page(State(app): State<App>) -> Response {
    let html = crate::status::page::render(&report(&app).await);
    let mut resp = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        html,
    )
        .into_response();
    resp.extensions_mut().insert(RouteLabel("status"));
    resp
}

pub(crate) async fn json(State(app): State<App>) -> Response {
    let mut resp = ([(header::CACHE_CONTROL, "no-store")], Json(report(&app).await)).into_response();
    resp.extensions_mut().insert(RouteLabel("status"));
    resp
}

/// A serde enum's word (`closed`, `ok`, `warn`...), as the JSON of `/api/health` shows it.
fn word(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Everything the page shows, as this replica sees it now.
async fn report(app: &App) -> Report {
    let now = now_ms();
    let (status, problems) = state(app);
    let totals = app.metrics.totals();
    let me = this_replica(app, now, &totals, status, &problems);
    let breaker = app.upstream.breaker().status();
    let policy = app.guard.policy();
    let feeds = [("malware", app.guard.feed_status()), ("osv", app.guard.osv_status())]
        .into_iter()
        .map(|(name, f)| Feed {
            name: name.to_string(),
            state: word(f.state),
            entries: f.entries,
            updated_ms: f.updated_at_ms,
            last_error: f.last_error,
        })
        .collect();
    let tls = match &app.tls {
        None => TlsStatus {
            mode: TlsMode::Off,
            ..TlsStatus::default()
        },
        Some(tls) => {
            let mut s = tls.status();
            // npg renews what ACME gave it, never TLS_CERT_FILE's certificate.
            if s.mode != TlsMode::Acme {
                s.certificates.iter_mut().for_each(|c| c.next_renewal = "-".to_string());
            }
            s
        }
    };
    let mut report = Report {
        generated_ms: now,
        instance: app.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: app.started.elapsed().as_secs(),
        status,
        problems,
        redis: app.redis.state().as_str().to_string(),
        replicas: replicas(app, now, me).await,
        traffic: Traffic {
            requests: totals.requests,
            store: app.tarballs.store().kind().to_string(),
            tiers: TIERS
                .iter()
                .zip(totals.cache)
                .filter(|(_, [hits, misses])| hits + misses > 0)
                .map(|(tier, [hits, misses])| Tier {
                    tier: tier.to_string(),
                    hits,
                    misses,
                })
                .collect(),
            series: app.history.series(now, &totals),
        },
        upstream: Upstream {
            breaker: word(breaker.state),
            last_error: breaker.last_error,
            requests: totals.upstream_requests,
            errors: totals.upstream_errors,
            mean_ms: crate::status::history::ratio((totals.upstream_seconds * 1000.0) as u64, totals.upstream_requests)
                .map(|ms| ms.round()),
        },
        guard: Guard {
            policy_version: policy.version,
            blocklist_rules: policy.blocklist.len(),
            blocklist_error: app.guard.blocklist_status().error,
            malware_entries: policy.malware.len(),
            osv_entries: policy.osv.len(),
            min_release_age: policy.age.as_ref().map(|g| human_duration(g.min_age())),
            install_scripts: word(policy.scripts.as_ref().map_or(ScriptPolicy::Off, |g| g.policy())),
            typosquat: policy.typosquat.as_ref().map_or_else(
                || "off".to_string(),
                |t| format!("{} ({} names)", t.action.as_str(), t.list.len()),
            ),
            signatures: format!("{} ({})", word(policy.signatures.mode), keys_summary(app, &policy)),
            feeds,
            blocks: totals.blocks.into_iter().collect::<BTreeMap<_, _>>(),
            last_block: app.guard.last_block(),
        },
        tls,
        changes: app.changes.snapshot(),
    };
    if app.auth.is_none() {
        report.hide_private_names();
    }
    report
}

fn this_replica(
    app: &App,
    now: u64,
    totals: &crate::metrics::Totals,
    status: crate::status::Status,
    problems: &[String],
) -> Replica {
    Replica {
        instance: app.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: now.saturating_sub(app.started.elapsed().as_millis() as u64),
        seen_ms: now,
        status,
        problems: problems.to_vec(),
        requests_per_second: app.history.recent_rate(now, totals),
        requests: totals.requests,
        gone: false,
    }
}

/// The replicas announced in Redis, this one as it is now, by name; the ones unheard of for a
/// day (or unreadable) forgotten.
async fn replicas(app: &App, now: u64, me: Replica) -> Vec<Replica> {
    let announced = app.redis.announced().await.unwrap_or_default();
    let mut replicas = vec![];
    for (instance, said) in announced {
        if instance == me.instance {
            continue;
        }
        match serde_json::from_str::<Replica>(&said) {
            Ok(mut r) if now.saturating_sub(r.seen_ms) < FORGET_AFTER_MS => {
                r.gone = now.saturating_sub(r.seen_ms) > GONE_AFTER_MS;
                replicas.push(r);
            }
            _ => {
                let _ = app.redis.forget(&instance).await;
            }
        }
    }
    replicas.push(me);
    replicas.sort_by(|a, b| a.instance.cmp(&b.instance));
    replicas
}

/// Tells the cluster this replica is here, every `history::STEP` (the job `cli` starts).
pub(crate) async fn announce(app: App) {
    let mut tick = tokio::time::interval(crate::status::history::STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        let (status, problems) = state(&app);
        let me = this_replica(&app, now, &app.metrics.totals(), status, &problems);
        if let Ok(said) = serde_json::to_string(&me) {
            // Failures are counted by the connection; the next tick tries again.
            let _ = app.redis.announce(&me.instance, &said).await;
        }
    }
}
