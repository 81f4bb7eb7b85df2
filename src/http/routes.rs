//! The router: npg's own endpoints, then npm's read API under `/npm`, everything else
//! under `/npm` passed through.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Response, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};

use super::errors::ApiError;
use super::observe::{RouteLabel, observe};
use super::{health, packument, passthrough, tarball};
use crate::app::App;
use crate::guard::Block;
use crate::npm::name::PackageName;
use crate::npm::path::{Route, check_traversal, classify};
use crate::packuments::{FetchError, Lookup, Source};
use crate::tarballs::TarballError;

pub const API_PREFIX: &str = "/npm";

pub fn router(app: App) -> Router {
    Router::new()
        .route("/api/health", get(health::health))
        .route("/-/ping", get(health::ping))
        .route("/metrics", get(health::metrics))
        .route("/api/guard/{*name}", get(super::guard::explain))
        .route(
            "/.well-known/acme-challenge/{token}",
            get(crate::tls::challenge::http01),
        )
        .route(API_PREFIX, any(npm))
        .route("/npm/", any(npm))
        .route("/npm/{*rest}", any(npm))
        .fallback(|| async {
            labelled(
                "unknown",
                Err(ApiError::not_found("no such route; the npm API is under /npm/")),
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Plain HTTP when npg serves HTTPS: ACME answers, health and ping (for balancers), and a
/// permanent redirect to HTTPS for everything else.
pub fn redirect_router(app: App, https_port: u16) -> Router {
    let domains = app.tls.as_ref().map(|t| t.domains.clone()).unwrap_or_default();
    Router::new()
        .route("/api/health", get(health::health))
        .route("/-/ping", get(health::ping))
        .route(
            "/.well-known/acme-challenge/{token}",
            get(crate::tls::challenge::http01),
        )
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
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return labelled("passthrough", passthrough::forward(&app, req, &relative).await);
    }
    match classify(&rest) {
        Err(e) => labelled("invalid", Err(e.into())),
        Ok(Route::Ping) => health::ping().await,
        Ok(Route::Passthrough) => labelled("passthrough", passthrough::forward(&app, req, &relative).await),
        Ok(Route::Packument(name)) => labelled("packument", packument(&app, req, &relative, &name).await),
        Ok(Route::Version(name, spec)) => labelled("version", version(&app, req, &relative, &name, &spec).await),
        Ok(Route::Tarball(name, file)) => labelled("tarball", tarball(&app, req, &relative, &name, &file).await),
        Ok(Route::DistTags(name)) => labelled("dist-tags", dist_tags(&app, req, &relative, &name).await),
    }
}

/// npg caches only what upstream serves anonymously. When upstream refuses that but the
/// client brought credentials (a private package), the client's own request goes through.
/// Never used for the guard's refusals.
async fn auth_fallback(app: &App, req: Request, relative: &str, err: FetchError) -> Result<Response<Body>, ApiError> {
    let err = ApiError::from(err);
    let refused = matches!(err.status.as_u16(), 401 | 403 | 404);
    if refused && req.headers().contains_key(header::AUTHORIZATION) {
        return passthrough::forward(app, req, relative).await;
    }
    Err(err)
}

/// Counts and logs a block (once per package and version), and builds its 403.
fn refuse(app: &App, name: &PackageName, version: Option<&str>, block: &Block) -> ApiError {
    app.guard.record(name.as_str(), version, block);
    match version {
        Some(v) => ApiError::blocked_version(name.as_str(), v, block),
        None => ApiError::blocked_package(name.as_str(), block),
    }
}

/// The packument as the policy allows it: refused when the package is blocked as a whole
/// (without asking upstream), 404 when every version is hidden.
async fn allowed_packument(
    app: &App,
    req: Request,
    relative: &str,
    name: &PackageName,
) -> Result<Result<(Request, Lookup), Response<Body>>, ApiError> {
    if let Some(block) = app.guard.policy().package(name.as_str()) {
        return Err(refuse(app, name, None, &block));
    }
    let (pkg, source) = match app.packuments.get(name).await {
        Ok(found) => found,
        Err(e) => return auth_fallback(app, req, relative, e).await.map(Err),
    };
    if pkg.all_hidden() {
        for (version, block) in pkg.hidden.iter() {
            app.guard.record(name.as_str(), Some(version), block);
        }
        let reason = pkg.notice.clone().unwrap_or_default();
        return Err(ApiError::not_found(reason).with_error(format!("All versions of {name} are blocked by policy")));
    }
    Ok(Ok((req, (pkg, source))))
}

async fn packument(app: &App, req: Request, relative: &str, name: &PackageName) -> Result<Response<Body>, ApiError> {
    let (req, (pkg, source)) = match allowed_packument(app, req, relative, name).await? {
        Ok(found) => found,
        Err(passed_through) => return Ok(passed_through),
    };
    Ok(packument::packument(req.headers(), &pkg, source))
}

async fn version(
    app: &App,
    req: Request,
    relative: &str,
    name: &PackageName,
    spec: &str,
) -> Result<Response<Body>, ApiError> {
    let (req, (pkg, source)) = match allowed_packument(app, req, relative, name).await? {
        Ok(found) => found,
        Err(passed_through) => return Ok(passed_through),
    };
    if let Some(block) = pkg.hidden.get(spec) {
        return Err(refuse(app, name, Some(spec), block));
    }
    if packument::resolve_spec(&pkg, spec).is_none() && source != Source::Upstream {
        // Maybe published since we cached it: ask upstream once before saying 404.
        let (pkg, source) = app.packuments.refresh(name).await?;
        if let Some(block) = pkg.hidden.get(spec) {
            return Err(refuse(app, name, Some(spec), block));
        }
        return packument::version(req.headers(), &pkg, source, name, spec);
    }
    packument::version(req.headers(), &pkg, source, name, spec)
}

/// `GET /-/package/<name>/dist-tags`, from the filtered packument, so tags are no bypass.
async fn dist_tags(app: &App, req: Request, relative: &str, name: &PackageName) -> Result<Response<Body>, ApiError> {
    let (_, (pkg, _)) = match allowed_packument(app, req, relative, name).await? {
        Ok(found) => found,
        Err(passed_through) => return Ok(passed_through),
    };
    let tags: std::collections::BTreeMap<_, _> = pkg.index.dist_tags.iter().collect();
    let mut resp = axum::Json(tags).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

async fn tarball(
    app: &App,
    req: Request,
    relative: &str,
    name: &PackageName,
    file: &str,
) -> Result<Response<Body>, ApiError> {
    match app.tarballs.get(name, file).await {
        Ok((body, hit)) => Ok(tarball::respond(
            req.headers(),
            name,
            file,
            body,
            hit,
            app.metrics.clone(),
        )),
        Err(TarballError::Blocked { block, version, .. }) => Err(refuse(app, name, version.as_deref(), &block)),
        Err(TarballError::Fetch(e)) => auth_fallback(app, req, relative, e).await,
        Err(e @ TarballError::NotFound(_)) if !req.headers().contains_key(header::AUTHORIZATION) => Err(e.into()),
        Err(TarballError::NotFound(_)) => passthrough::forward(app, req, relative).await,
    }
}
