//! Answers to ACME challenges, from the shared store so the CA may reach any replica:
//! HTTP-01 on the plain HTTP port, TLS-ALPN-01 as a one-off certificate on the HTTPS port.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::resolver::Fixed;
use crate::app::App;
use crate::http::observe::RouteLabel;

pub const ALPN_ACME: &[u8] = b"acme-tls/1";

/// `GET /.well-known/acme-challenge/<token>`
pub async fn http01(State(app): State<App>, Path(token): Path<String>) -> Response {
    let answer = match &app.tls {
        Some(tls) if token.len() <= 256 => tls.store.challenge("http01", &token).await,
        _ => None,
    };
    let mut resp = match answer {
        Some(key_authorization) => ([(header::CONTENT_TYPE, "text/plain")], key_authorization).into_response(),
        None => (StatusCode::NOT_FOUND, "no such challenge").into_response(),
    };
    resp.extensions_mut().insert(RouteLabel("acme-challenge"));
    resp
}

/// The TLS configuration answering a TLS-ALPN-01 validation of `domain`, if one is pending.
pub fn alpn_config(domain: &str, key_authorization: &str) -> Result<Arc<ServerConfig>, String> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    // `CertifiedKey::new`, not `from_der`: the latter rejects the critical acmeIdentifier.
    let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
    let mut config = super::config_builder().with_cert_resolver(Arc::new(Fixed(certified)));
    config.alpn_protocols = vec![ALPN_ACME.to_vec()];
    Ok(Arc::new(config))
}
