//! Integrity verification of a stored session: the hash chain from header to close record, and
//! every payload (video, events, init segment) against the manifest that names it.
//!
//! The checking itself is [`crate::scan::SessionScan`], the same code that derives the status
//! the index shows. The verdict is one of three words a reviewer can act on, with the precise
//! problems behind it:
//! **intact** (closed, chain unbroken, every payload matches), **open** (no close record yet,
//! but everything so far is intact: still recording or uploading), **broken** (something is
//! missing, altered, reordered or forged; each problem names the chunk and what differs).

use std::collections::BTreeSet;
use std::fmt;

use jitrec_format::{ObjectKey, SessionClose, SessionId, SessionKey};

use crate::scan::{SessionScan, Status};
use jitrec_bucket::{BucketError, BucketReader};

/// The overall result for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Intact,
    Open,
    Broken,
}

/// What verification found.
#[derive(Debug, Clone)]
pub struct Report {
    pub session: SessionId,
    pub verdict: Verdict,
    /// The status the index shows for the session (for an open session, as if still arriving).
    pub status: Status,
    /// Chunks whose link and payloads were checked and found good.
    pub chunks_verified: u64,
    /// The close record, when present and consistent with the chain.
    pub close: Option<SessionClose>,
    /// Every problem found, in words.
    pub problems: Vec<String>,
    /// Whether the signatures vouch for the session (only known with the index: see
    /// [`verify_and_record`]).
    pub authenticity: Option<crate::enroll::Authenticity>,
    /// The key the session is signed with (version 2).
    pub key: Option<jitrec_format::EndpointKey>,
    /// The machine id and host name the header names, once it was read.
    pub origin: Option<(String, String)>,
}

impl Report {
    /// Intact, and signed by the approved key of the machine it claims.
    pub fn is_verified(&self) -> bool {
        self.verdict == Verdict::Intact
            && self
                .authenticity
                .as_ref()
                .is_some_and(crate::enroll::Authenticity::is_verified)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verdict {
            Verdict::Intact => write!(
                f,
                "{}: intact: {} chunks, hash chain and payloads verified",
                self.session, self.chunks_verified
            )?,
            Verdict::Open => write!(
                f,
                "{}: open (no close record yet): {} chunks verified so far",
                self.session, self.chunks_verified
            )?,
            Verdict::Broken => write!(
                f,
                "{}: BROKEN: {} problem(s); {} chunks verified",
                self.session,
                self.problems.len(),
                self.chunks_verified
            )?,
        }
        // Authenticity on its own line: an intact chain of an unsigned or unapproved session
        // proves only that it is consistent, not who wrote it.
        let signer = |f: &mut fmt::Formatter<'_>| match &self.key {
            Some(k) => write!(f, " (key {})", k.fingerprint()),
            None => Ok(()),
        };
        match (&self.authenticity, &self.key) {
            (Some(a @ crate::enroll::Authenticity::Verified { .. }), _) => {
                write!(f, "\n  authenticity: {}", a.label())?;
                signer(f)?;
                write!(f, ": signed by the approved key of its machine")?;
            }
            (Some(crate::enroll::Authenticity::Unsigned), _) | (None, None) => write!(
                f,
                "\n  authenticity: UNSIGNED (format v1): the chain is consistent, but anyone who could write the bucket could have written it"
            )?,
            (Some(crate::enroll::Authenticity::NotEnrolled { why, .. }), _) => {
                write!(f, "\n  authenticity: NOT VERIFIED")?;
                signer(f)?;
                write!(f, ": not the machine's key: {why}")?;
            }
            (Some(a), _) => {
                write!(f, "\n  authenticity: NOT VERIFIED: {}", a.label())?;
                signer(f)?;
            }
            (None, Some(_)) => {
                write!(f, "\n  authenticity: NOT CHECKED: signed")?;
                signer(f)?;
                write!(
                    f,
                    "; whether that is the machine's approved key needs the player's index (--record)"
                )?;
            }
        }
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Verifies one session. Only a failure to read the bucket is an `Err`; everything wrong with
/// the session itself is in the report.
pub fn verify_session(
    src: &dyn BucketReader,
    session: impl Into<SessionKey>,
) -> Result<Report, BucketError> {
    let mut scan = SessionScan::new(session);
    scan.advance(src, true, &mut Vec::new())?;
    Ok(report(&scan))
}

/// Verifies one session and records the result in the index, so the status shown everywhere
/// reflects the bucket as it is now (tampering after indexing included). A session that verifies
/// clean loses an earlier tampered or gap status; one still arriving keeps the indexer's view
/// (recording or interrupted).
pub fn verify_and_record(
    src: &dyn BucketReader,
    index: &dyn crate::index::Index,
    session: SessionId,
) -> Result<Report, VerifyError> {
    crate::witness::init(index).map_err(|e| VerifyError::Evidence(e.to_string()))?;
    crate::enroll::init(index).map_err(|e| VerifyError::Evidence(e.to_string()))?;
    crate::locate::init(index)?;
    // Where the index found it; or, for a session it has not discovered, wherever it is.
    let at = match crate::locate::lookup(index, session)? {
        Some(at) => at,
        None => crate::locate::find(src, session)?.unwrap_or_else(|| session.into()),
    };
    let mut scan = SessionScan::new(at);
    scan.advance_witnessed(src, Some(index), true, &mut Vec::new())?;
    let mut report = report(&scan);
    report.authenticity = Some(
        match scan.claim() {
            Some(c) => crate::enroll::judge(index, &c, scan.seen()),
            None => Ok(crate::enroll::Authenticity::Unknown),
        }
        .map(|a| a.given(report.status))
        .map_err(|e| VerifyError::Evidence(e.to_string()))?,
    );
    if let Some(mut row) = index.session(session)? {
        let problems = scan.problems().to_vec();
        let status = if problems.is_empty() {
            match row.status {
                Status::Tampered | Status::Gap => report.status,
                s => s,
            }
        } else {
            report.status
        };
        // The indexer's silence flag is its clock's judgement, which a one-shot scan has not:
        // kept while the session is open and nothing worse was found (the next pass renews or
        // clears it).
        let mut problems = problems;
        if !scan.is_closed() && status == Status::Silent {
            problems.extend(
                row.problems
                    .iter()
                    .filter(|p| p.kind == crate::scan::ProblemKind::Silent)
                    .cloned(),
            );
        }
        if status != row.status || problems != row.problems {
            tracing::info!(%session, from = %row.status, to = %status, "verify changed the session's status");
            row.status = status;
            row.problems = problems;
            index.apply(&crate::index::Batch {
                sessions: vec![row],
                ..Default::default()
            })?;
        }
    }
    Ok(report)
}

/// Why a verification could not be completed (not: what it found wrong).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] BucketError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error("the witness or enrolment record: {0}")]
    Evidence(String),
}

/// The report of a finished scan.
pub fn report(scan: &SessionScan) -> Report {
    let problems: Vec<String> = scan.problems().iter().map(|p| p.message.clone()).collect();
    let verdict = if !problems.is_empty() {
        Verdict::Broken
    } else if scan.is_closed() {
        Verdict::Intact
    } else {
        Verdict::Open
    };
    Report {
        session: scan.session(),
        verdict,
        status: scan.status(false),
        chunks_verified: scan.chunks_verified(),
        close: scan.close().cloned(),
        problems,
        authenticity: None,
        key: scan.key().copied(),
        origin: scan.claim().map(|c| (c.machine_id, c.hostname)),
    }
}

/// Sessions present in the bucket, in both layouts (by their header or any other object),
/// oldest first.
pub fn sessions(src: &dyn BucketReader) -> Result<Vec<SessionKey>, BucketError> {
    let mut out = BTreeSet::new();
    for prefix in [jitrec_format::LAYOUT_PREFIX, jitrec_format::MACHINES_PREFIX] {
        for key in src.list(prefix)? {
            if let Ok(k) = ObjectKey::parse(&key) {
                out.insert((k.session(), k.session_key()));
            }
        }
    }
    Ok(out.into_iter().map(|(_, k)| k).collect())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use jitrec_format::fixtures::{self, session_id, stored_session};

    use super::*;
    use jitrec_bucket::DirBucket;

    fn store(n: u64, chunks: u64, closed: bool) -> (tempfile::TempDir, DirBucket, SessionId) {
        let tmp = tempfile::tempdir().unwrap();
        let s = session_id(n);
        let stored = stored_session(s, chunks);
        let put = |k: ObjectKey, b: &[u8]| {
            let p = tmp.path().join(k.to_string());
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b).unwrap();
        };
        put(ObjectKey::SessionHeader(s.into()), &stored.header);
        put(ObjectKey::Init(s.into(), 0), &fixtures::init_bytes(0));
        for (seq, (m, v, e)) in stored.chunks.iter().enumerate() {
            put(ObjectKey::ChunkManifest(s.into(), seq as u64), m);
            put(ObjectKey::ChunkVideo(s.into(), seq as u64), v);
            put(ObjectKey::ChunkEvents(s.into(), seq as u64), e);
        }
        if closed {
            put(ObjectKey::SessionClosed(s.into()), &stored.close);
        }
        let dir = DirBucket::new(tmp.path());
        (tmp, dir, s)
    }

    #[test]
    fn intact_and_open_sessions() {
        let (_t, dir, s) = store(1, 3, true);
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Intact, "{r}");
        assert_eq!(r.chunks_verified, 3);
        assert_eq!(sessions(&dir).unwrap(), vec![SessionKey::from(s)]);
        // A dot-file is a store's in-flight temp file, not an object.
        fs::write(
            dir.root().join(ObjectKey::session_prefix(s)).join(".tmp-1"),
            b"x",
        )
        .unwrap();
        assert_eq!(verify_session(&dir, s).unwrap().verdict, Verdict::Intact);

        let (_t, dir, s) = store(2, 2, false);
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Open, "{r}");
        assert_eq!(r.chunks_verified, 2);
    }

    #[test]
    fn flipped_byte_missing_chunk_and_reordered_manifests_are_pinpointed() {
        let (t, dir, s) = store(3, 4, true);
        let video = t
            .path()
            .join(ObjectKey::ChunkVideo(s.into(), 1).to_string());
        let mut b = fs::read(&video).unwrap();
        b[0] ^= 1;
        fs::write(&video, b).unwrap();
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Broken);
        assert_eq!(r.problems.len(), 1, "{r}");
        assert!(
            r.problems[0].starts_with("chunk 1: video segment: SHA-256"),
            "{r}"
        );
        assert_eq!(r.chunks_verified, 3);

        let (t, dir, s) = store(4, 4, true);
        fs::remove_file(
            t.path()
                .join(ObjectKey::ChunkManifest(s.into(), 2).to_string()),
        )
        .unwrap();
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Broken);
        assert!(
            r.problems[0].contains("expected chunk 2, found chunk 3"),
            "{r}"
        );
        // A whole chunk missing is a gap; the chain is re-anchored after it, so chunk 3 and the
        // close record are still checked.
        assert_eq!(r.problems.len(), 1, "{r}");
        assert_eq!(r.status, Status::Gap);
        assert_eq!(r.chunks_verified, 3);

        let (t, dir, s) = store(5, 4, true);
        let a = t
            .path()
            .join(ObjectKey::ChunkManifest(s.into(), 1).to_string());
        let c = t
            .path()
            .join(ObjectKey::ChunkManifest(s.into(), 2).to_string());
        let (ab, cb) = (fs::read(&a).unwrap(), fs::read(&c).unwrap());
        fs::write(&a, cb).unwrap();
        fs::write(&c, ab).unwrap();
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Broken);
        assert!(
            r.problems[0].contains("chunk 1: the manifest stored for it is chunk 2"),
            "{r}"
        );
        assert_eq!(r.status, Status::Tampered);

        let (t, dir, s) = store(6, 2, true);
        fs::write(
            t.path()
                .join(format!("{}notes.txt", ObjectKey::session_prefix(s))),
            b"x",
        )
        .unwrap();
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Broken);
        assert!(r.problems[0].contains("outside the bucket layout"), "{r}");
    }
}
