//! Reading upstream bodies whole: bounded in size, and in memory by the budget.

use bytes::{Bytes, BytesMut};
use reqwest::header;

use super::error::describe;
use crate::budget::{BudgetError, Reservation};

/// A response's `ETag`, if it has a readable one.
pub(crate) fn etag_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body cut off: {0}")]
    CutOff(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// Reads a whole body, refusing more than `max` bytes, so no response grows without bound in
/// memory; the error says which limit was hit or what broke.
pub(crate) async fn read_bounded(resp: reqwest::Response, max: usize) -> Result<Bytes, BodyError> {
    read_within(resp, max, None).await
}

/// `read_bounded`, holding `reservation` of the memory budget for what has arrived.
pub(super) async fn read_within(
    mut resp: reqwest::Response,
    max: usize,
    mut reservation: Option<&mut Reservation>,
) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| BodyError::CutOff(describe(e)))? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.reserve(chunk.len());
        if let Some(r) = reservation.as_deref_mut() {
            // What is allocated, not what is filled: a buffer grows by doubling.
            r.grow_to(body.capacity()).await?;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
