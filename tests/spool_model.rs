//! A proptest model of the spool: random sequences of recorder and uploader operations,
//! restarts, stray temp files and on-disk corruption run against a real spool directory and
//! against an in-memory model of what the spool promises (docs/spool.md). After every step the
//! two must agree on which sessions exist, what is pending and in which order, and what a read
//! returns; a refused commit must be explained by the size bound; a restart must report exactly
//! the stray temp files and open sessions, and resume each open session at the right chain head.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use jitrec_format::fixtures::{self, session_id};
use jitrec_format::{EndReason, FORMAT_V1, SessionClose, SessionId, Sha256Digest};
use jitrec_spool::{
    DEFAULT_MAX_BYTES, Entry, EntryName, EntryRef, SessionWriter, SpoolConfig, SpoolError,
    SpoolReader, SpoolWriter, framed_len,
};
use proptest::prelude::*;
use tempfile::TempDir;

#[derive(Debug, Clone)]
enum Op {
    Create,
    Init(usize),
    Chunk(usize, usize),
    Close(usize),
    Ack(usize, usize),
    Corrupt(usize, usize, usize),
    StrayTemp,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        2 => any::<usize>().prop_map(Op::Init),
        8 => (any::<usize>(), 1usize..6_000).prop_map(|(s, n)| Op::Chunk(s, n)),
        1 => any::<usize>().prop_map(Op::Close),
        8 => (any::<usize>(), any::<usize>()).prop_map(|(s, i)| Op::Ack(s, i)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(s, i, b)| Op::Corrupt(s, i, b)),
        1 => Just(Op::StrayTemp),
        1 => Just(Op::Restart),
    ]
}

/// What a read of a pending entry must return.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Header(Vec<u8>),
    Init(Vec<u8>),
    Chunk {
        manifest: Vec<u8>,
        video: Vec<u8>,
        events: Vec<u8>,
    },
    Close(Vec<u8>),
}

/// The model of one session still in the spool.
#[derive(Debug)]
struct ModelSession {
    id: SessionId,
    pending: BTreeMap<EntryName, Expected>,
    next_seq: u64,
    next_init: u64,
    head: Sha256Digest,
    closed: bool,
    resumed: bool,
}

struct Harness {
    dir: TempDir,
    config: SpoolConfig,
    writer: Option<SpoolWriter>,
    reader: Option<SpoolReader>,
    writers: BTreeMap<SessionId, SessionWriter>,
    model: Vec<ModelSession>,
    strays: usize,
    created: u64,
}

/// Bytes used under the spool, counted independently of the spool's own accounting.
fn disk_usage(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        fs::read_dir(p)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| {
                        let m = e.metadata().unwrap();
                        if m.is_dir() { walk(&e.path()) } else { m.len() }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    ["sessions", "quarantine", "tmp"]
        .iter()
        .map(|d| walk(&root.join(d)))
        .sum()
}

fn file_of(root: &Path, e: &EntryRef) -> std::path::PathBuf {
    let name = match e.name {
        EntryName::Header => "session.jrs".to_string(),
        EntryName::Init(n) => format!("init-{n:010}.jrs"),
        EntryName::Chunk(n) => format!("chunk-{n:010}.jrs"),
        EntryName::Close => "closed.jrs".to_string(),
    };
    root.join("sessions").join(e.session.to_string()).join(name)
}

impl Harness {
    fn new(max_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig { max_bytes };
        let (writer, rec) = SpoolWriter::open(dir.path(), config).unwrap();
        assert_eq!(rec.temp_files_removed, 0);
        let reader = SpoolReader::open(dir.path(), config).unwrap();
        Harness {
            dir,
            config,
            writer: Some(writer),
            reader: Some(reader),
            writers: BTreeMap::new(),
            model: Vec::new(),
            strays: 0,
            created: 0,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn reader(&self) -> &SpoolReader {
        self.reader.as_ref().unwrap()
    }

    /// Index of a session that still has a live writer, chosen by `i`.
    fn writable(&self, i: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.model.len())
            .filter(|&k| self.writers.contains_key(&self.model[k].id))
            .collect();
        (!open.is_empty()).then(|| open[i % open.len()])
    }

    /// A refused commit is only acceptable when the bound really was in the way.
    fn check_full(&self, err: SpoolError, needed: u64) {
        match err {
            SpoolError::Full { .. } => {
                let used = disk_usage(self.root());
                assert!(
                    used + needed > self.config.max_bytes,
                    "refused as full with {used} used + {needed} needed <= {}",
                    self.config.max_bytes
                );
            }
            other => panic!("unexpected commit error: {other}"),
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Create => {
                self.created += 1;
                let sid = session_id(self.created);
                let header = fixtures::header(sid);
                let bytes = header.to_bytes().unwrap();
                let w = self
                    .writer
                    .as_ref()
                    .unwrap()
                    .create_session(&header)
                    .unwrap();
                assert_eq!(w.head(), Sha256Digest::of(&bytes));
                self.writers.insert(sid, w);
                self.model.push(ModelSession {
                    id: sid,
                    pending: BTreeMap::from([(EntryName::Header, Expected::Header(bytes))]),
                    next_seq: 0,
                    next_init: 0,
                    head: Sha256Digest::of(&fixtures::header(sid).to_bytes().unwrap()),
                    closed: false,
                    resumed: false,
                });
            }
            Op::Init(i) => {
                let Some(k) = self.writable(i) else { return };
                let m = &self.model[k];
                let bytes = fixtures::init_bytes(m.next_init);
                let id = m.next_init;
                let result = self.writers.get_mut(&m.id).unwrap().commit_init(id, &bytes);
                match result {
                    Ok(()) => {
                        let m = &mut self.model[k];
                        m.pending.insert(EntryName::Init(id), Expected::Init(bytes));
                        m.next_init += 1;
                        assert!(disk_usage(self.root()) <= self.config.max_bytes);
                    }
                    Err(SpoolError::InvalidCommit { .. }) if m.resumed => {}
                    Err(e) => self.check_full(e, framed_len(&[bytes.len()])),
                }
            }
            Op::Chunk(i, len) => {
                let Some(k) = self.writable(i) else { return };
                let m = &self.model[k];
                let video: Vec<u8> = (0..len).map(|b| (b as u64 ^ m.next_seq) as u8).collect();
                let (events, count) = jitrec_tests::chunk_events(m.next_seq);
                let manifest = fixtures::manifest(m.id, m.next_seq, m.head, &video, &events, count);
                let manifest_bytes = manifest.to_bytes().unwrap();
                let result = self
                    .writers
                    .get_mut(&m.id)
                    .unwrap()
                    .commit_chunk(&manifest, &video, &events);
                match result {
                    Ok(digest) => {
                        assert!(
                            m.next_init > 0,
                            "a chunk was accepted before its init segment"
                        );
                        assert_eq!(digest, Sha256Digest::of(&manifest_bytes));
                        let m = &mut self.model[k];
                        m.pending.insert(
                            EntryName::Chunk(m.next_seq),
                            Expected::Chunk {
                                manifest: manifest_bytes,
                                video,
                                events,
                            },
                        );
                        m.next_seq += 1;
                        m.head = digest;
                        assert!(disk_usage(self.root()) <= self.config.max_bytes);
                    }
                    Err(SpoolError::InvalidCommit { .. }) if m.resumed || m.next_init == 0 => {}
                    Err(e) => self.check_full(
                        e,
                        framed_len(&[manifest_bytes.len(), video.len(), events.len()]),
                    ),
                }
            }
            Op::Close(i) => {
                let Some(k) = self.writable(i) else { return };
                let m = &mut self.model[k];
                let w = self.writers.remove(&m.id).unwrap();
                assert_eq!((w.head(), w.next_seq()), (m.head, m.next_seq));
                let close = SessionClose {
                    version: FORMAT_V1,
                    session_id: m.id,
                    end_reason: if m.resumed {
                        EndReason::Interrupted
                    } else {
                        EndReason::JitEnded
                    },
                    ended_at: fixtures::t0(),
                    closed_at: fixtures::t0(),
                    chunk_count: m.next_seq,
                    media_end_us: w.last_chunk().map(|c| c.media_end_us).unwrap_or_default(),
                    prev: m.head,
                    note: None,
                    stopped_by: None,
                };
                w.close(&close).unwrap();
                m.pending
                    .insert(EntryName::Close, Expected::Close(close.to_bytes().unwrap()));
                m.closed = true;
            }
            Op::Ack(i, j) => {
                if self.model.is_empty() {
                    return;
                }
                let k = i % self.model.len();
                let m = &self.model[k];
                if m.pending.is_empty() {
                    return;
                }
                let (&name, expected) = m.pending.iter().nth(j % m.pending.len()).unwrap();
                let e = EntryRef {
                    session: m.id,
                    name,
                };
                let got = match self.reader().read(&e).unwrap() {
                    Entry::Header { bytes, .. } => Expected::Header(bytes),
                    Entry::Init { bytes, .. } => Expected::Init(bytes),
                    Entry::Chunk {
                        manifest_bytes,
                        video,
                        events,
                        ..
                    } => Expected::Chunk {
                        manifest: manifest_bytes,
                        video,
                        events,
                    },
                    Entry::Close { bytes, .. } => Expected::Close(bytes),
                };
                assert_eq!(&got, expected, "{e} read back different bytes");
                let result = self.reader().ack(&e);
                if name == EntryName::Close && m.pending.len() > 1 {
                    assert!(
                        matches!(result, Err(SpoolError::AckOrder { .. })),
                        "{result:?}"
                    );
                    return;
                }
                result.unwrap();
                if name == EntryName::Close {
                    let sid = m.id;
                    self.model.remove(k);
                    assert!(!self.root().join("sessions").join(sid.to_string()).exists());
                } else {
                    self.model[k].pending.remove(&name);
                }
            }
            Op::Corrupt(i, j, byte) => {
                if self.model.is_empty() {
                    return;
                }
                let k = i % self.model.len();
                let m = &self.model[k];
                // Payload-bearing entries only, and never the chain head of an open session (the
                // model cannot predict the head a resume recovers once that is gone).
                let candidates: Vec<EntryName> = m
                    .pending
                    .keys()
                    .copied()
                    .filter(|n| match n {
                        EntryName::Init(_) => true,
                        EntryName::Chunk(s) => m.closed || s + 1 != m.next_seq,
                        _ => false,
                    })
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let name = candidates[j % candidates.len()];
                let e = EntryRef {
                    session: m.id,
                    name,
                };
                let path = file_of(self.root(), &e);
                let mut bytes = fs::read(&path).unwrap();
                let at = byte % bytes.len();
                bytes[at] ^= 0x01;
                fs::write(&path, &bytes).unwrap();
                match self.reader().read(&e) {
                    Err(SpoolError::Quarantined { entry, .. }) => assert_eq!(entry, e),
                    other => panic!("a flipped byte at {at} of {e} was not caught: {other:?}"),
                }
                assert!(!path.exists());
                self.model[k].pending.remove(&name);
            }
            Op::StrayTemp => {
                let p = self
                    .root()
                    .join("tmp")
                    .join(format!("999-{}-chunk.jrs.tmp", self.strays));
                fs::write(p, b"half a chunk").unwrap();
                self.strays += 1;
            }
            Op::Restart => {
                self.writers.clear();
                self.writer = None;
                self.reader = None;
                let (writer, rec) = SpoolWriter::open(self.root(), self.config).unwrap();
                assert_eq!(rec.temp_files_removed, self.strays);
                self.strays = 0;
                let mut open: Vec<SessionId> = self
                    .model
                    .iter()
                    .filter(|m| !m.closed)
                    .map(|m| m.id)
                    .collect();
                open.sort();
                assert_eq!(rec.open_sessions, open);
                for m in self.model.iter_mut().filter(|m| !m.closed) {
                    let w = writer.resume_session(m.id).unwrap();
                    assert_eq!(w.head(), m.head, "resumed {} at the wrong chain head", m.id);
                    assert_eq!(w.next_seq(), m.next_seq);
                    m.resumed = true;
                    self.writers.insert(m.id, w);
                }
                self.writer = Some(writer);
                self.reader = Some(SpoolReader::open(self.root(), self.config).unwrap());
            }
        }
    }

    fn check(&self) {
        let mut ids: Vec<SessionId> = self.model.iter().map(|m| m.id).collect();
        ids.sort();
        assert_eq!(self.reader().sessions().unwrap(), ids);
        for m in &self.model {
            let names: Vec<EntryName> = self
                .reader()
                .pending(m.id)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            let expected: Vec<EntryName> = m.pending.keys().copied().collect();
            assert_eq!(names, expected, "pending entries of {}", m.id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_its_model(
        max_bytes in prop_oneof![Just(64 * 1024u64), Just(DEFAULT_MAX_BYTES)],
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut h = Harness::new(max_bytes);
        for op in &ops {
            h.apply(op);
            h.check();
        }
    }
}
