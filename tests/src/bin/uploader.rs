//! The real `jitrec-uploader` program: its `main.rs` compiled again inside the test package, so
//! the tests can start, kill and restart the very code users run (cargo exposes only a package's
//! own binaries to its tests).

#[path = "../../../uploader/src/main.rs"]
mod uploader_main;

fn main() -> anyhow::Result<()> {
    uploader_main::main()
}
