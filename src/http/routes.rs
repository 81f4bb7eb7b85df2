//! The router: npg's own endpoints, then npm's read API under `/npm`, everything else
//! under `/npm` passed through.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, Response, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};

use super::errors::ApiError;
use super::observe::{RouteLabel, observe};
use super::{health, packument, passthrough, tarball};
use crate::app::App;
use crate::npm::name::PackageName;
use crate::npm::path::{Route, check_traversal, classify};
use crate::packuments::Source;

pub const API_PREFIX: &str = "/npm";

pub fn router(app: App) -> Router {
    Router::new()
        .route("/api/health", get(health::health))
        .route("/-/ping", get(health::ping))
        .route("/metrics", get(health::metrics))
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
        Ok(Route::Packument(name)) => {
            let result = match app.packuments.get(&name).await {
                Ok((pkg, source)) => Ok(packument::packument(req.headers(), &pkg, source)),
                Err(e) => auth_fallback(&app, req, &relative, e.into()).await,
            };
            labelled("packument", result)
        }
        Ok(Route::Version(name, spec)) => labelled("version", version(&app, req, &relative, &name, &spec).await),
        Ok(Route::Tarball(name, file)) => labelled("tarball", tarball(&app, req, &relative, &name, &file).await),
    }
}

/// npg caches only what upstream serves anonymously. When upstream refuses that but the
/// client brought credentials (a private package), the client's own request goes through.
async fn auth_fallback(app: &App, req: Request, relative: &str, err: ApiError) -> Result<Response<Body>, ApiError> {
    let refused = matches!(err.status.as_u16(), 401 | 403 | 404);
    if refused && req.headers().contains_key(header::AUTHORIZATION) {
        return passthrough::forward(app, req, relative).await;
    }
    Err(err)
}

async fn version(
    app: &App,
    req: Request,
    relative: &str,
    name: &PackageName,
    spec: &str,
) -> Result<Response<Body>, ApiError> {
    let (pkg, source) = match app.packuments.get(name).await {
        Ok(found) => found,
        Err(e) => return auth_fallback(app, req, relative, e.into()).await,
    };
    if packument::resolve_spec(&pkg, spec).is_none() && source != Source::Upstream {
        // Maybe published since we cached it: ask upstream once before saying 404.
        let (pkg, source) = app.packuments.refresh(name).await?;
        return packument::version(req.headers(), &pkg, source, name, spec);
    }
    packument::version(req.headers(), &pkg, source, name, spec)
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
        Err(e) => auth_fallback(app, req, relative, e.into()).await,
    }
}
