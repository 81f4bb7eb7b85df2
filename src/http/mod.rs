//! The HTTP face of npg: routing, the responses of each route, errors, the listener.

pub(crate) mod auth;
pub(crate) mod challenge;
pub(crate) mod connection;
pub(crate) mod errors;
pub(crate) mod guard;
pub(crate) mod health;
pub(crate) mod observe;
pub(crate) mod packument;
pub(crate) mod passthrough;
pub(crate) mod phrase;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod status;
pub(crate) mod tarball;
