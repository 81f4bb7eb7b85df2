//! `GET /.well-known/acme-challenge/<token>`: the HTTP-01 answer, from the shared store so
//! the CA may reach any replica (the TLS-ALPN-01 answer is `crate::tls::challenge`'s).

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::observe::RouteLabel;
use crate::app::App;
use crate::tls::store::Challenge;

pub(crate) async fn http01(State(app): State<App>, Path(token): Path<String>) -> Response {
    let answer = match &app.tls {
        Some(tls) if token.len() <= 256 => tls.store.challenge(Challenge::Http01, &token).await,
        _ => None,
    };
    let mut resp = match answer {
        Some(key_authorization) => ([(header::CONTENT_TYPE, "text/plain")], key_authorization).into_response(),
        None => (StatusCode::NOT_FOUND, "no such challenge").into_response(),
    };
    resp.extensions_mut().insert(RouteLabel("acme-challenge"));
    resp
}
