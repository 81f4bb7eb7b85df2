//! npm knowledge, pure and unit-tested: names, request paths, packuments, integrity.

pub(crate) mod integrity;
pub mod name;
pub(crate) mod packument;
pub mod path;
