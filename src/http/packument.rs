//! Packument and version-manifest responses: the form the client asked for (full or
//! abbreviated), gzip as stored when accepted, strong ETags and 304s, `X-Cache`, and how long
//! clients may reuse them (`CLIENT_MAX_AGE`).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use crate::npm::name::PackageName;
use crate::proxy::packuments::{Package, Source};

pub(crate) const ABBREVIATED_TYPE: &str = "application/vnd.npm.install-v1+json";

/// Whether a list header (`Accept`, `Accept-Encoding`) offers one of `values` without
/// refusing it with `q=0`.
fn offers(headers: &HeaderMap, name: header::HeaderName, values: &[&str]) -> bool {
    let lists = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    lists.flat_map(|v| v.split(',')).any(|part| {
        let mut params = part.split(';').map(str::trim);
        params.next().is_some_and(|v| values.contains(&v)) && !params.any(|p| p.replace(' ', "") == "q=0")
    })
}

/// Whether the client asked for the abbreviated document (pnpm, yarn 1).
pub(crate) fn wants_abbreviated(headers: &HeaderMap) -> bool {
    offers(headers, header::ACCEPT, &[ABBREVIATED_TYPE])
}

/// Whether gzip is acceptable.
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    offers(headers, header::ACCEPT_ENCODING, &["gzip", "*"])
}

/// Whether `If-None-Match` names one of `etags` (or `*`).
pub(crate) fn etag_matches(headers: &HeaderMap, etags: &[&str]) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || etags.contains(&t))
        })
}

fn x_cache(source: Source) -> &'static str {
    match source {
        Source::Upstream => "MISS",
        Source::Stale => "STALE",
        _ => "HIT",
    }
}

/// The `Cache-Control` of packuments and manifests. By default clients revalidate every time
/// (`no-cache`; the strong ETag makes that a 304), so a new block applies at once: with a
/// `max-age` npm would resolve a just-blocked version from its cache (and install it from its
/// cached tarball, or fail at the tarball with a 403).
#[derive(Clone)]
pub(crate) struct ClientCaching {
    public: HeaderValue,
}

impl ClientCaching {
    /// Per request: no allocation for the default (`no-cache`).
    pub(crate) fn new(max_age: std::time::Duration) -> ClientCaching {
        let public = match max_age.as_secs() {
            0 => HeaderValue::from_static("public, no-cache"),
            secs => HeaderValue::from_str(&format!("public, max-age={secs}")).expect("digits are a valid header"),
        };
        ClientCaching { public }
    }

    /// What a response to this request may say: responses to credentials stay private.
    fn header(&self, req: &HeaderMap) -> HeaderValue {
        if req.contains_key(header::AUTHORIZATION) {
            HeaderValue::from_static("private, no-cache")
        } else {
            self.public.clone()
        }
    }
}

/// Headers common to cacheable successful responses, and the guard's notice for npm users.
fn cache_headers(headers: &mut HeaderMap, pkg: &Package, source: Source, cache_control: HeaderValue) {
    if let Some(notice) = pkg.notice.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
        headers.insert("npm-notice", notice);
    }
    headers.insert("x-cache", HeaderValue::from_static(x_cache(source)));
    headers.insert(header::CACHE_CONTROL, cache_control);
    if source == Source::Stale {
        headers.insert(
            header::WARNING,
            HeaderValue::from_static("110 npg \"Response is Stale\""),
        );
    }
}

/// Builds a body response with an ETag, answering 304 when the client already has it.
fn respond(
    req: &HeaderMap,
    body: Bytes,
    etag: &str,
    other_etag: &str,
    content_type: &'static str,
    gzip: bool,
) -> Response<Body> {
    let not_modified = etag_matches(req, &[etag, other_etag]);
    let mut resp = if not_modified {
        Response::builder().status(StatusCode::NOT_MODIFIED).body(Body::empty())
    } else {
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
    }
    .expect("static headers are valid");
    let h = resp.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("hex ETag is a valid header"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if gzip && !not_modified {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

pub(crate) fn packument(req: &HeaderMap, pkg: &Package, source: Source, caching: &ClientCaching) -> Response<Body> {
    let abbreviated = wants_abbreviated(req);
    let (variant, content_type) = if abbreviated {
        (&pkg.abbreviated, ABBREVIATED_TYPE)
    } else {
        (&pkg.full, "application/json")
    };
    let mut resp = if accepts_gzip(req) {
        respond(
            req,
            variant.gzip.clone(),
            &variant.gzip_etag,
            &variant.etag,
            content_type,
            true,
        )
    } else {
        respond(
            req,
            variant.body.clone(),
            &variant.etag,
            &variant.gzip_etag,
            content_type,
            false,
        )
    };
    cache_headers(resp.headers_mut(), pkg, source, caching.header(req));
    resp
}

/// The version a spec names: a dist-tag, an exact version, or the highest one a range allows.
pub(crate) fn resolve_spec(pkg: &Package, spec: &str) -> Option<String> {
    if let Some(v) = pkg.index.dist_tags.get(spec) {
        return Some(v.clone());
    }
    if pkg.index.versions.iter().any(|v| v == spec) {
        return Some(spec.to_string());
    }
    let range = nodejs_semver::Range::parse(spec).ok()?;
    let versions = pkg
        .index
        .versions
        .iter()
        .filter_map(|v| nodejs_semver::Version::parse(v).ok());
    versions.filter(|v| range.satisfies(v)).max().map(|v| v.to_string())
}

/// The 404 for a spec no served version satisfies; when a hidden one would, it says which and
/// why.
fn missing(pkg: &Package, name: &PackageName, spec: &str) -> ApiError {
    let hidden = nodejs_semver::Range::parse(spec).ok().and_then(|range| {
        let parsed = pkg
            .hidden
            .iter()
            .filter_map(|(v, block)| Some((nodejs_semver::Version::parse(v).ok()?, v, block)));
        parsed
            .filter(|(v, _, _)| range.satisfies(v))
            .max_by(|a, b| a.0.cmp(&b.0))
    });
    match hidden {
        Some((_, version, block)) => ApiError::hidden_match(name.as_str(), spec, version, block),
        None => ApiError::not_found(format!("version not found: {name}@{spec}")),
    }
}

pub(crate) fn version(
    req: &HeaderMap,
    pkg: &Package,
    source: Source,
    caching: &ClientCaching,
    name: &PackageName,
    spec: &str,
) -> Result<Response<Body>, ApiError> {
    let missing = || missing(pkg, name, spec);
    let version = resolve_spec(pkg, spec).ok_or_else(missing)?;
    // Prepared at render time: a slice of the served document, no parse per request.
    let range = pkg.manifests.get(&version).ok_or_else(missing)?;
    let body = pkg.full.body.slice(range.clone());
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    let mut resp = respond(req, body, &etag, &etag, "application/json", false);
    cache_headers(resp.headers_mut(), pkg, source, caching.header(req));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn accept_negotiation() {
        let pnpm = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
        assert!(wants_abbreviated(&headers(&[("accept", pnpm)])));
        assert!(!wants_abbreviated(&headers(&[("accept", "application/json")])));
        assert!(!wants_abbreviated(&headers(&[(
            "accept",
            "application/vnd.npm.install-v1+json;q=0"
        )])));
        assert!(!wants_abbreviated(&HeaderMap::new()));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip,deflate")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "br, gzip;q=0.5")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0, br")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
    }

    #[test]
    fn client_max_age() {
        let secs = std::time::Duration::from_secs;
        let anonymous = HeaderMap::new();
        assert_eq!(ClientCaching::new(secs(0)).header(&anonymous), "public, no-cache");
        assert_eq!(ClientCaching::new(secs(60)).header(&anonymous), "public, max-age=60");
        let authed = headers(&[("authorization", "Bearer x")]);
        assert_eq!(ClientCaching::new(secs(60)).header(&authed), "private, no-cache");
    }

    #[test]
    fn if_none_match() {
        let h = headers(&[("if-none-match", "\"a\", W/\"b\"")]);
        assert!(etag_matches(&h, &["\"b\""]));
        assert!(!etag_matches(&h, &["\"c\""]));
        assert!(etag_matches(&headers(&[("if-none-match", "*")]), &["\"x\""]));
    }
}
