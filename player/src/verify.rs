//! Integrity verification of a stored session: the hash chain from header to close record, and
//! every payload (video, events, init segment) against the manifest that names it.
//!
//! The verdict is one of three words a reviewer can act on, with the precise problems behind it:
//! **intact** (closed, chain unbroken, every payload matches), **open** (no close record yet,
//! but everything so far is intact: still recording or uploading), **broken** (something is
//! missing, altered, reordered or forged; each problem names the chunk and what differs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jitrec_format::{ChainVerifier, ObjectKey, SessionClose, SessionId};

use crate::store::{ObjectSource, StoreError};

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
    /// Chunks whose link and payloads were checked and found good.
    pub chunks_verified: u64,
    /// The close record, when present and consistent with the chain.
    pub close: Option<SessionClose>,
    /// Every problem found, in words.
    pub problems: Vec<String>,
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
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Verifies one session. Only a failure to read the bucket is an `Err`; everything wrong with
/// the session itself is in the report.
pub fn verify_session(src: &impl ObjectSource, session: SessionId) -> Result<Report, StoreError> {
    let mut problems = Vec::new();
    let mut manifests = BTreeSet::new();
    for key in src.list(&ObjectKey::session_prefix(session))? {
        match ObjectKey::parse(&key) {
            Ok(ObjectKey::ChunkManifest(_, n)) => {
                manifests.insert(n);
            }
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut report = Report {
        session,
        verdict: Verdict::Broken,
        chunks_verified: 0,
        close: None,
        problems: Vec::new(),
    };
    let Some(header) = src.get(&ObjectKey::SessionHeader(session))? else {
        problems.push("the session header is missing".into());
        report.problems = problems;
        return Ok(report);
    };
    let mut chain = match ChainVerifier::new(&header) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("session header: {e}"));
            report.problems = problems;
            return Ok(report);
        }
    };
    let mut init_digests = BTreeMap::new();
    let mut chain_ok = true;
    for &seq in &manifests {
        let key = ObjectKey::ChunkManifest(session, seq);
        let Some(bytes) = src.get(&key)? else {
            problems.push(format!("chunk {seq}: manifest vanished while verifying"));
            chain_ok = false;
            break;
        };
        let m = match chain.push(&bytes) {
            Ok(m) => m,
            Err(e) => {
                // Past a break the chain cannot vouch for anything, so stop here.
                problems.push(e.to_string());
                chain_ok = false;
                break;
            }
        };
        let mut chunk_ok = true;
        for (what, key) in [
            ("video segment", ObjectKey::ChunkVideo(session, seq)),
            ("events", ObjectKey::ChunkEvents(session, seq)),
        ] {
            match src.get(&key)? {
                None => {
                    problems.push(format!("chunk {seq}: {what} is missing ({key})"));
                    chunk_ok = false;
                }
                Some(b) => {
                    let r = if what == "events" {
                        m.verify_events(&b)
                    } else {
                        m.verify_video(&b)
                    };
                    if let Err(e) = r {
                        problems.push(format!("chunk {seq}: {e}"));
                        chunk_ok = false;
                    }
                }
            }
        }
        let init = match init_digests.get(&m.init.id) {
            Some(r) => Some(r),
            None => {
                let got = src.get(&ObjectKey::Init(session, m.init.id))?;
                init_digests.insert(m.init.id, got);
                init_digests.get(&m.init.id)
            }
        };
        match init.and_then(|b| b.as_ref()) {
            None => {
                problems.push(format!(
                    "chunk {seq}: init segment {} is missing",
                    m.init.id
                ));
                chunk_ok = false;
            }
            Some(b) => {
                if let Err(e) = m.verify_init(b) {
                    problems.push(format!("chunk {seq}: {e}"));
                    chunk_ok = false;
                }
            }
        }
        if chunk_ok {
            report.chunks_verified += 1;
        }
    }
    let close = src.get(&ObjectKey::SessionClosed(session))?;
    report.verdict = match (chain_ok, close) {
        (false, _) => Verdict::Broken,
        (true, None) => Verdict::Open,
        (true, Some(c)) => match chain.finish(&c) {
            Ok(c) => {
                report.close = Some(c);
                Verdict::Intact
            }
            Err(e) => {
                problems.push(e.to_string());
                Verdict::Broken
            }
        },
    };
    if !problems.is_empty() {
        report.verdict = Verdict::Broken;
    }
    report.problems = problems;
    Ok(report)
}

/// Sessions present in the bucket (by their header or any other object), oldest first.
pub fn sessions(src: &impl ObjectSource) -> Result<Vec<SessionId>, StoreError> {
    let mut out = BTreeSet::new();
    for key in src.list(jitrec_format::LAYOUT_PREFIX)? {
        if let Ok(k) = ObjectKey::parse(&key) {
            out.insert(k.session());
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use jitrec_format::fixtures::{self, session_id, stored_session};

    use super::*;
    use crate::store::LocalDir;

    fn store(n: u64, chunks: u64, closed: bool) -> (tempfile::TempDir, LocalDir, SessionId) {
        let tmp = tempfile::tempdir().unwrap();
        let s = session_id(n);
        let stored = stored_session(s, chunks);
        let put = |k: ObjectKey, b: &[u8]| {
            let p = tmp.path().join(k.to_string());
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b).unwrap();
        };
        put(ObjectKey::SessionHeader(s), &stored.header);
        put(ObjectKey::Init(s, 0), &fixtures::init_bytes(0));
        for (seq, (m, v, e)) in stored.chunks.iter().enumerate() {
            put(ObjectKey::ChunkManifest(s, seq as u64), m);
            put(ObjectKey::ChunkVideo(s, seq as u64), v);
            put(ObjectKey::ChunkEvents(s, seq as u64), e);
        }
        if closed {
            put(ObjectKey::SessionClosed(s), &stored.close);
        }
        let dir = LocalDir::new(tmp.path());
        (tmp, dir, s)
    }

    #[test]
    fn intact_and_open_sessions() {
        let (_t, dir, s) = store(1, 3, true);
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Intact, "{r}");
        assert_eq!(r.chunks_verified, 3);
        assert_eq!(sessions(&dir).unwrap(), vec![s]);
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
        let video = t.path().join(ObjectKey::ChunkVideo(s, 1).to_string());
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
        fs::remove_file(t.path().join(ObjectKey::ChunkManifest(s, 2).to_string())).unwrap();
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Broken);
        assert!(
            r.problems[0].contains("expected chunk 2, found chunk 3"),
            "{r}"
        );

        let (t, dir, s) = store(5, 4, true);
        let a = t.path().join(ObjectKey::ChunkManifest(s, 1).to_string());
        let c = t.path().join(ObjectKey::ChunkManifest(s, 2).to_string());
        let (ab, cb) = (fs::read(&a).unwrap(), fs::read(&c).unwrap());
        fs::write(&a, cb).unwrap();
        fs::write(&c, ab).unwrap();
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Broken);
        assert!(
            r.problems[0].contains("expected chunk 1, found chunk 2"),
            "{r}"
        );

        let (t, dir, s) = store(6, 2, true);
        fs::write(
            t.path()
                .join(format!("{}notes.txt", ObjectKey::session_prefix(s))),
            b"x",
        )
        .unwrap();
        let r = verify_session(&dir, s).unwrap();
        assert_eq!(r.verdict, Verdict::Broken);
        assert!(r.problems[0].contains("outside bucket layout"), "{r}");
    }
}
