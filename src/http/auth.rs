//! Access control at the door, when AUTH_TOKENS_FILE is set: the permission a request needs,
//! the identity its `Authorization: Bearer <token>` names (npm sends the `_authToken` of
//! `.npmrc` so; on the status page only, `Basic` with the token as password, what a browser
//! sends), and 401 or 403 otherwise. The client's Authorization header is npg's: it is
//! removed before the request goes on, so it never reaches upstream, and shared answers are
//! marked `private` so no shared cache in front hands them to callers without a token.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::observe::RouteLabel;
use super::routes::API_PREFIX;
use crate::app::App;
use crate::auth::{Identity, Permission};

/// The identity of a request's valid token, as a request extension.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub Identity);

/// npm audit's POSTs: reads, whatever their method.
const AUDIT_PREFIX: &str = "/npm/-/npm/v1/security/";

/// What a request needs; `None` for the paths that stay open (balancers' health and ping,
/// ACME challenges). Health details are judged by the handler (see `allowed`).
fn needed(method: &Method, path: &str) -> Option<Permission> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let open = matches!(path, "/-/ping" | "/npm/-/ping" | "/api/health");
    if read && (open || path.starts_with("/.well-known/acme-challenge/")) {
        return None;
    }
    // What the guard does with a package is what its refusals already tell any reader: the
    // same explanation, for `npg lockfile check` in CI with a read token.
    if read && path.starts_with("/api/guard/") {
        return Some(Permission::Read);
    }
    if path == "/metrics" || path.starts_with("/api/") || is_status_page(path) {
        return Some(Permission::Admin);
    }
    let npm = path == API_PREFIX || path.starts_with("/npm/");
    let audit = *method == Method::POST && path.starts_with(AUDIT_PREFIX);
    if npm && !read && !audit {
        return Some(Permission::Publish);
    }
    // Everything else, unknown paths included: a token is needed to learn anything.
    Some(Permission::Read)
}

/// The status page's paths: a browser is asked for the token as a password there.
fn is_status_page(path: &str) -> bool {
    matches!(path, "/" | "/status")
}

/// The token an `Authorization` value carries: `Bearer <token>`, or where `basic` (a browser
/// on the status page; never on the npm API, where Basic credentials are a client's for
/// upstream) `Basic` with the token as the password (any user name) or as the user name.
fn token_of(value: &str, basic: bool) -> Option<String> {
    use base64::Engine;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if !basic || !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    let (user, password) = String::from_utf8(decoded)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some(if password.is_empty() { user } else { password })
}

/// What the Authorization header brought.
enum Presented {
    Missing,
    Invalid,
    Known(Identity),
}

impl Presented {
    fn of(app: &App, headers: &HeaderMap, path: &str) -> Presented {
        let (Some(auth), Some(value)) = (&app.auth, headers.get(header::AUTHORIZATION)) else {
            return Presented::Missing;
        };
        let basic = is_status_page(path);
        let token = value.to_str().ok().and_then(|v| token_of(v, basic));
        match token.and_then(|t| auth.identify(&t)) {
            Some(identity) => Presented::Known(identity),
            None => Presented::Invalid,
        }
    }
}

/// Whether the request's caller may do what `needed` asks (always, with access control off).
pub(crate) fn allowed(app: &App, caller: Option<&Caller>, needed: Permission) -> bool {
    app.auth.is_none() || caller.is_some_and(|c| c.0.may(needed))
}

/// The middleware, installed only when access control is on (see `routes::router`).
pub(crate) async fn require(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let needed = needed(req.method(), req.uri().path());
    let presented = Presented::of(&app, req.headers(), req.uri().path());
    req.headers_mut().remove(header::AUTHORIZATION);
    let refusal = match (needed, presented) {
        (_, Presented::Known(who)) if needed.is_none_or(|n| who.may(n)) => {
            req.extensions_mut().insert(Caller(who));
            None
        }
        (None, _) => None,
        (Some(_), Presented::Missing) => Some(unauthorized(&app, "missing", req.uri().path())),
        (Some(_), Presented::Invalid) => Some(unauthorized(&app, "invalid", req.uri().path())),
        (Some(n), Presented::Known(who)) => Some(forbidden(&app, &req, &who, n)),
    };
    if let Some(mut resp) = refusal {
        resp.extensions_mut().insert(RouteLabel("auth"));
        return resp;
    }
    let mut resp = next.run(req).await;
    make_private(resp.headers_mut());
    resp
}

/// `npm whoami` with access control on: the name of the caller's token (upstream would only
/// see a request without credentials).
pub(crate) fn whoami(req: &Request) -> Option<Response> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let Caller(who) = req.extensions().get::<Caller>().filter(|_| read)?;
    let mut resp = axum::Json(serde_json::json!({ "username": &*who.name })).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(resp)
}

/// 401 with the challenge npm understands (it then reports E401 and asks for a token); on the
/// status page, the one a browser answers by asking for a user name and password.
fn unauthorized(app: &App, reason: &'static str, path: &str) -> Response {
    app.metrics.auth_denied(reason);
    let why = match reason {
        "missing" => "npg needs a token: add `//<npg host>/npm/:_authToken=<token>` to .npmrc",
        _ => "the token is not one npg knows (mistyped, or revoked)",
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "Authentication required", why).into_response();
    let challenge = if is_status_page(path) {
        "Basic realm=\"npg status: the admin token as password\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"npg\""
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

fn forbidden(app: &App, req: &Request, who: &Identity, needed: Permission) -> Response {
    app.metrics.auth_denied("forbidden");
    tracing::info!(identity = %who.name, needed = needed.as_str(), method = %req.method(),
        path = %req.uri().path(), "access refused");
    let reason = format!(
        "the token of `{}` has the {} permission; this needs {}",
        who.name,
        who.permission.as_str(),
        needed.as_str()
    );
    ApiError::new(StatusCode::FORBIDDEN, "Forbidden", reason).into_response()
}

/// `public` becomes `private`: what needed a token is no shared cache's to serve.
fn make_private(headers: &mut HeaderMap) {
    let private = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok()?.strip_prefix("public"))
        .and_then(|rest| HeaderValue::from_str(&format!("private{rest}")).ok());
    if let Some(value) = private {
        headers.insert(header::CACHE_CONTROL, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_request_needs() {
        use Permission::*;
        let cases = [
            (Method::GET, "/-/ping", None),
            (Method::GET, "/npm/-/ping", None),
            (Method::POST, "/npm/-/ping", Some(Publish)),
            (Method::GET, "/api/health", None),
            (Method::GET, "/.well-known/acme-challenge/x", None),
            (Method::GET, "/metrics", Some(Admin)),
            (Method::GET, "/api/guard/left-pad", Some(Read)),
            (Method::POST, "/api/guard/left-pad", Some(Admin)),
            (Method::GET, "/npm/left-pad", Some(Read)),
            (Method::HEAD, "/npm/left-pad/-/left-pad-1.0.0.tgz", Some(Read)),
            (Method::POST, "/npm/-/npm/v1/security/advisories/bulk", Some(Read)),
            (Method::PUT, "/npm/left-pad", Some(Publish)),
            (Method::DELETE, "/npm/left-pad/-rev/1", Some(Publish)),
            (Method::GET, "/elsewhere", Some(Read)),
            (Method::GET, "/", Some(Admin)),
            (Method::GET, "/status", Some(Admin)),
            (Method::GET, "/api/status", Some(Admin)),
        ];
        for (method, path, want) in cases {
            assert_eq!(needed(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn tokens_from_bearer_or_basic() {
        assert_eq!(token_of("Bearer abc", true).as_deref(), Some("abc"));
        assert_eq!(token_of("bearer  abc ", true).as_deref(), Some("abc"));
        // "admin:s3cret" and "s3cret:"
        assert_eq!(token_of("Basic YWRtaW46czNjcmV0", true).as_deref(), Some("s3cret"));
        assert_eq!(token_of("Basic czNjcmV0Og==", true).as_deref(), Some("s3cret"));
        assert_eq!(token_of("Basic !!!", true), None);
        assert_eq!(token_of("Basic czNjcmV0", true), None, "no colon: not Basic");
        assert_eq!(token_of("Digest abc", true), None);
        assert_eq!(
            token_of("Basic YWRtaW46czNjcmV0", false),
            None,
            "Basic only where asked"
        );
        assert_eq!(token_of("Bearer abc", false).as_deref(), Some("abc"));
    }

    #[test]
    fn shared_answers_become_private() {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
        make_private(&mut h);
        assert_eq!(h[header::CACHE_CONTROL], "private, max-age=300");
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        make_private(&mut h);
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
    }
}
