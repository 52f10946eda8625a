//! Fuzzes `jitrec-verify` on an evidence bundle: a tar the auditor received from someone else,
//! read by `check` (a stream) and `check_file` (a file, with the archive's framing checked).
//!
//! Input: the archive's bytes. The seed is a real, verified bundle (`examples/seeds.rs`); its
//! player key is the fixtures' key 9, pinned here so mutations can reach the verified verdict.

#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use jitrec_format::fixtures;
use libfuzzer_sys::fuzz_target;

/// A file of this process's own (libFuzzer runs inputs one at a time in one process).
fn scratch() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("jitrec-fuzz-bundle-{}.tar", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let pinned = fixtures::signer(9).public().fingerprint().to_string();

    let unpinned = jitrec_verify::check(data, None);
    if let Ok(r) = &unpinned {
        // Anyone can make a self-consistent bundle: without a pinned player key it is never
        // more than "not vouched for".
        assert!(!r.verified(), "verified without a pinned player key");
        assert!(r.anchored.is_none());
        let _ = r.to_string();
    }
    let Ok(r) = jitrec_verify::check(data, Some(&pinned)) else {
        return;
    };
    let _ = r.to_string();
    if r.verified() {
        assert!(r.intact() && r.key.is_some() && r.approved.is_some());
        assert_eq!(r.anchored.as_deref(), Some(pinned.as_str()));
    }
    let unpinned = unpinned.expect("the same bytes read once already");
    // Pinning only decides the anchor: what the bundle holds is read the same way.
    assert_eq!(
        (&r.session, r.files, r.chunks, r.key),
        (
            &unpinned.session,
            unpinned.files,
            unpinned.chunks,
            unpinned.key
        )
    );

    // From a file, the same checks plus the framing: every problem of the stream is found.
    std::fs::write(scratch(), data).expect("the scratch file is writable");
    let f = jitrec_verify::check_file(scratch(), Some(&pinned))
        .expect("a file the stream read whole reads whole");
    let from_file: BTreeSet<&String> = f.problems.iter().collect();
    for p in &r.problems {
        assert!(from_file.contains(p), "check_file missed {p:?}");
    }
    assert!(
        !f.verified() || r.verified(),
        "the file verified where the stream did not"
    );
});
