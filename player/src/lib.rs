//! The player: reads what the uploader put in the bucket, and answers for it.
//!
//! The bucket itself (S3 or a local directory, and what may be trusted of it) is the
//! `jitrec-bucket` crate; the player holds its reader, and its admin only where retention runs.
//! - [`scan`]: reads one session incrementally and checks it (hash chain, payload hashes); the
//!   one definition of a session's status.
//! - [`silence`]: when an open session's recorder has gone quiet (the `silent` status).
//! - [`verify`]: the command-line verdict built on a full scan.
//! - [`index`]: the index (SQLite or PostgreSQL behind one trait) and its queries.
//! - [`indexer`]: keeps the index up to date with the bucket.
//! - [`sweep`]: the slow complete listing behind discovery's cursor, so no session is missed.
//! - [`api`]: the HTTP API (JSON, media with Range, HLS playlists).
//! - [`range`]: the `Range` header of media responses (self-contained: the fuzz crate includes
//!   it by path).
//! - [`export`]: one MP4 per session, remuxed without re-encoding, with a subtitle track of
//!   its events and flags.
//! - [`thumbs`]: the filmstrip's pictures, decoded in a confined child process.
//! - [`auth`]: local accounts, sign-ins, roles and the audit log.
//! - [`oidc`]: sign-in through an OpenID Connect provider (code flow with PKCE).
//! - [`web`]: the report view's pages and sign-in around the API; [`sso`]: its single sign-on
//!   routes.
//! - [`retention`]: policies, legal holds, the deletion job and its log.
//! - [`record`]: what is record and what is cache, and the records' schema migrations.
//! - [`throttle`]: sign-in back-off and the bound on password checks.
//! - [`metrics`]: requests, sign-ins, indexing and retention in Prometheus text format.
//! - [`alerts`]: webhooks and syslog out to the security stack (session start and end, status
//!   changes, rule matches), from a durable outbox.
//!
//! Invariant: the player reads only the bucket (never a spool). The bucket is the source of the
//! recordings: the index's session, chunk and event tables are a cache rebuilt from it. The
//! player's own records (accounts, audit, retention, enrolment, witness; see [`record`]) are
//! not in the bucket and cannot be rebuilt from it.
//! Invariant: every read of the bucket names its limit before it reads (the bucket is written
//! by the people being recorded).
//! Invariant: the player decodes no endpoint-written video in its own process; the filmstrip's
//! decoder runs in a confined child ([`thumbs`]).

pub mod alerts;
pub mod api;
pub mod auth;
pub mod bundle;
pub mod enroll;
pub mod export;
pub mod index;
pub mod indexer;
pub mod locate;
pub mod metrics;
pub mod oidc;
pub mod range;
pub mod record;
pub mod retention;
pub mod review;
pub mod rules;
pub mod scan;
pub mod silence;
pub mod sso;
pub mod sweep;
pub mod throttle;
pub mod thumbs;
pub mod unseal;
pub mod verify;
pub mod web;
pub mod witness;
