//! The recorder: turns a JIT elevation into a recorded session in the spool.
//!
//! [`service::Recorder`] waits for JIT ([`trigger`], [`control`]), runs the capture stage
//! ([`capture`]) and records each session through a [`session::SessionRecorder`], which
//! encodes changed frames ([`encode`]), takes process and window events ([`events`]) on the
//! video's clock, and cuts both into chunks ([`chunker`], [`fmp4`]) committed to the spool. The
//! scripted driver ([`scripted`]) records a synthetic screen through the same session recorder.
//! At start-up, [`recovery`] closes the sessions a previous run left open. At JIT start,
//! [`notice`] tells the user they are recorded. [`cost`] counts where the time goes.
//!
//! By role, with one backend per platform under each: `capture::{x11, windows}`,
//! `trigger::{group, windows}`, `control::{unix, windows}`, `events::{linux, windows}`; the
//! Windows service and supervisor are in [`windows`]. [`accounts`] is the one reader of the Unix
//! account files. ARCHITECTURE.md has the map.
//!
//! Invariant: the recorder never talks to the network. Its only output is the spool.

pub mod accounts;
pub mod capture;
pub mod chunker;
pub mod config;
pub mod control;
pub mod cost;
pub mod doorbell;
pub mod encode;
pub mod events;
pub mod failclosed;
pub mod fmp4;
pub mod identity;
pub mod join;
pub mod notice;
pub mod recovery;
pub mod resume;
pub mod scripted;
pub mod seal;
pub mod service;
pub mod session;
pub mod trigger;
pub mod windows;
