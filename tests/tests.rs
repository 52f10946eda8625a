//! jitrec's integration tests: one test binary, one module per area, sharing the harness in
//! `jitrec_tests` (the library beside this file).
// Tests report seeds and figures on stderr, which cargo shows for failing tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod alerts;
mod authenticity;
mod bucket;
mod demo;
mod discovery;
mod door;
mod e2e;
mod endpoint;
mod events;
mod filmstrip;
mod notice;
mod player;
mod poison;
mod recorder;
mod recorder_process;
mod redaction;
mod report_view;
mod retention;
mod review;
mod scaleout;
mod silent;
mod spool_crash;
mod spool_model;
mod sso;
mod uploader;
