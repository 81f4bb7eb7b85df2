//! npg's integration tests, one test crate: each module is the black-box tests of one concern,
//! run against the real `npg` binary, a fake upstream on loopback, real redis-server and real
//! npm/pnpm/yarn (`support/`). Filter by module: `cargo test --test it sick_upstream`.

mod support;

mod abbreviated_modified;
mod acme;
mod auth;
mod bad_input;
mod block_messages;
mod blocklist_prerelease;
mod blocklist_vanish;
mod bundle;
mod bypass;
mod changes;
mod check_config;
mod client_caching;
mod clients;
mod cluster;
mod dashboards;
mod early_tarball;
mod fake_upstream;
mod guard;
mod install_scripts;
mod limits;
mod lockfile_check;
mod malware_feed;
mod osv_feed;
mod proxy;
mod redis_eviction;
mod redis_shared;
mod s3_store;
mod sentinel;
mod sick_upstream;
mod signatures;
mod status_page;
mod tarball_hardening;
mod tls_resumption;
mod typosquat;
mod upstream_hardening;
mod warm;
