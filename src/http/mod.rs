//! The HTTP face of npg: routing, the responses of each route, errors, the listener.

pub mod auth;
pub mod challenge;
pub mod connection;
pub mod errors;
pub mod guard;
pub mod health;
pub mod observe;
pub mod packument;
pub mod passthrough;
pub mod phrase;
pub mod routes;
pub mod server;
pub mod tarball;
