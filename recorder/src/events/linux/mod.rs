//! The event sources of a Linux endpoint: process starts and exits from the kernel's
//! process-events connector ([`process`]), the active window and its title from the X server
//! ([`window`]), and the change ledger of accounts, sudoers, services and packages
//! ([`changes`]). Each is an [`super::EventSource`] on its own thread for one session.

pub mod changes;
pub mod process;
pub mod window;
