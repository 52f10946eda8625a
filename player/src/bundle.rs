//! The evidence bundle (`jitrec-player export --bundle`): one tar an outsider checks with
//! `jitrec-verify`, or by hand with common tools, without the player.
//!
//! Layout and file shapes are the format crate's (`jitrec_format::bundle`). What goes in: the
//! session's stored objects byte for byte (the evidence: signed documents and the payloads they
//! commit), the remuxed MP4 and the decoded events (conveniences, re-derivable), the endpoint's
//! public key, the player's enrolment record of that machine and its witness entries for the
//! session, and `SHA256SUMS` over all of it. The session is exported only if it verifies (as an
//! MP4 export), unless asked otherwise, and the bundle records the player's verdict.

use std::io::Write as _;
use std::path::Path;

use chrono::Utc;
use jitrec_bucket::BucketReader;
use jitrec_format::bundle::{
    BUNDLE_ENROLMENT, BUNDLE_EVENTS, BUNDLE_INFO, BUNDLE_KEY, BUNDLE_PLAYER_KEY, BUNDLE_ROOT,
    BUNDLE_SESSION, BUNDLE_SIG, BUNDLE_SIGNED_KIND, BUNDLE_SUMS, BUNDLE_WITNESS, BundleInfo,
    EnrolmentEntry, WitnessEntry, WitnessFile, key_to_pem, sums_line,
};
use jitrec_format::{Event, EventKind, ObjectKey, SessionKey, Sha256Digest};

use crate::export::{ExportError, ExportOptions, Exported};

/// The largest object copied into a bundle (held in memory while it is written).
const MAX_BUNDLED_OBJECT: u64 = 256 * 1024 * 1024;

/// The bundle's README: what is in it and how to check it without jitrec.
const README: &str = include_str!("bundle-readme.md");

/// What was bundled.
#[derive(Debug)]
pub struct Bundled {
    pub export: Exported,
    pub files: usize,
    pub bytes: u64,
}

/// Writes the bundle of the session at `at` to `out` (a tar file).
pub fn bundle(
    src: &dyn BucketReader,
    at: SessionKey,
    out: &Path,
    opts: &ExportOptions,
) -> Result<Bundled, ExportError> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".jitrec-bundle-")
        .tempdir_in(dir)
        .map_err(io(dir))?;
    let done = crate::export::export(src, at, &work.path().join("session.mp4"), opts)?;

    let mut files: Vec<(String, Content)> = Vec::new();
    files.push((
        format!("{BUNDLE_ROOT}README.md"),
        Content::Bytes(README.into()),
    ));

    // The stored objects, as they are in the bucket.
    let prefix = at.prefix();
    let mut witnessed: Vec<WitnessEntry> = Vec::new();
    for key in src.list(&prefix)? {
        let Ok(k) = ObjectKey::parse(&key) else {
            continue;
        };
        let Some(size) = src.size(&k)? else { continue };
        if size > MAX_BUNDLED_OBJECT {
            return Err(ExportError::Changed(format!(
                "{key}: {size} bytes, more than a bundle carries"
            )));
        }
        let bytes = src
            .get(&k, size)?
            .ok_or_else(|| ExportError::Missing(key.clone()))?;
        let rel = key.strip_prefix(&prefix).unwrap_or(&key);
        files.push((format!("{BUNDLE_SESSION}{rel}"), Content::Bytes(bytes)));
    }
    // Everything the player ever saw of the session, gone or not: an object witnessed and
    // then deleted is missing from `session/`, and the verifier says so.
    if let Some(index) = opts.witness.as_deref() {
        for (key, _) in crate::witness::keys_of(index, at.id).map_err(other)? {
            if !key.starts_with(&prefix) {
                continue;
            }
            if let Some(w) = crate::witness::lookup(index, &key).map_err(other)? {
                witnessed.push(WitnessEntry {
                    key,
                    size: w.size,
                    sha256: w.sha256,
                    seen_at: w.seen_at,
                });
            }
        }
    }

    for p in &done.parts {
        let name = p
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "session.mp4".into());
        files.push((
            format!("{BUNDLE_ROOT}{name}"),
            Content::File(p.path.clone()),
        ));
    }
    let events = serde_json::to_vec_pretty(&done.events).map_err(other)?;
    files.push((BUNDLE_EVENTS.into(), Content::Bytes(events)));
    files.push((
        format!("{BUNDLE_ROOT}events.vtt"),
        Content::Bytes(activity_vtt(&done.events).into_bytes()),
    ));

    let header = done.report.key;
    if let Some(k) = &header {
        files.push((
            BUNDLE_KEY.into(),
            Content::Bytes(key_to_pem(k).into_bytes()),
        ));
    }
    let (machine_id, hostname) = done.report.origin.clone().unwrap_or_default();
    let enrolment: Vec<EnrolmentEntry> = match opts.witness.as_deref() {
        Some(index) => crate::enroll::list(index)
            .map_err(other)?
            .into_iter()
            .filter(|k| k.machine_id == machine_id)
            .map(|k| EnrolmentEntry {
                machine_id: k.machine_id,
                hostname: k.hostname,
                fingerprint: k.fingerprint,
                public_key: k.public_key,
                state: serde_json::to_value(k.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                decided_by: k.decided_by,
                decided_at: k.decided_at,
                reason: k.reason,
            })
            .collect(),
        None => Vec::new(),
    };
    files.push((
        BUNDLE_ENROLMENT.into(),
        Content::Bytes(serde_json::to_vec_pretty(&enrolment).map_err(other)?),
    ));
    let head = opts
        .witness
        .as_deref()
        .and_then(|i| crate::witness::head(i).ok())
        .map(|h| format!("{}:{}", h.entries, h.hash));
    let witness = WitnessFile {
        entries: witnessed,
        head,
    };
    files.push((
        BUNDLE_WITNESS.into(),
        Content::Bytes(serde_json::to_vec_pretty(&witness).map_err(other)?),
    ));
    let info = BundleInfo {
        version: 1,
        session_id: at.id,
        source_prefix: prefix.clone(),
        machine_id,
        hostname,
        endpoint_key: header,
        exported_at: Utc::now(),
        exported_by: format!("jitrec-player {}", env!("CARGO_PKG_VERSION")),
        player_report: done.report.to_string(),
        authenticity: done
            .report
            .authenticity
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
    };
    files.push((
        BUNDLE_INFO.into(),
        Content::Bytes(serde_json::to_vec_pretty(&info).map_err(other)?),
    ));

    // The player's key, which signs SHA256SUMS: what an auditor pins.
    let player = opts
        .witness
        .as_deref()
        .map(player_key)
        .transpose()?
        .ok_or_else(|| {
            ExportError::Changed(
                "a bundle is signed by the player: give its index (--index)".into(),
            )
        })?;
    files.push((
        BUNDLE_PLAYER_KEY.into(),
        Content::Bytes(key_to_pem(&player.public()).into_bytes()),
    ));

    // SHA256SUMS last, over everything above, and the player's signature of it.
    let mut sums = String::new();
    for (path, c) in &files {
        sums.push_str(&sums_line(path, &c.sha256()?));
    }
    let sig = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(player.sign_as(BUNDLE_SIGNED_KIND, sums.as_bytes()))
    };
    files.push((BUNDLE_SUMS.into(), Content::Bytes(sums.into_bytes())));
    files.push((
        BUNDLE_SIG.into(),
        Content::Bytes(format!("{sig}\n").into_bytes()),
    ));

    let staged = tempfile::Builder::new()
        .prefix(".jitrec-bundle-")
        .suffix(".tar")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    let mut bytes = 0;
    {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(staged.as_file()));
        let mtime = info.exported_at.timestamp().max(0) as u64;
        for (path, c) in &files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(mtime);
            match c {
                Content::Bytes(b) => {
                    h.set_size(b.len() as u64);
                    bytes += b.len() as u64;
                    tar.append_data(&mut h, path, b.as_slice())
                        .map_err(io(staged.path()))?;
                }
                Content::File(f) => {
                    let file = std::fs::File::open(f).map_err(io(f))?;
                    let len = file.metadata().map_err(io(f))?.len();
                    h.set_size(len);
                    bytes += len;
                    tar.append_data(&mut h, path, file)
                        .map_err(io(staged.path()))?;
                }
            }
        }
        let mut w = tar.into_inner().map_err(io(staged.path()))?;
        w.flush().map_err(io(staged.path()))?;
    }
    staged.as_file().sync_all().map_err(io(staged.path()))?;
    staged.persist(out).map_err(|e| ExportError::Io {
        path: out.to_owned(),
        source: e.error,
    })?;
    Ok(Bundled {
        export: done,
        files: files.len(),
        bytes,
    })
}

/// The player's bundle-signing key, kept beside the index (created at first use). Whoever can
/// write the index's database can sign bundles, as they could rewrite its witness record: the
/// database is the player's trust boundary. Auditors pin the key's fingerprint
/// (`jitrec-player bundle-key`).
pub fn player_key(
    index: &dyn crate::index::Index,
) -> Result<jitrec_format::EndpointSigner, ExportError> {
    use crate::index::SqlValue;
    index
        .exec(
            "CREATE TABLE IF NOT EXISTS player_keys (name TEXT PRIMARY KEY, seed TEXT NOT NULL, \
             created_at BIGINT NOT NULL)",
            &[],
        )
        .map_err(other)?;
    let read = || -> Result<Option<jitrec_format::EndpointSigner>, ExportError> {
        let rows = index
            .query("SELECT seed FROM player_keys WHERE name = 'bundle'", &[])
            .map_err(other)?;
        let Some(seed) = rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::text)
        else {
            return Ok(None);
        };
        let seed: [u8; 32] = hex::decode(seed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| other("the player's key in the index is not 32 bytes of hex"))?;
        Ok(Some(jitrec_format::EndpointSigner::from_seed(seed)))
    };
    if let Some(k) = read()? {
        return Ok(k);
    }
    let mut seed = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut seed).map_err(other)?;
    // Two players creating it at once: the first write wins, both then read it.
    index
        .exec(
            "INSERT INTO player_keys (name, seed, created_at) VALUES ('bundle', $1, $2) \
             ON CONFLICT (name) DO NOTHING",
            &[
                SqlValue::Text(hex::encode(seed)),
                SqlValue::Int(Utc::now().timestamp_micros()),
            ],
        )
        .map_err(other)?;
    read()?.ok_or_else(|| other("the player's key could not be stored"))
}

enum Content {
    Bytes(Vec<u8>),
    File(std::path::PathBuf),
}

impl Content {
    fn sha256(&self) -> Result<Sha256Digest, ExportError> {
        match self {
            Content::Bytes(b) => Ok(Sha256Digest::of(b)),
            Content::File(p) => {
                use sha2::Digest as _;
                use std::io::Read as _;
                let mut f = std::fs::File::open(p).map_err(io(p))?;
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(io(p))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                Ok(Sha256Digest::from_bytes(h.finalize().into()))
            }
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn other(e: impl std::fmt::Display) -> ExportError {
    ExportError::Changed(format!("writing the bundle: {e}"))
}

/// Commands and window titles as a WebVTT track over the whole session (media time): each cue
/// lasts until the next one, at most 5 s.
pub fn activity_vtt(events: &[Event]) -> String {
    let cues: Vec<(u64, String)> = events
        .iter()
        .filter_map(|e| {
            let t = e.media_us.as_micros();
            match &e.event {
                EventKind::ProcessStart(p) if !p.command_line.is_empty() => {
                    Some((t, format!("$ {} ({})", p.command_line, p.user.name)))
                }
                EventKind::WindowFocus(w) | EventKind::WindowTitle(w) if !w.title.is_empty() => {
                    Some((t, format!("[{}]", w.title)))
                }
                _ => None,
            }
        })
        .collect();
    let stamp = crate::export::vtt_time;
    let mut out = String::from("WEBVTT\n");
    for (i, (t, text)) in cues.iter().enumerate() {
        let until = cues
            .get(i + 1)
            .map_or(t + 5_000_000, |n| n.0)
            .clamp(t + 1000, t + 5_000_000);
        // A cue's text may not contain "-->" or a line break.
        let text = text.replace("-->", "->").replace(['\n', '\r'], " ");
        out.push_str(&format!(
            "\n{}\n{} --> {}\n{text}\n",
            i + 1,
            stamp(*t),
            stamp(until)
        ));
    }
    out
}
