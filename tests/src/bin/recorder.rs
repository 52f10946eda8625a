//! The real `jitrec-recorder` program: its `main.rs` compiled again inside the test package, so
//! the tests can start, kill and restart the very code users run.

#[path = "../../../recorder/src/main.rs"]
mod recorder_main;

fn main() -> anyhow::Result<()> {
    recorder_main::main()
}
