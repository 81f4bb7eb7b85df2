//! The certificate rustls presents, chosen by SNI and swapped without a restart: background
//! tasks replace the map (arc-swap), `resolve` (synchronous, on every handshake) only reads it.
//! An SNI npg has no certificate for fails the handshake cleanly.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, Default)]
pub(crate) struct Resolver {
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// For clients that send no SNI (IP literals): the first domain's certificate.
    fallback: ArcSwapOption<CertifiedKey>,
}

impl Resolver {
    /// Serves `key` for `names` from now on (the first is the fallback).
    pub(crate) fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.by_name.rcu(|old| {
            let mut map = HashMap::clone(old);
            for n in names {
                map.insert(n.to_ascii_lowercase(), key.clone());
            }
            map
        });
        self.fallback.store(Some(key));
    }

    /// Serves `key` for every name (a static certificate file).
    pub(crate) fn install_any(&self, key: Arc<CertifiedKey>) {
        self.fallback.store(Some(key));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self.by_name.load();
        match hello.server_name() {
            Some(sni) if !map.is_empty() => map.get(&sni.to_ascii_lowercase()).cloned(),
            _ => self.fallback.load_full(),
        }
    }
}

/// Always the same key: the one-off configuration of a TLS-ALPN-01 answer.
#[derive(Debug)]
pub(crate) struct Fixed(pub Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
