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

/// A document as upstream sent it: gzip'd (npg keeps that copy as is) or plain.
pub(crate) enum Document {
    Gzip(Bytes),
    Plain(Bytes),
}

/// Reads a document asked for with `Accept-Encoding: gzip`, as it came.
pub(super) async fn read_document(
    resp: reqwest::Response,
    max: usize,
    reservation: &mut Reservation,
) -> Result<Document, BodyError> {
    let encoding = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes().to_ascii_lowercase());
    let document = match encoding.as_deref() {
        None | Some(b"identity") => Document::Plain,
        Some(b"gzip" | b"x-gzip") => Document::Gzip,
        Some(other) => return Err(BodyError::Encoding(String::from_utf8_lossy(other).into_owned())),
    };
    Ok(document(read_within(resp, max, Some(reservation)).await?))
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body cut off: {0}")]
    CutOff(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("body in an encoding npg did not ask for: {0}")]
    Encoding(String),
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
    // Sized from Content-Length when given (bounded: it is upstream's word), so a body is not
    // grown by doubling, with a copy each time.
    let mut body = BytesMut::with_capacity(resp.content_length().unwrap_or(0).min(max as u64) as usize);
    if let Some(r) = reservation.as_deref_mut() {
        r.grow_to(body.capacity()).await?;
    }
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
