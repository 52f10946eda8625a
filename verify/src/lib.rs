//! Checking an evidence bundle (`jitrec-player export --bundle`) with nothing but the bundle.
//!
//! An auditor receives one tar file. This crate reads it once, front to back, hashing every
//! file as it goes (large files are not kept), and then checks, in this order:
//!
//! 1. **Checksums**: every file is listed in `SHA256SUMS` with its SHA-256, and every listed file
//!    is there: one flipped byte anywhere is found here.
//! 2. **The recording**: the stored documents form an intact chain (the format's own
//!    `ChainVerifier`: links, versions, close record), every payload matches the manifest that
//!    names it, and for a version 2 session every document is signed by the key the header
//!    announces, which is the key in `machine/public-key.pem` and in `BUNDLE.json`.
//! 3. **Derived files**: `events.json` is exactly the events decoded from the payloads.
//! 4. **The player's records**: whether the enrolment record shows the key approved for the
//!    machine, and whether every witnessed object still has the bytes the player first saw.
//!
//! The verdict: *verified* (all of it holds, signed by an approved key), *intact but not
//! vouched for* (unsigned, or the key not approved in the record), or *BROKEN* with each
//! problem. The format crate is the only jitrec code used: the same definitions the player
//! checks with, and nothing of the player itself.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use jitrec_format::bundle::{
    BUNDLE_ENROLMENT, BUNDLE_EVENTS, BUNDLE_INFO, BUNDLE_KEY, BUNDLE_PLAYER_KEY, BUNDLE_ROOT,
    BUNDLE_SESSION, BUNDLE_SIG, BUNDLE_SIGNED_KIND, BUNDLE_SUMS, BUNDLE_WITNESS, BundleInfo,
    EnrolmentEntry, WitnessFile, allowed_name, key_from_pem,
};
use jitrec_format::{
    ChainVerifier, ChunkManifest, EndpointKey, Event, MAX_DOCUMENT_BYTES, Sha256Digest,
    decode_events, validate_events,
};
use sha2::Digest as _;

/// Why the bundle could not be read at all (not: what is wrong with it).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// Files kept in memory: the documents and small records (the rest are only hashed).
const KEEP_LIMIT: u64 = 64 * 1024 * 1024;

/// What all kept files may add up to: a bundle of many large documents is refused, not read
/// into the auditor's memory.
const KEEP_TOTAL: u64 = 512 * 1024 * 1024;

/// One file of the archive.
struct File {
    size: u64,
    sha256: Sha256Digest,
    bytes: Option<Vec<u8>>,
}

/// What checking a bundle found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub session: Option<String>,
    pub files: usize,
    pub chunks: u64,
    /// The key the documents are signed with (version 2).
    pub key: Option<EndpointKey>,
    /// The enrolment record shows the key approved for the machine and host the header names.
    pub approved: Option<String>,
    /// The bundle is signed by the player whose key the auditor pinned (its fingerprint).
    pub anchored: Option<String>,
    /// The player judged the session verified when it exported it.
    pub player_verified: bool,
    /// The machine id and host name the header names.
    origin: Option<(String, String)>,
    pub problems: Vec<String>,
    /// Facts a reader should know that are not problems (e.g. unsigned).
    pub notes: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// Intact, signed by an approved key, anchored to the pinned player, and judged verified
    /// by that player: only then is what the player's records say worth anything.
    pub fn verified(&self) -> bool {
        self.intact()
            && self.key.is_some()
            && self.approved.is_some()
            && self.anchored.is_some()
            && self.player_verified
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Everything printed from the bundle is escaped: its names and records are the bundle
        // writer's text, and must not be able to rewrite the terminal.
        let s = self
            .session
            .as_deref()
            .unwrap_or("(unknown session)")
            .escape_debug();
        if self.verified() {
            writeln!(
                f,
                "{s}: VERIFIED: {} files, {} chunks; signed by key {}; {}; bundle signed by the pinned player key {}",
                self.files,
                self.chunks,
                self.key
                    .map(|k| k.fingerprint().to_string())
                    .unwrap_or_default(),
                self.approved.as_deref().unwrap_or_default().escape_debug(),
                self.anchored.as_deref().unwrap_or_default()
            )?;
        } else if self.intact() {
            writeln!(
                f,
                "{s}: intact but NOT VOUCHED FOR: {} files, {} chunks",
                self.files, self.chunks
            )?;
        } else {
            writeln!(f, "{s}: BROKEN: {} problem(s)", self.problems.len())?;
        }
        for p in &self.problems {
            writeln!(f, "  - {}", p.escape_debug())?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {}", n.escape_debug())?;
        }
        Ok(())
    }
}

/// Reads and checks the bundle in file `path`, including the archive's own framing: every byte
/// that is neither a file's header nor its content (block padding, the end-of-archive blocks)
/// must be zero, so no byte of the file can change unnoticed.
///
/// `player_key` is the fingerprint (SHA-256 of the public key, hex) of the player the auditor
/// trusts, obtained from its operators (`jitrec-player bundle-key`), not from the bundle: without
/// it nothing in the bundle is anchored (anyone can make a self-consistent bundle), and the
/// verdict is at best "not vouched for".
pub fn check_file(path: &std::path::Path, player_key: Option<&str>) -> Result<Report, BundleError> {
    let f = std::fs::File::open(path)?;
    let mut spans = Vec::new();
    let mut r = check_spans(std::io::BufReader::new(f), Some(&mut spans), player_key)?;
    check_framing(path, &mut spans, &mut r)?;
    Ok(r)
}

/// Reads and checks a bundle from a stream (its framing is not checked: see [`check_file`]).
pub fn check(archive: impl Read, player_key: Option<&str>) -> Result<Report, BundleError> {
    let mut r = check_spans(archive, None, player_key)?;
    r.notes
        .push("read from a stream: the archive's framing was not checked".into());
    Ok(r)
}

fn check_framing(
    path: &std::path::Path,
    spans: &mut [(u64, u64)],
    r: &mut Report,
) -> Result<(), BundleError> {
    spans.sort_unstable();
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut next = spans.iter().peekable();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            let pos = at + i as u64;
            while next.peek().is_some_and(|(_, end)| *end <= pos) {
                next.next();
            }
            let inside = next.peek().is_some_and(|(start, _)| *start <= pos);
            if !inside && *b != 0 {
                r.problems.push(format!(
                    "byte {pos} of the archive is outside every file and not zero (the archive was altered)"
                ));
                return Ok(());
            }
        }
        at += n as u64;
    }
    Ok(())
}

fn check_spans(
    archive: impl Read,
    spans: Option<&mut Vec<(u64, u64)>>,
    player_key: Option<&str>,
) -> Result<Report, BundleError> {
    let mut r = Report::default();
    let files = read_all(archive, spans, &mut r)?;
    r.files = files.len();
    check_sums(&files, &mut r);
    check_anchor(&files, player_key, &mut r);
    let info: Option<BundleInfo> = text_of(&files, BUNDLE_INFO, &mut r).and_then(|b| {
        serde_json::from_slice(b)
            .map_err(|e| r.problems.push(format!("BUNDLE.json: {e}")))
            .ok()
    });
    if let Some(i) = &info {
        r.session = Some(i.session_id.to_string());
    }
    let events = check_session(&files, info.as_ref(), &mut r);
    check_events(&files, events.as_deref(), &mut r);
    check_records(&files, info.as_ref(), &mut r);
    Ok(r)
}

fn read_all(
    archive: impl Read,
    mut spans: Option<&mut Vec<(u64, u64)>>,
    r: &mut Report,
) -> Result<BTreeMap<String, File>, BundleError> {
    let mut out = BTreeMap::new();
    let mut kept_total = 0u64;
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries()? {
        let mut entry = entry?;
        if let Some(s) = spans.as_deref_mut() {
            // The header block (its checksum covers every byte of it) and the content.
            let h = entry.raw_header_position();
            s.push((h, h + 512));
            let c = entry.raw_file_position();
            s.push((c, c + entry.size()));
        }
        // Only plain files under exactly the names a bundle has: what `tar xf` writes must be
        // what was checked (no links, no other entry types, no second spelling of a name, no
        // extended headers renaming an entry).
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            r.problems.push(format!(
                "{path:?}: a tar entry of type {:?}; a bundle holds only regular files",
                kind.as_byte() as char
            ));
            continue;
        }
        if entry.path_bytes().as_ref() != entry.header().path_bytes().as_ref()
            || entry.link_name_bytes().is_some_and(|l| !l.is_empty())
        {
            r.problems.push(format!(
                "{path:?}: an entry with an extended name or a link"
            ));
            continue;
        }
        if !allowed_name(&path) {
            r.problems
                .push(format!("{path:?} is not a file of a bundle"));
            continue;
        }
        if out.contains_key(&path) {
            r.problems.push(format!("{path:?} is in the archive twice"));
            continue;
        }
        let size = entry.size();
        let keep = size <= KEEP_LIMIT && !path.ends_with(".mp4") && !path.ends_with(".m4s");
        if keep {
            kept_total += size;
            if kept_total > KEEP_TOTAL {
                r.problems.push(format!(
                    "the bundle's documents add up to more than {KEEP_TOTAL} bytes: not a bundle this verifier reads"
                ));
                return Ok(out);
            }
        }
        let mut hasher = sha2::Sha256::new();
        let mut kept = keep.then(|| Vec::with_capacity(size as usize));
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let got = entry.read(&mut buf)?;
            if got == 0 {
                break;
            }
            n += got as u64;
            hasher.update(&buf[..got]);
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&buf[..got]);
            }
        }
        out.insert(
            path,
            File {
                size: n,
                sha256: Sha256Digest::from_bytes(hasher.finalize().into()),
                bytes: kept,
            },
        );
    }
    Ok(out)
}

fn text_of<'a>(files: &'a BTreeMap<String, File>, path: &str, r: &mut Report) -> Option<&'a [u8]> {
    match files.get(path).and_then(|f| f.bytes.as_deref()) {
        Some(b) => Some(b),
        None => {
            r.problems.push(format!("{path} is missing"));
            None
        }
    }
}

/// The player's signature over `SHA256SUMS`, by the key the auditor pinned.
fn check_anchor(files: &BTreeMap<String, File>, pinned: Option<&str>, r: &mut Report) {
    let (Some(pem), Some(sig), Some(sums)) = (
        files
            .get(BUNDLE_PLAYER_KEY)
            .and_then(|f| f.bytes.as_deref()),
        files.get(BUNDLE_SIG).and_then(|f| f.bytes.as_deref()),
        files.get(BUNDLE_SUMS).and_then(|f| f.bytes.as_deref()),
    ) else {
        r.problems
            .push("the player's key or its signature is missing".into());
        return;
    };
    let key = match std::str::from_utf8(pem)
        .map_err(|e| e.to_string())
        .and_then(key_from_pem)
    {
        Ok(k) => k,
        Err(e) => {
            r.problems.push(format!("player/public-key.pem: {e}"));
            return;
        }
    };
    let sig: Option<[u8; 64]> = std::str::from_utf8(sig)
        .ok()
        .and_then(|t| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        })
        .and_then(|b| b.try_into().ok());
    let message = jitrec_format::signed_message(BUNDLE_SIGNED_KIND, sums);
    if !sig.is_some_and(|s| key.verifies(&message, &s)) {
        r.problems.push(
            "SHA256SUMS is not signed by the player key in the bundle (altered after export)"
                .into(),
        );
        return;
    }
    let fp = key.fingerprint().to_string();
    match pinned {
        Some(p) if p.eq_ignore_ascii_case(&fp) => r.anchored = Some(fp),
        Some(p) => r.problems.push(format!(
            "the bundle is signed by player key {fp}, not by the pinned key {:?}",
            p
        )),
        None => r.notes.push(format!(
            "UNANCHORED: the bundle is signed by player key {fp}; pin the player key you trust \
             (--player-key, from `jitrec-player bundle-key` on that player): without it anyone \
             could have made this bundle"
        )),
    }
}

fn check_sums(files: &BTreeMap<String, File>, r: &mut Report) {
    let Some(sums) = text_of(files, BUNDLE_SUMS, r) else {
        return;
    };
    let Ok(sums) = std::str::from_utf8(sums) else {
        r.problems.push("SHA256SUMS is not text".into());
        return;
    };
    let mut listed = BTreeMap::new();
    for line in sums.lines() {
        let Some((sha, rel)) = line.split_once("  ") else {
            r.problems
                .push(format!("SHA256SUMS: a malformed line {line:?}"));
            continue;
        };
        listed.insert(format!("{BUNDLE_ROOT}{rel}"), sha.to_owned());
    }
    for (path, f) in files {
        if path == BUNDLE_SUMS || path == BUNDLE_SIG {
            continue;
        }
        match listed.get(path) {
            None => r
                .problems
                .push(format!("{path} is not listed in SHA256SUMS")),
            Some(sha) if *sha != f.sha256.to_string() => r.problems.push(format!(
                "{path}: SHA-256 is {}, SHA256SUMS says {sha} (altered)",
                f.sha256
            )),
            Some(_) => {}
        }
    }
    for path in listed.keys() {
        if !files.contains_key(path) {
            r.problems
                .push(format!("{path} is listed in SHA256SUMS but missing"));
        }
    }
}

/// The chain, the payloads, the signatures; returns the decoded events.
fn check_session(
    files: &BTreeMap<String, File>,
    info: Option<&BundleInfo>,
    r: &mut Report,
) -> Option<Vec<Event>> {
    let doc = |name: &str| files.get(&format!("{BUNDLE_SESSION}{name}"));
    let Some(header) = doc("session.json").and_then(|f| f.bytes.as_deref()) else {
        r.problems.push("session/session.json is missing".into());
        return None;
    };
    if header.len() > MAX_DOCUMENT_BYTES {
        r.problems
            .push("session/session.json is too large to be a header".into());
        return None;
    }
    let mut chain = match ChainVerifier::new(header) {
        Ok(c) => c,
        Err(e) => {
            r.problems.push(format!("session header: {e}"));
            return None;
        }
    };
    let h = chain.header().clone();
    r.session.get_or_insert_with(|| h.session_id.to_string());
    r.origin = Some((h.machine.id.clone(), h.machine.hostname.clone()));
    r.key = chain.key().copied();
    if r.key.is_none() {
        r.notes.push(
            "the session is unsigned (format v1): its chain is consistent, but nothing says who wrote it"
                .into(),
        );
    }
    if let Some(i) = info {
        if i.session_id != h.session_id {
            r.problems.push(format!(
                "BUNDLE.json names session {}, the header {}",
                i.session_id, h.session_id
            ));
        }
        if i.endpoint_key != h.endpoint_key {
            r.problems
                .push("BUNDLE.json names another key than the session header".into());
        }
        if i.source_prefix != h.session_key().prefix() {
            r.problems.push(format!(
                "BUNDLE.json says the session came from {:?}, where a session with this header does not belong",
                i.source_prefix
            ));
        }
        r.player_verified = i
            .authenticity
            .as_ref()
            .and_then(|a| a.get("state"))
            .and_then(|s| s.as_str())
            == Some("verified");
        if !r.player_verified {
            r.notes.push(format!(
                "the player did not judge the session verified at export: {}",
                i.authenticity
                    .as_ref()
                    .map_or_else(|| "no judgement".to_owned(), ToString::to_string)
            ));
        }
    }
    match (
        files.get(BUNDLE_KEY).and_then(|f| f.bytes.as_deref()),
        r.key,
    ) {
        (Some(pem), Some(k)) => match std::str::from_utf8(pem)
            .map_err(|e| e.to_string())
            .and_then(key_from_pem)
        {
            Ok(p) if p == k => {}
            Ok(_) => r
                .problems
                .push("machine/public-key.pem is not the key the session header announces".into()),
            Err(e) => r.problems.push(format!("machine/public-key.pem: {e}")),
        },
        (None, Some(_)) => r.problems.push("machine/public-key.pem is missing".into()),
        _ => {}
    }
    let mut events = Vec::new();
    let mut seq = 0u64;
    loop {
        let name = format!("chunks/{seq:010}.json");
        let Some(m_bytes) = doc(&name).and_then(|f| f.bytes.as_deref()) else {
            break;
        };
        let m: ChunkManifest = match chain.push(m_bytes) {
            Ok(m) => m,
            Err(e) => {
                r.problems.push(e.to_string());
                return None;
            }
        };
        let payload = |name: String, size: u64, sha: &Sha256Digest, r: &mut Report| {
            match doc(&name) {
                None => r.problems.push(format!("session/{name} is missing")),
                Some(f) if f.size != size || f.sha256 != *sha => r.problems.push(format!(
                    "session/{name}: {} bytes with SHA-256 {}, the signed manifest says {size} bytes with {sha}",
                    f.size, f.sha256
                )),
                Some(_) => {}
            }
        };
        payload(
            format!("chunks/{seq:010}.m4s"),
            m.video.size,
            &m.video.sha256,
            r,
        );
        payload(
            format!("init/{:010}.mp4", m.init.id),
            m.init.size,
            &m.init.sha256,
            r,
        );
        let ev_name = format!("chunks/{seq:010}.events.zst");
        payload(ev_name.clone(), m.events.size, &m.events.sha256, r);
        if let Some(b) = doc(&ev_name).and_then(|f| f.bytes.as_deref()) {
            match decode_events(b).and_then(|ev| validate_events(&m, &ev).map(|()| ev)) {
                Ok(ev) => events.extend(ev),
                Err(e) => r.problems.push(format!("chunk {seq}: events: {e}")),
            }
        }
        seq += 1;
    }
    r.chunks = seq;
    match doc("closed.json").and_then(|f| f.bytes.as_deref()) {
        None => r
            .problems
            .push("session/closed.json is missing: the session is not complete".into()),
        Some(c) => {
            if let Err(e) = chain.finish(c) {
                r.problems.push(e.to_string());
            }
        }
    }
    Some(events)
}

fn check_events(files: &BTreeMap<String, File>, decoded: Option<&[Event]>, r: &mut Report) {
    let (Some(decoded), Some(listed)) = (decoded, text_of(files, BUNDLE_EVENTS, r)) else {
        return;
    };
    match serde_json::from_slice::<Vec<Event>>(listed) {
        Ok(e) if e == decoded => {}
        Ok(_) => r
            .problems
            .push("events.json differs from the events in the signed payloads".into()),
        Err(e) => r.problems.push(format!("events.json: {e}")),
    }
}

fn check_records(files: &BTreeMap<String, File>, info: Option<&BundleInfo>, r: &mut Report) {
    if let Some(b) = files.get(BUNDLE_WITNESS).and_then(|f| f.bytes.as_deref()) {
        match serde_json::from_slice::<WitnessFile>(b) {
            Ok(w) => {
                let prefix = info.map(|i| i.source_prefix.as_str()).unwrap_or_default();
                for e in &w.entries {
                    let Some(rel) = e.key.strip_prefix(prefix) else {
                        r.problems
                            .push(format!("witness entry {} is not of this session", e.key));
                        continue;
                    };
                    match files.get(&format!("{BUNDLE_SESSION}{rel}")) {
                        None => r.problems.push(format!(
                            "{}: the player witnessed it at {}, it is not in the bundle",
                            e.key, e.seen_at
                        )),
                        Some(f) if f.size != e.size || f.sha256 != e.sha256 => {
                            r.problems.push(format!(
                                "{}: not the bytes the player first saw at {} ({} bytes, {})",
                                e.key, e.seen_at, e.size, e.sha256
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if w.entries.is_empty() {
                    r.notes.push("the bundle carries no witness entries (exported without the player's index)".into());
                }
            }
            Err(e) => r.problems.push(format!("witness.json: {e}")),
        }
    } else {
        r.problems.push(format!("{BUNDLE_WITNESS} is missing"));
    }
    let Some(key) = r.key else { return };
    let fp = key.fingerprint().to_string();
    match files.get(BUNDLE_ENROLMENT).and_then(|f| f.bytes.as_deref()) {
        None => r.problems.push(format!("{BUNDLE_ENROLMENT} is missing")),
        Some(b) => match serde_json::from_slice::<Vec<EnrolmentEntry>>(b) {
            Err(e) => r.problems.push(format!("enrolment.json: {e}")),
            Ok(keys) => match keys.iter().find(|k| {
                k.fingerprint == fp
                    && r.origin
                        .as_ref()
                        .is_some_and(|(m, h)| *m == k.machine_id && *h == k.hostname)
            }) {
                Some(k) if k.state == "approved" => {
                    r.approved = Some(format!(
                        "approved for machine {} ({}) by {} at {}",
                        k.machine_id,
                        k.hostname,
                        k.decided_by,
                        k.decided_at.map(|t| t.to_string()).unwrap_or_default()
                    ))
                }
                Some(k) => r.notes.push(format!(
                    "the enrolment record has the key as {} for machine {}",
                    k.state, k.machine_id
                )),
                None => r.notes.push(
                    "the enrolment record does not have this key for the machine and host the \
                     header names"
                        .into(),
                ),
            },
        },
    }
}
