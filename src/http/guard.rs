//! `GET /api/guard/<name>`: what the guard does with a package and why — blocked as a whole,
//! or which versions it hides by which rule, and the popular name it looks like.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::observe::RouteLabel;
use crate::app::App;
use crate::guard::scripts::ScriptGate;
use crate::npm::name::PackageName;

pub(crate) async fn explain(State(app): State<App>, req: Request) -> Response {
    let raw = req.uri().path().strip_prefix("/api/guard/").unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let mut resp = match PackageName::parse(&decoded) {
        Err(e) => ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "Invalid package name",
            e.to_string(),
        )
        .into_response(),
        Ok(name) => report(&app, &name).await.into_response(),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.extensions_mut().insert(RouteLabel("guard"));
    resp
}

async fn report(app: &App, name: &PackageName) -> Result<Json<serde_json::Value>, ApiError> {
    let policy = app.guard.policy();
    let typosquat = policy
        .typosquat(name.as_str())
        .map(|(suspect, action)| serde_json::json!({"like": suspect.like, "how": suspect.how, "policy": action}));
    if let Some(block) = policy.package(name.as_str()) {
        return Ok(Json(serde_json::json!({
            "package": name.as_str(),
            "policy_version": policy.version,
            "blocked": block,
            "typosquat": typosquat,
        })));
    }
    let (pkg, _) = app.packuments.get(name).await?;
    let hidden: BTreeMap<_, _> = pkg.hidden.iter().collect();
    let tags: BTreeMap<_, _> = pkg.index.dist_tags.iter().collect();
    let signed: BTreeMap<_, _> = pkg.signatures.iter().collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for state in pkg.signatures.values() {
        *counts.entry(state.as_str()).or_default() += 1;
    }
    Ok(Json(serde_json::json!({
        "package": name.as_str(),
        "policy_version": pkg.policy_version,
        "blocked": null,
        "versions_served": pkg.index.versions.len(),
        "hidden": hidden,
        "dist_tags": tags,
        "min_release_age_applies": policy.age_gate(name.as_str()).is_some(),
        "install_script_policy": policy.script_gate(name.as_str()).map(ScriptGate::policy),
        "typosquat": typosquat,
        "signatures": {"policy": pkg.signed_under.mode, "counts": counts, "versions": signed},
    })))
}
