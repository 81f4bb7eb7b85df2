//! `/api/health`, `/-/ping` and `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::{Caller, allowed};
use super::observe::RouteLabel;
use crate::app::App;
use crate::auth::Permission;
use crate::cluster::redis::RedisState;
use crate::guard::Policy;
use crate::guard::block::human_duration;
use crate::guard::scripts::ScriptPolicy;
use crate::guard::signatures::SignatureMode;
use crate::status::Status;
use crate::tls::TlsMode;
use crate::upstream::breaker::State as Breaker;

/// The part of `/api/health` anyone may read.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) status: Status,
}

/// The status for anyone; the details only for admins when access control is on.
pub(crate) async fn health(State(app): State<App>, caller: Option<Extension<Caller>>) -> Response {
    let (status, problems) = state(&app);
    let draining = status == Status::Draining;
    let body = if allowed(&app, caller.as_deref(), Permission::Admin) {
        details(&app, status, &problems)
    } else {
        serde_json::json!(Summary { status })
    };
    // A replica shutting down answers 503 so balancers stop sending it new work first.
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        if let Some(tls) = &app.tls {
            tls.mark_health_checked();
        }
        StatusCode::OK
    };
    let mut resp = (code, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
    resp.extensions_mut().insert(RouteLabel("health"));
    resp
}

/// This replica's health, and what makes it degraded.
pub(crate) fn state(app: &App) -> (Status, Vec<String>) {
    let draining = app.draining.load(std::sync::atomic::Ordering::Relaxed);
    let problems = problems(app);
    let status = match (draining, problems.is_empty()) {
        (true, _) => Status::Draining,
        (false, false) => Status::Degraded,
        (false, true) => Status::Ok,
    };
    (status, problems)
}

/// What makes this replica `degraded`: it still serves, but not as it should.
fn problems(app: &App) -> Vec<String> {
    let mut problems = Vec::new();
    if app.redis.state() == RedisState::Disconnected {
        problems.push("redis is not answering".to_string());
    }
    let breaker = app.upstream.breaker().status();
    if breaker.state != Breaker::Closed {
        let why = breaker.last_error.as_deref().unwrap_or("failing");
        problems.push(format!("upstream is down ({why}): stale copies served, misses refused"));
    }
    if app.tarballs.store().bucket().is_some_and(|b| !b.is_up()) {
        problems.push(
            "the tarball bucket is down: misses are served from upstream and not shared with the other replicas"
                .to_string(),
        );
    }
    if let Some(error) = app.guard.blocklist_status().error {
        problems.push(format!("blocklist: {error} (the last good rules apply)"));
    }
    let signatures = app.guard.policy().signatures.clone();
    if matches!(
        signatures.mode,
        SignatureMode::HideInvalid | SignatureMode::HideUnsigned
    ) && signatures.keys.is_empty()
    {
        problems.push("registry signatures: no keys, nothing is verified nor hidden by SIGNATURE_POLICY".into());
    }
    problems
}

fn details(app: &App, status: Status, problems: &[String]) -> serde_json::Value {
    let redis = app.redis.state();
    let policy = app.guard.policy();
    serde_json::json!({
        "status": status,
        "problems": problems,
        "upstream": { "breaker": app.upstream.breaker().status() },
        // `redis` stays the state string it always was (scripts read it); `redis_master`: the
        // node in use, with Sentinel the master last found (it moves with a failover), and the
        // replicas it reported at the last check.
        "redis": redis.as_str(),
        "redis_master": {
            "address": app.redis.master(),
            "replicas": app.redis.replicas(),
        },
        "tarball_store": tarball_store(app),
        "version": env!("CARGO_PKG_VERSION"),
        "instance": app.instance,
        "uptime_seconds": app.started.elapsed().as_secs(),
        "guard": {
            "policy_version": policy.version,
            "blocklist_rules": policy.blocklist.len(),
            "malware_entries": policy.malware.len(),
            "min_release_age": policy.age.as_ref().map(|g| human_duration(g.min_age())),
            "install_script_policy": policy.scripts.as_ref().map_or(ScriptPolicy::Off, |g| g.policy()),
            "feed": app.guard.feed_status(),
            "osv_entries": policy.osv.len(),
            "osv": app.guard.osv_status(),
            "blocklist": app.guard.blocklist_status(),
            "typosquat": policy.typosquat.as_ref().map_or_else(
                || serde_json::json!({"policy": "off"}),
                |t| serde_json::json!({"policy": t.action, "names": t.list.len(), "list": t.list.source()}),
            ),
            "signatures": signatures(app, &policy),
        },
        "changes": app.changes.snapshot(),
        "tls": app.tls.as_ref().map_or_else(|| serde_json::json!({"mode": TlsMode::Off}), |t| serde_json::json!(t.status())),
    })
}

/// TARBALL_STORE and, for a bucket, whether it answers.
fn tarball_store(app: &App) -> serde_json::Value {
    let store = app.tarballs.store();
    match store.bucket() {
        None => serde_json::json!({"kind": store.kind()}),
        Some(b) => serde_json::json!({"kind": store.kind(), "bucket": if b.is_up() { "up" } else { "down" }}),
    }
}

/// SIGNATURE_POLICY and the keys in force: how many, from where, how old, the last error.
fn signatures(app: &App, policy: &Policy) -> serde_json::Value {
    let status = app.guard.keys_status();
    let age = status
        .fetched_at_ms
        .map(|at| crate::clock::now_ms().saturating_sub(at) / 1000);
    serde_json::json!({
        "policy": policy.signatures.mode,
        "keys": status,
        "keys_age_seconds": age,
        "summary": keys_summary(app, policy),
    })
}

/// The registry keys in force, in words.
pub(crate) fn keys_summary(app: &App, policy: &Policy) -> String {
    match (policy.signatures.keys.len(), app.guard.keys_status().none_published) {
        (0, true) => "no keys (the registry publishes none)".to_string(),
        (0, false) => "no keys".to_string(),
        (n, _) => format!("{n} keys"),
    }
}

pub(crate) async fn ping() -> Response {
    let mut resp = ([(header::CACHE_CONTROL, "no-store")], Json(serde_json::json!({}))).into_response();
    resp.extensions_mut().insert(RouteLabel("ping"));
    resp
}

pub(crate) async fn metrics(State(app): State<App>) -> Response {
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response();
    resp.extensions_mut().insert(RouteLabel("metrics"));
    resp
}
