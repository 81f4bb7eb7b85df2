//! Error responses: the right status and a JSON body `{error, reason}` (npm prints `error`),
//! never cacheable, and a log line.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::npm::path::PathError;
use crate::packuments::FetchError;
use crate::tarballs::TarballError;
use crate::upstream::UpstreamError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }

    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not found", reason)
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        let error = match e {
            PathError::Name(_) => "Invalid package name",
            PathError::BadVersion => "Invalid version",
            PathError::BadFile => "Invalid tarball name",
            PathError::Traversal | PathError::NotUtf8 => "Invalid path",
        };
        ApiError::new(StatusCode::BAD_REQUEST, error, e.to_string())
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        match e {
            UpstreamError::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Upstream timeout", e.to_string()),
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
            TarballError::Fetch(f) => f.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), reason = %self.reason, "{}", self.error);
        } else {
            tracing::info!(status = self.status.as_u16(), reason = %self.reason, "{}", self.error);
        }
        let body = serde_json::json!({ "error": self.error, "reason": self.reason });
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}
