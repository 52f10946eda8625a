//! The event sources of a Windows endpoint: process starts and exits from a kernel ETW session
//! ([`etw`], payloads decoded by [`etw_decode`]), the foreground window from WinEvent hooks
//! ([`winevent`]) and the registry part of the change ledger ([`ledger`]).
//!
//! The payload decoding and the ledger's state and diff are portable and tested on every
//! platform; the rest is Windows-only. `unsafe` is allowed in the Win32 modules only, each call
//! with its `SAFETY` reason.

#[cfg(windows)]
pub mod etw;
pub mod etw_decode;
pub mod ledger;
#[cfg(windows)]
pub mod winevent;
