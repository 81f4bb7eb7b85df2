//! npm knowledge, pure and unit-tested: names, request paths, packuments, integrity, and what
//! a tarball runs at install.

pub(crate) mod integrity;
pub mod name;
pub(crate) mod packument;
pub mod path;
pub mod tarball;
