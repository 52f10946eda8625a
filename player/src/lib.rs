//! The player: reads what the uploader put in the bucket, and answers for it.
//!
//! The bucket itself (S3 or a local directory, and what may be trusted of it) is the
//! `jitrec-bucket` crate; the player holds its reader, and its admin only where retention runs.
//! - [`scan`]: reads one session incrementally and checks it (hash chain, payload hashes); the
//!   one definition of a session's status.
//! - [`verify`]: the command-line verdict built on a full scan.
//! - [`index`]: the index (SQLite or PostgreSQL behind one trait) and its queries.
//! - [`indexer`]: keeps the index up to date with the bucket.
//! - [`api`]: the HTTP API (JSON, media with Range, HLS playlists).
//! - [`export`]: one MP4 per session, remuxed without re-encoding.
//! - [`auth`]: local accounts, sign-ins, roles and the audit log.
//! - [`web`]: the report view's pages and sign-in around the API.
//! - [`retention`]: policies, legal holds, the deletion job and its log.
//!
//! Invariant: the player reads only the bucket (never a spool), and the bucket is the source of
//! truth: anything the player keeps can be rebuilt from it.
//! Invariant: every read of the bucket names its limit before it reads (the bucket is written
//! by the people being recorded).

pub mod api;
pub mod auth;
pub mod bundle;
pub mod enroll;
pub mod export;
pub mod index;
pub mod indexer;
pub mod locate;
pub mod retention;
pub mod scan;
pub mod unseal;
pub mod verify;
pub mod web;
pub mod witness;
