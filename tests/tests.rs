//! jitrec's integration tests: one test binary, one module per area, sharing the harness in
//! `jitrec_tests` (the library beside this file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod spool_crash;
mod spool_model;
