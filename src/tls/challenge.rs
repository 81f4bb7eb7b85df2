//! The TLS-ALPN-01 answer: a one-off certificate on the HTTPS port (HTTP-01 is answered by
//! `crate::http::challenge`).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::resolver::Fixed;

pub(crate) const ALPN_ACME: &[u8] = b"acme-tls/1";

/// The TLS configuration answering a TLS-ALPN-01 validation of `domain`, if one is pending.
pub(crate) fn alpn_config(domain: &str, key_authorization: &str) -> anyhow::Result<Arc<ServerConfig>> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
    // `CertifiedKey::new`, not `from_der`: the latter rejects the critical acmeIdentifier.
    let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
    let mut config = super::config_builder().with_cert_resolver(Arc::new(Fixed(certified)));
    config.alpn_protocols = vec![ALPN_ACME.to_vec()];
    Ok(Arc::new(config))
}
