//! The player: reads what the uploader put in the bucket, and answers for it.
//!
//! What exists today is integrity verification of stored sessions ([`verify`]) against a bucket
//! kept as a local directory ([`store::LocalDir`]). The index, the HTTP API, the report view,
//! export and retention come with their own issues; see ARCHITECTURE.md.
//!
//! Invariant: the player reads only the bucket (never a spool), and the bucket is the source of
//! truth: anything the player keeps can be rebuilt from it.

pub mod store;
pub mod verify;
