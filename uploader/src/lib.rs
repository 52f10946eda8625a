//! The uploader: ships what the spool holds to object storage and only then lets the spool
//! forget it.
//!
//! What exists today is the status view of the spool's backlog ([`status`]). The upload service
//! itself (stores, retries, ordering) comes with its own issue; see ARCHITECTURE.md.
//!
//! Invariant: the uploader never links ffmpeg and never decodes video; it moves bytes.

pub mod status;
