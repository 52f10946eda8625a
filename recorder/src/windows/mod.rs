//! The Windows endpoint.
//!
//! Portable parts (compiled and tested on every platform, and under wine): [`sid`] (security
//! identifiers), [`etw_decode`] (kernel process event payloads), [`admin`]'s trigger decision,
//! [`supervisor`] (the service's state machine) and [`ledger`]'s state and diff (its registry
//! reads are Windows-only). Windows-only parts: the live membership reading
//! in [`admin`], the control pipe, the ETW session, WinEvent hooks, screen capture, the machine id
//! (`machine`: the registry's `MachineGuid`) and the service glue. `unsafe` is allowed in those Win32 modules only, each call with its `SAFETY`
//! reason. docs/windows.md says what has been verified where.

pub mod admin;
#[cfg(windows)]
pub mod etw;
pub mod etw_decode;
pub mod ledger;
#[cfg(windows)]
pub mod machine;
#[cfg(windows)]
pub mod pipe;
#[cfg(windows)]
pub mod screen;
#[cfg(windows)]
pub mod service;
pub mod sid;
pub mod supervisor;
#[cfg(windows)]
pub(crate) mod wide;
#[cfg(windows)]
pub mod winevent;
