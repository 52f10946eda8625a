//! The recorder: turns a JIT elevation into a recorded session in the spool.
//!
//! [`service::Recorder`] waits for JIT ([`jit`], [`control`]), captures the screen ([`x11`]),
//! encodes changed frames ([`encode`]), records process and window events ([`events`]) on the
//! video's clock, and cuts both into chunks ([`chunker`], [`fmp4`]) committed to the spool. At
//! start-up, [`recovery`] closes the sessions a previous run left open. At JIT start, [`notice`]
//! tells the user they are recorded. ARCHITECTURE.md has the map.
//!
//! Invariant: the recorder never talks to the network. Its only output is the spool.

pub mod capture;
pub mod chunker;
pub mod config;
pub mod control;
pub mod encode;
pub mod events;
pub mod failclosed;
pub mod fmp4;
pub mod identity;
pub mod jit;
pub mod join;
pub mod notice;
pub mod pipeline;
pub mod recovery;
pub mod resume;
pub mod seal;
pub mod service;
pub mod windows;
#[cfg(unix)]
pub mod x11;
