//! Error responses: the right status and a JSON body `{error, reason}` (npm prints `error`),
//! never cacheable, and a log line. Refusals by the guard also say why in the status line
//! (pnpm and yarn print that, not the body) and what to do in `error`.

use std::cmp::Reverse;
use std::collections::HashMap;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::budget::BudgetError;
use crate::guard::{Block, Rule};
use crate::npm::path::PathError;
use crate::proxy::packuments::FetchError;
use crate::proxy::tarballs::TarballError;
use crate::upstream::UpstreamError;

use super::phrase::reason_phrase;

#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) error: String,
    pub(crate) reason: String,
    /// More fields of the body (the guard's `package`, `type`, `pattern`, ...).
    pub(crate) extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// Sent as `Retry-After` (seconds): upstream is down and will be asked again then.
    pub(crate) retry_after: Option<u64>,
    /// The status line's reason phrase, when it says more than the standard one.
    pub(crate) phrase: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            reason: reason.into(),
            extra: None,
            retry_after: None,
            phrase: None,
        }
    }

    /// 403 for a package the guard blocks as a whole.
    pub(crate) fn blocked_package(name: &str, block: &Block) -> ApiError {
        let error = format!("{name} is {}. {}", block.message(), guidance(name, None, block));
        ApiError::new(StatusCode::FORBIDDEN, error, block.reason.clone()).with_block(name, None, block)
    }

    /// 403 for a version (its manifest or tarball) the guard blocks.
    pub(crate) fn blocked_version(name: &str, version: &str, block: &Block) -> ApiError {
        let error = format!(
            "{name}@{version} is {}. {}",
            block.message(),
            guidance(name, Some(version), block)
        );
        ApiError::new(StatusCode::FORBIDDEN, error, block.reason.clone()).with_block(name, Some(version), block)
    }

    /// 404 for a spec (`^2.0.0`) that only hidden versions satisfy, told by the highest one.
    pub(crate) fn hidden_match(name: &str, spec: &str, version: &str, block: &Block) -> ApiError {
        let error = format!(
            "No served version of {name} matches {spec}; {name}@{version} is {}. {}",
            block.message(),
            guidance(name, Some(version), block)
        );
        ApiError::new(StatusCode::NOT_FOUND, error, block.reason.clone()).with_block(name, Some(version), block)
    }

    /// 404 for a package whose every version the policy hides: told by the hold that lifts
    /// first (or, without one, the newest version's block).
    pub(crate) fn all_hidden(name: &str, hidden: &HashMap<String, Block>) -> ApiError {
        let semver = |v: &str| nodejs_semver::Version::parse(v).ok();
        let first = hidden
            .iter()
            .min_by_key(|(version, block)| (block.until.unwrap_or(u64::MAX), Reverse(semver(version))));
        let Some((version, block)) = first else {
            return ApiError::not_found(format!("no version of {name} is served"));
        };
        let error = format!(
            "Every version of {name} is hidden by npg's policy; {name}@{version} is {}. {}",
            block.message(),
            guidance(name, None, block)
        );
        ApiError::new(StatusCode::NOT_FOUND, error, block.reason.clone()).with_block(name, None, block)
    }

    fn with_block(mut self, name: &str, version: Option<&str>, block: &Block) -> ApiError {
        let mut fields = match serde_json::to_value(block) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        fields.remove("reason");
        fields.insert("package".into(), name.into());
        if let Some(v) = version {
            fields.insert("version".into(), v.into());
        }
        self.extra = Some(Box::new(fields));
        let subject = match version {
            Some(v) => format!("{name}@{v}"),
            None => name.to_string(),
        };
        self.phrase = Some(block.phrase(&subject));
        self
    }

    pub(crate) fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not found", reason)
    }
}

/// What the user can do about a refusal, and where to see why.
fn guidance(name: &str, version: Option<&str>, block: &Block) -> String {
    let instead = match (block.kind, version) {
        (Rule::Age, _) => {
            "It is served once old enough; until then use an older version, or ask your npg \
             administrator to exempt it (MIN_RELEASE_AGE_EXCLUDE)."
        }
        (_, Some(_)) => "Use another version, or ask your npg administrator.",
        (_, None) => "Use another package, or ask your npg administrator.",
    };
    format!("{instead} GET /api/guard/{name} on npg shows what is hidden and why.")
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        let error = match e {
            PathError::Name(_) => "Invalid package name",
            PathError::BadVersion => "Invalid version",
            PathError::BadFile => "Invalid tarball name",
            PathError::Traversal | PathError::NotUtf8 | PathError::NotARoute => "Invalid path",
        };
        ApiError::new(StatusCode::BAD_REQUEST, error, e.to_string())
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        match e {
            UpstreamError::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Upstream timeout", e.to_string()),
            UpstreamError::Unavailable { retry_in_seconds, .. } => ApiError {
                retry_after: Some(retry_in_seconds),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Upstream unavailable", e.to_string())
            },
            // npg's own load, not upstream's fault: worth a retry in a moment.
            UpstreamError::Budget(BudgetError::Busy(_)) => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Busy", e.to_string())
            },
            // Upstream refusing us (401, 403, 410, 429...) is told as is; its failures are a 502.
            UpstreamError::Status(s) if (400..500).contains(&s) => {
                let status = StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY);
                ApiError::new(status, "Upstream refused the request", e.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "Upstream error", e.to_string()),
        }
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> ApiError {
        match e {
            FetchError::NotFound => ApiError::not_found("package not found upstream"),
            FetchError::Upstream(u) => u.into(),
            FetchError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", e.to_string())
            }
        }
    }
}

impl From<TarballError> for ApiError {
    fn from(e: TarballError) -> ApiError {
        match e {
            TarballError::NotFound(reason) => ApiError::not_found(reason),
            TarballError::Blocked {
                name,
                block,
                version: Some(v),
            } => ApiError::blocked_version(name.as_str(), &v, &block),
            TarballError::Blocked {
                name,
                block,
                version: None,
            } => ApiError::blocked_package(name.as_str(), &block),
            TarballError::Unverifiable(e) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "Unverifiable tarball", e.to_string())
            }
            TarballError::Fetch(f) => f.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), reason = %self.reason, "{}", self.error);
        } else if self.status != StatusCode::FORBIDDEN {
            // Blocks are logged once per package and version by the guard instead.
            tracing::info!(status = self.status.as_u16(), reason = %self.reason, "{}", self.error);
        }
        let mut body = self.extra.map(|b| *b).unwrap_or_default();
        body.insert("error".into(), self.error.into());
        body.insert("reason".into(), self.reason.into());
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(phrase) = self.phrase {
            resp.extensions_mut().insert(reason_phrase(&phrase));
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::npm::name::PackageName;
    use crate::proxy::rendered::{DocMeta, Raw, RenderError, render};

    fn status_of(e: FetchError) -> (StatusCode, Option<u64>, String) {
        let api = ApiError::from(e);
        (api.status, api.retry_after, api.reason)
    }

    #[test]
    fn a_full_memory_budget_is_npgs_load_not_a_bad_upstream_body() {
        let busy = RenderError::Budget(BudgetError::Busy(Duration::from_secs(20)));
        let (status, retry, reason) = status_of(busy.into());
        assert_eq!((status, retry), (StatusCode::SERVICE_UNAVAILABLE, Some(1)), "{reason}");
        assert!(!reason.contains("bad body"), "{reason}");
        let huge = RenderError::Budget(BudgetError::TooLarge {
            needs_mib: 300,
            total_mib: 64,
        });
        let (status, _, reason) = status_of(huge.into());
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(reason.contains("RENDER_MEMORY_MB budget"), "{reason}");
    }

    #[test]
    fn a_document_that_is_not_a_packument_is_upstreams_bad_body() {
        let name = PackageName::parse("left-pad").unwrap();
        let raw = Raw {
            plain: Some(bytes::Bytes::from_static(b"[1,2")),
            gz: None,
        };
        let meta = DocMeta {
            etag: None,
            fetched_ms: 0,
            checked_ms: 0,
        };
        let policy = crate::guard::Policy {
            version: 1,
            blocklist: Default::default(),
            malware: Default::default(),
            age: None,
            signatures: Default::default(),
        };
        let Err(err) = render(&name, raw, &meta, &policy, "http://127.0.0.1:1", 0) else {
            panic!("rendered a document that is not JSON")
        };
        let (status, _, reason) = status_of(err.into());
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(reason.starts_with("upstream sent a bad body"), "{reason}");
        let (status, _, _) = status_of(RenderError::NotDecoded.into());
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
