//! `/api/health`, `/-/ping` and `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::auth::{Caller, allowed};
use super::observe::RouteLabel;
use crate::app::App;
use crate::auth::Permission;
use crate::cluster::redis::RedisState;
use crate::upstream::breaker::State as Breaker;

/// The status for anyone; the details only for admins when access control is on.
pub async fn health(State(app): State<App>, caller: Option<Extension<Caller>>) -> Response {
    let draining = app.draining.load(std::sync::atomic::Ordering::Relaxed);
    let problems = problems(&app);
    let status = match (draining, problems.is_empty()) {
        (true, _) => "draining",
        (false, false) => "degraded",
        (false, true) => "ok",
    };
    let body = if allowed(&app, caller.as_deref(), Permission::Admin) {
        details(&app, status, &problems)
    } else {
        serde_json::json!({ "status": status })
    };
    // A replica shutting down answers 503 so balancers stop sending it new work first.
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut resp = (code, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
    resp.extensions_mut().insert(RouteLabel("health"));
    resp
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
    if let Some(error) = app.guard.blocklist_status().error {
        problems.push(format!("blocklist: {error} (the last good rules apply)"));
    }
    problems
}

fn details(app: &App, status: &str, problems: &[String]) -> serde_json::Value {
    let redis = app.redis.state();
    let policy = app.guard.policy();
    serde_json::json!({
        "status": status,
        "problems": problems,
        "upstream": { "breaker": app.upstream.breaker().status() },
        "redis": redis.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
        "instance": app.instance,
        "uptime_seconds": app.started.elapsed().as_secs(),
        "guard": {
            "policy_version": policy.version,
            "blocklist_rules": policy.blocklist.len(),
            "malware_entries": policy.malware.len(),
            "min_release_age": policy.age.as_ref().map(|g| humantime::format_duration(g.min_age()).to_string()),
            "feed": app.guard.feed_status(),
            "blocklist": app.guard.blocklist_status(),
        },
        "changes": app.changes.snapshot(),
        "tls": app.tls.as_ref().map_or_else(|| serde_json::json!({"mode": "off"}), |t| serde_json::json!(t.status())),
    })
}

pub async fn ping() -> Response {
    let mut resp = ([(header::CACHE_CONTROL, "no-store")], Json(serde_json::json!({}))).into_response();
    resp.extensions_mut().insert(RouteLabel("ping"));
    resp
}

pub async fn metrics(State(app): State<App>) -> Response {
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
