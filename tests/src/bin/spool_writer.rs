//! Helper process for the spool crash test; not part of the product.
//!
//! `jitrec-test-spool-writer run SPOOL BUCKET` does what the recorder and uploader do to a spool,
//! forever, until the test SIGKILLs it: on start it recovers the spool and closes the sessions a
//! previous (killed) run left open as interrupted; then one thread writes sessions of five chunks
//! each while another "uploads" pending entries into a directory bucket and acknowledges them.
//! `... finish SPOOL BUCKET` recovers, closes, uploads everything and exits.
//!
//! It prints a line only after the operation it reports has returned, so the test knows that
//! everything printed was committed before the kill.

// A helper process reports its own failure on stderr, where the test collects it.
#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jitrec_format::EndReason;
use jitrec_spool::{EntryName, SessionWriter, SpoolConfig, SpoolError, SpoolReader, SpoolWriter};
use jitrec_tests::{
    CHUNKS_PER_SESSION, CRASH_MAX_VIDEO, TestBucket, close_session, record_session,
};

/// How often the uploader thread looks at the spool. It polls because this helper is a stand-in
/// for the uploader; the real one is notified of commits.
const UPLOAD_POLL: Duration = Duration::from_millis(5);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, spool, bucket] = args.as_slice() else {
        bail!("usage: jitrec-test-spool-writer run|finish SPOOL BUCKET");
    };
    let spool = PathBuf::from(spool);
    let bucket = TestBucket::new(bucket);
    let (writer, recovery) = SpoolWriter::open(&spool, SpoolConfig::default())?;
    for s in &recovery.open_sessions {
        close_interrupted(writer.resume_session(*s)?)?;
    }
    println!(
        "recovered {} {}",
        recovery.temp_files_removed,
        recovery.open_sessions.len()
    );
    let reader = SpoolReader::open(&spool, SpoolConfig::default())?;
    match mode.as_str() {
        "finish" => {
            while upload_pass(&reader, &bucket)? > 0 {}
            Ok(())
        }
        "run" => {
            thread::spawn(move || {
                loop {
                    if let Err(e) = upload_pass(&reader, &bucket) {
                        eprintln!("uploader failed: {e:#}");
                        std::process::exit(3);
                    }
                    thread::sleep(UPLOAD_POLL);
                }
            });
            loop {
                write_session(&writer)?;
            }
        }
        other => bail!("unknown mode {other:?}"),
    }
}

fn write_session(writer: &SpoolWriter) -> Result<()> {
    record_session(
        writer,
        CHUNKS_PER_SESSION,
        CRASH_MAX_VIDEO,
        |sid, seq, digest| {
            println!("committed {sid} {seq} {digest}");
        },
    )
    .map(|sid| println!("closed {sid} {CHUNKS_PER_SESSION}"))
}

fn close_interrupted(w: SessionWriter) -> Result<()> {
    close_session(w, EndReason::Interrupted)
}

/// Uploads every pending entry once; returns how many were acknowledged.
fn upload_pass(reader: &SpoolReader, bucket: &TestBucket) -> Result<usize> {
    let mut acked = 0;
    for s in reader.sessions()? {
        for e in reader.pending(s)? {
            // The close record goes last: only when a fresh listing shows nothing else pending
            // (a listing is a snapshot and may have missed an entry committed during it).
            if e.name == EntryName::Close && reader.pending(s)?.len() != 1 {
                continue;
            }
            let entry = match reader.read(&e) {
                Ok(entry) => entry,
                Err(SpoolError::NotFound(_)) => continue,
                Err(err) => return Err(err).context(format!("reading {e}")),
            };
            // The header is committed first and removed last, so a session with an entry to
            // ship has one; a session whose directory was just created may not yet.
            let at = match reader.session_key(s) {
                Ok(at) => at,
                // A close record left pending by a crash inside its own acknowledgement (which
                // removes the header first) is already stored: acknowledged again, as the
                // uploader does.
                Err(SpoolError::NotFound(_) | SpoolError::NoHeader(_))
                    if e.name == EntryName::Close =>
                {
                    reader.ack(&e)?;
                    acked += 1;
                    continue;
                }
                Err(SpoolError::NotFound(_) | SpoolError::NoHeader(_)) => continue,
                Err(err) => return Err(err).context(format!("locating {e}")),
            };
            for (key, bytes) in entry.into_objects(&e, at) {
                bucket.put(&key, &bytes)?;
            }
            reader.ack(&e)?;
            acked += 1;
        }
    }
    Ok(acked)
}
