//! The Windows service and what it shares with the Windows backends.
//!
//! Windows runs services in session 0, which cannot see the user's desktop, so the service only
//! supervises ([`supervisor`], its state machine, portable and tested everywhere; [`service`],
//! the service-control glue) an agent that records in the console session with the same
//! recorder as Linux. The Windows backends live with their roles: screen capture in
//! `capture::windows`, the Administrators trigger in `trigger::windows`, the control pipe in
//! `control::windows`, the event sources in `events::windows`. Here too: [`sid`] (security
//! identifiers, portable), the machine id ([`machine`]: the registry's `MachineGuid`) and wide
//! strings. `unsafe` is allowed in the Win32 modules only, each call with its `SAFETY` reason.
//! docs/windows.md says what has been verified where.

#[cfg(windows)]
pub mod machine;
#[cfg(windows)]
pub mod service;
pub mod sid;
pub mod supervisor;
#[cfg(windows)]
pub(crate) mod wide;
