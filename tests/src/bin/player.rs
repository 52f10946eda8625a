//! The real `jitrec-player` program: its `main.rs` compiled again inside the test package, so
//! the tests can start and SIGKILL the very code users run.

#[path = "../../../player/src/main.rs"]
mod player_main;

fn main() -> anyhow::Result<()> {
    player_main::main()
}
