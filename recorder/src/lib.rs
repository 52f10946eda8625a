//! The recorder: turns a JIT elevation into a recorded session in the spool.
//!
//! What exists today is the part every start of the recorder begins with: closing the sessions a
//! previous run left open because it died ([`recovery`]). Capture, encoding, chunking and the
//! JIT trigger come with their own issues; see ARCHITECTURE.md for where they will live.
//!
//! Invariant: the recorder never talks to the network. Its only output is the spool.

pub mod capture;
pub mod chunker;
pub mod config;
#[cfg(unix)]
pub mod control;
pub mod encode;
pub mod fmp4;
pub mod jit;
pub mod pipeline;
pub mod recovery;
pub mod service;
#[cfg(unix)]
pub mod x11;
