//! The router: npg's own endpoints, then npm's read API under `/npm`, everything else
//! under `/npm` passed through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use http_body_util::BodyExt;

use super::errors::ApiError;
use super::observe::{RouteLabel, observe};
use super::packument::ClientCaching;
use super::{health, packument, passthrough, tarball};
use crate::app::App;
use crate::cluster::bus::Event;
use crate::guard::Block;
use crate::guard::typosquat::Action;
use crate::npm::name::PackageName;
use crate::npm::path::{Route, check_traversal, classify, written_package};
use crate::proxy::packuments::{Lookup, Source};
use crate::proxy::tarballs::TarballError;

pub(crate) const API_PREFIX: &str = "/npm";

pub(crate) fn router(app: App) -> Router {
    let routes = Router::new()
        .route("/", get(super::status::page))
        .route("/status", get(super::status::page))
        .route("/api/status", get(super::status::json))
        .route("/api/health", get(health::health))
        .route("/-/ping", get(health::ping))
        .route("/metrics", get(health::metrics))
        .route("/api/guard/{*name}", get(super::guard::explain))
        .route("/.well-known/acme-challenge/{token}", get(super::challenge::http01))
        .route(API_PREFIX, any(npm))
        .route("/npm/", any(npm))
        .route("/npm/{*rest}", any(npm))
        .fallback(|| async {
            labelled(
                "unknown",
                Err(ApiError::not_found("no such route; the npm API is under /npm/")),
            )
        });
    // Inside `observe`, so refused requests are counted and logged too; no layer at all when
    // access control is off (a layer costs every request).
    let routes = match app.auth {
        Some(_) => routes.layer(axum::middleware::from_fn_with_state(app.clone(), super::auth::require)),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Plain HTTP when npg serves HTTPS: ACME answers, health and ping (for balancers), and a
/// permanent redirect to HTTPS for everything else, on a host npg serves: the ACME domains,
/// or with a static certificate the host of `public_base` (PROXY_URL).
pub(crate) fn redirect_router(app: App, https_port: u16, public_base: &str) -> Router {
    let mut domains = app.tls.as_ref().map(|t| t.domains.clone()).unwrap_or_default();
    if domains.is_empty() {
        let public = url::Url::parse(public_base).ok();
        domains.extend(public.and_then(|u| u.host_str().map(str::to_ascii_lowercase)));
    }
    Router::new()
        .route("/api/health", get(health::health))
        .route("/-/ping", get(health::ping))
        .route("/.well-known/acme-challenge/{token}", get(super::challenge::http01))
        .fallback(move |req: Request| async move { labelled("redirect", Ok(to_https(&req, &domains, https_port))) })
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// 308 to the same path over HTTPS, on a host npg serves (never an arbitrary Host header when
/// the domains are known: no open redirect).
fn to_https(req: &Request, domains: &[String], https_port: u16) -> Response<Body> {
    let asked = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let asked = asked.rsplit_once(':').map_or(asked, |(h, _)| h).to_ascii_lowercase();
    let host = match domains.first() {
        Some(first) if !domains.contains(&asked) => first.clone(),
        _ if asked.is_empty() => "localhost".to_string(),
        _ => asked,
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = axum::http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn labelled(route: &'static str, result: Result<Response<Body>, ApiError>) -> Response<Body> {
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(RouteLabel(route));
    resp
}

async fn npm(State(app): State<App>, req: Request) -> Response<Body> {
    let path = req.uri().path();
    let rest = path.strip_prefix(API_PREFIX).unwrap_or(path).to_string();
    let relative = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.clone(),
    };
    if let Err(e) = check_traversal(&rest) {
        return labelled("invalid", Err(e.into()));
    }
    if let Some(resp) = (rest == "/-/whoami").then(|| super::auth::whoami(&req)).flatten() {
        return labelled("whoami", Ok(resp));
    }
    if let Some(resp) = (rest == KEYS_ROUTE && req.method() == Method::GET)
        .then(|| keys(&app))
        .flatten()
    {
        return labelled("keys", Ok(resp));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        // npm's writes only: no TRACE reflecting credentials, no CONNECT or WebDAV relayed.
        if !matches!(*req.method(), Method::PUT | Method::POST | Method::DELETE) {
            let reason = format!("{} is not a method of the npm API", req.method());
            return labelled(
                "invalid",
                Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method not allowed",
                    reason,
                )),
            );
        }
        return labelled("passthrough", forward_write(&app, req, &rest, &relative).await);
    }
    match classify(&rest) {
        Err(e) => labelled("invalid", Err(e.into())),
        Ok(Route::Ping) => health::ping().await,
        Ok(Route::Passthrough) => labelled("passthrough", passthrough::forward(&app, req, &relative).await),
        Ok(Route::Packument(name)) => labelled("packument", packument(&app, req, &name).await),
        Ok(Route::Version(name, spec)) => labelled("version", version(&app, req, &name, &spec).await),
        Ok(Route::Tarball(name, file)) => labelled("tarball", tarball(&app, req, &name, &file).await),
        Ok(Route::DistTags(name)) => labelled("dist-tags", dist_tags(&app, req, &name).await),
    }
}

/// `npm audit signatures` asks here for the keys to verify with.
const KEYS_ROUTE: &str = "/-/npm/v1/keys";

/// The registry's signing keys npg verifies with (the copy it keeps: served when upstream is
/// away too); none yet, or none published: the request goes through to upstream.
fn keys(app: &App) -> Option<Response<Body>> {
    let body = app.guard.policy().signatures.keys.body()?.clone();
    let mut resp = Response::new(Body::from(body));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

/// Passes a write through; when the client's own body breaks (bad chunking, cut off) the
/// answer is 400, not an upstream error. A write upstream took makes npg forget the package.
async fn forward_write(app: &App, req: Request, rest: &str, relative: &str) -> Result<Response<Body>, ApiError> {
    let broken = Arc::new(AtomicBool::new(false));
    let seen = broken.clone();
    let req = req.map(|body| {
        Body::new(body.map_err(move |e| {
            seen.store(true, Ordering::Relaxed);
            e
        }))
    });
    let written = written_package(rest);
    let result = passthrough::forward(app, req, relative).await;
    let took = matches!(&result, Ok(resp) if resp.status().is_success());
    if let Some(name) = written.filter(|_| took) {
        // Published, unpublished or retagged: every replica fetches it again.
        app.packuments.invalidate(&name, true).await;
        app.bus.publish(Event::PackageChanged { name: name.to_string() }).await;
    }
    match result {
        Err(_) if broken.load(Ordering::Relaxed) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "the request body could not be read (malformed or cut off)",
        )),
        other => other,
    }
}

/// The client's credentials, when upstream refused the package anonymously (a private
/// package) and the client brought some. With access control on there are none: the client's
/// Authorization is npg's and was removed at the door (`super::auth`).
fn private_credentials<'a>(headers: &'a HeaderMap, err: &ApiError) -> Option<&'a HeaderValue> {
    let refused = matches!(err.status.as_u16(), 401 | 403 | 404);
    headers.get(header::AUTHORIZATION).filter(|_| refused)
}

/// The packument for this request: the shared one, or, when upstream refuses it anonymously
/// and the client brought credentials, one fetched with them, judged by the same policy and
/// never cached.
async fn lookup(app: &App, headers: &HeaderMap, name: &PackageName) -> Result<Lookup, ApiError> {
    let err = match app.packuments.get(name).await {
        Ok(found) => return Ok(found),
        Err(e) => ApiError::from(e),
    };
    match private_credentials(headers, &err) {
        Some(credentials) => Ok((app.packuments.private(name, credentials).await?, Source::Upstream)),
        None => Err(err),
    }
}

/// Counts and logs a block (once per package and version), and builds its 403.
fn refuse(app: &App, headers: &HeaderMap, name: &PackageName, version: Option<&str>, block: &Block) -> ApiError {
    app.guard
        .record(name.as_str(), [(version, block)], private(app, headers, name));
    match version {
        Some(v) => ApiError::blocked_version(name.as_str(), v, block),
        None => ApiError::blocked_package(name.as_str(), block),
    }
}

/// Whether a package may be one upstream serves only with credentials (the client's, or npg's
/// own for its scope): its name is then not shown on the status page to viewers without the
/// admin token.
fn private(app: &App, headers: &HeaderMap, name: &PackageName) -> bool {
    headers.contains_key(header::AUTHORIZATION) || app.upstream.has_own_credentials(name)
}

/// The packument as the policy allows it: refused when the package is blocked as a whole
/// (without asking upstream), 404 when every version is hidden.
async fn allowed_packument(app: &App, headers: &HeaderMap, name: &PackageName) -> Result<Lookup, ApiError> {
    if let Some(block) = app.guard.policy().package(name.as_str()) {
        return Err(refuse(app, headers, name, None, &block));
    }
    let (pkg, source) = lookup(app, headers, name).await?;
    if pkg.all_hidden() {
        let hidden = pkg
            .hidden
            .iter()
            .map(|(version, block)| (Some(version.as_str()), block));
        app.guard.record(name.as_str(), hidden, private(app, headers, name));
        return Err(ApiError::all_hidden(name.as_str(), &pkg.hidden));
    }
    Ok((pkg, source))
}

async fn packument(app: &App, req: Request, name: &PackageName) -> Result<Response<Body>, ApiError> {
    let (pkg, source) = allowed_packument(app, req.headers(), name).await?;
    let mut resp = packument::packument(req.headers(), &pkg, source, &ClientCaching::new(app.client_max_age));
    warn_typosquat(app, name, &mut resp);
    Ok(resp)
}

/// With TYPOSQUAT_POLICY=warn, a name that looks like a popular one is served with a notice
/// (before any other), counted and logged once. `no-store`, because npm prints a notice only
/// from responses it did not keep in its cache (and it keeps every storable one).
fn warn_typosquat(app: &App, name: &PackageName, resp: &mut Response<Body>) {
    let policy = app.guard.policy();
    let Some(rule) = policy.typosquat.as_deref().filter(|r| r.action == Action::Warn) else {
        return;
    };
    let Some(suspect) = rule.suspect(name.as_str()) else {
        return;
    };
    app.guard.warn_typosquat(name.as_str(), &suspect);
    let warning = format!("npg: {name} {}: possible typosquat", suspect.reason());
    let notice = match resp.headers().get("npm-notice").and_then(|v| v.to_str().ok()) {
        Some(other) => format!("{warning}; {other}"),
        None => warning,
    };
    if let Ok(notice) = HeaderValue::from_str(&notice) {
        resp.headers_mut().insert("npm-notice", notice);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

async fn version(app: &App, req: Request, name: &PackageName, spec: &str) -> Result<Response<Body>, ApiError> {
    let (pkg, source) = allowed_packument(app, req.headers(), name).await?;
    if let Some(block) = pkg.hidden.get(spec) {
        return Err(refuse(app, req.headers(), name, Some(spec), block));
    }
    let (pkg, source) = if packument::resolve_spec(&pkg, spec).is_none() && source != Source::Upstream {
        // Maybe published since we cached it: ask upstream once before saying 404.
        let (pkg, source) = app.packuments.refresh(name).await?;
        if let Some(block) = pkg.hidden.get(spec) {
            return Err(refuse(app, req.headers(), name, Some(spec), block));
        }
        (pkg, source)
    } else {
        (pkg, source)
    };
    let mut resp = packument::version(
        req.headers(),
        &pkg,
        source,
        &ClientCaching::new(app.client_max_age),
        name,
        spec,
    )?;
    warn_typosquat(app, name, &mut resp);
    Ok(resp)
}

/// `GET /-/package/<name>/dist-tags`, from the filtered packument, so tags are no bypass.
async fn dist_tags(app: &App, req: Request, name: &PackageName) -> Result<Response<Body>, ApiError> {
    let (pkg, _) = allowed_packument(app, req.headers(), name).await?;
    let tags: std::collections::BTreeMap<_, _> = pkg.index.dist_tags.iter().collect();
    let mut resp = axum::Json(tags).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

async fn tarball(app: &App, req: Request, name: &PackageName, file: &str) -> Result<Response<Body>, ApiError> {
    let err = match app.tarballs.get(name, file).await {
        Ok((body, hit)) => {
            let resp = tarball::respond(req.headers(), name, file, body, hit, app.metrics.clone());
            return Ok(resp);
        }
        Err(TarballError::Blocked { block, version, .. }) => {
            return Err(refuse(app, req.headers(), name, version.as_deref(), &block));
        }
        Err(e) => ApiError::from(e),
    };
    let Some(credentials) = private_credentials(req.headers(), &err) else {
        return Err(err);
    };
    // A private package: its tarball is judged by the packument the client may read.
    let pkg = app.packuments.private(name, credentials).await?;
    if let Some(info) = pkg.index.files.get(file)
        && let Some(block) = pkg.hidden.get(&info.version)
    {
        return Err(refuse(app, req.headers(), name, Some(&info.version), block));
    }
    let body = app.tarballs.private(name, file, &pkg, credentials).await?;
    Ok(tarball::respond(
        req.headers(),
        name,
        file,
        body,
        false,
        app.metrics.clone(),
    ))
}
