//! The `jitrec-uploader` program itself, as an operator starts it: it refuses to run without a
//! store, says so when there is no spool, and reports an empty one.

// Unix only: under wine the program would be started by its Linux path, which a Windows process
// cannot run (and cargo does not give its path to a cross-compiled test); the Windows smoke test
// (scripts/windows.sh) runs the real program there instead.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::process::Command;

const UPLOADER: &str = env!("CARGO_BIN_EXE_jitrec-uploader");

#[test]
fn the_program_needs_a_store_and_reports_an_empty_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let out = Command::new(UPLOADER)
        .args(["run", "--spool"])
        .arg(&spool)
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--local-dir"),
        "it says which store is missing: {err}"
    );

    let status = || {
        Command::new(UPLOADER)
            .args(["status", "--spool"])
            .arg(&spool)
            .output()
            .unwrap()
    };
    let out = status();
    assert!(!out.status.success(), "no spool there yet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening spool"), "{err}");

    drop(jitrec_spool::SpoolReader::open(&spool, jitrec_spool::SpoolConfig::default()).unwrap());
    let out = status();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("pending entries:") && l.trim_end().ends_with(" 0")),
        "an empty backlog: {text}"
    );
}
