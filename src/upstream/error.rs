//! What can go wrong with an upstream request, and how a reqwest error is told without the
//! secrets its URL may carry.

use super::body::BodyError;
use super::origins::OriginRefused;
use super::redact::redact_url;
use crate::budget::BudgetError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    #[error("upstream unreachable: {0}")]
    Network(String),
    #[error("upstream sent a bad body: {0}")]
    Body(String),
    /// A URL (a `dist.tarball`, a redirect) outside the origins npg fetches from.
    #[error("upstream URL refused: {0}")]
    Refused(String),
    /// The document did not fit in npg's memory budget (`Busy`: others hold it now).
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// Not asked: the breaker holds upstream as down after consecutive failures.
    #[error("upstream is down ({reason}); not asked again for {retry_in_seconds} s")]
    Unavailable { reason: String, retry_in_seconds: u64 },
}

impl From<BodyError> for UpstreamError {
    fn from(e: BodyError) -> UpstreamError {
        match e {
            BodyError::Budget(b) => UpstreamError::Budget(b),
            other => UpstreamError::Body(other.to_string()),
        }
    }
}

impl UpstreamError {
    pub(super) fn from_reqwest(e: reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            return UpstreamError::Timeout;
        }
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(refused) = s.downcast_ref::<OriginRefused>() {
                return UpstreamError::Refused(refused.to_string());
            }
            source = s.source();
        }
        UpstreamError::Network(describe(e))
    }
}

/// An error and its causes on one line (reqwest's own message hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `error_chain` of a reqwest error, its URL redacted (user info, query values).
pub fn describe(mut e: reqwest::Error) -> String {
    if let Some(url) = e.url_mut() {
        redact_url(url);
    }
    error_chain(&e)
}
