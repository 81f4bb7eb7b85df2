//! npm knowledge, pure and unit-tested: names, request paths, packuments, integrity.

pub mod integrity;
pub mod name;
pub mod packument;
pub mod path;
