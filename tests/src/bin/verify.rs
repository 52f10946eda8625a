//! The real `jitrec-verify` program, its `main.rs` compiled again inside the test package (like
//! the other programs), so the tests run the very code an auditor runs.

#[path = "../../../verify/src/main.rs"]
mod verify_main;

fn main() -> anyhow::Result<()> {
    verify_main::main()
}
