//! Fuzzes the documents a player reads from the bucket, which whoever holds an endpoint's bucket
//! credentials can write: session headers, chunk manifests and close records of format v1 and v2
//! (`from_bytes`, the v2 envelope), the object keys of a listing (`ObjectKey::parse`), endpoint
//! keys as headers and bundles spell them, and `ChainVerifier` walking a session made of them.
//!
//! Input: one mode byte, then documents separated by `\n` (the format's JSON is compact, so a
//! stored document never contains one). The first document starts the chain; the others are
//! pushed in order, the way the player's scan feeds them.
//!
//! Mode bits: 1 = relink: before each document is pushed, its `prev` is set to the chain's head
//! (and a v2 envelope re-signed with the fixtures' key 0, the seeds' key), so mutations reach the
//! checks behind the hash link and the signature (sequence, times, close record) instead of all
//! stopping at the link; 2 = after a push fails, try `resync`, as the scan does after a gap.

#![no_main]

use std::str::FromStr as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jitrec_format::bundle::{allowed_name, key_from_pem, key_to_pem};
use jitrec_format::{
    ChainVerifier, ChunkManifest, EndpointKey, EndpointSigner, MAX_DOCUMENT_BYTES, ObjectKey,
    SessionClose, SessionHeader, Sha256Digest, fixtures,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let docs: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    for d in &docs {
        one_document(d);
        if let Ok(s) = std::str::from_utf8(d) {
            text(s);
        }
    }
    chain(mode, &docs);
});

/// A document parses as at most one type, and what parses re-encodes to bytes that parse back
/// to the same document (the recorder could have written it).
fn one_document(d: &[u8]) {
    let header = SessionHeader::from_bytes(d);
    let manifest = ChunkManifest::from_bytes(d);
    let close = SessionClose::from_bytes(d);
    let parsed = [header.is_ok(), manifest.is_ok(), close.is_ok()];
    assert!(
        parsed.iter().filter(|&&ok| ok).count() <= 1,
        "one document parsed as several types: {parsed:?}"
    );
    if parsed.iter().any(|&ok| ok) {
        assert!(
            d.len() <= MAX_DOCUMENT_BYTES,
            "an oversized document parsed"
        );
    }
    let signer = fixtures::signer(0);
    if let Ok(h) = header {
        let bytes = h
            .to_stored_bytes(Some(&signer))
            .expect("a parsed header re-encodes");
        let back = SessionHeader::from_bytes(&bytes).expect("a re-encoded header parses");
        assert_eq!(back, h, "a header changed through encode and parse");
    }
    if let Ok(m) = manifest {
        let bytes = m
            .to_stored_bytes(Some(&signer))
            .expect("a parsed manifest re-encodes");
        let back = ChunkManifest::from_bytes(&bytes).expect("a re-encoded manifest parses");
        assert_eq!(back, m, "a manifest changed through encode and parse");
    }
    if let Ok(c) = close {
        let bytes = c
            .to_stored_bytes(Some(&signer))
            .expect("a parsed close record re-encodes");
        let back = SessionClose::from_bytes(&bytes).expect("a re-encoded close record parses");
        assert_eq!(back, c, "a close record changed through encode and parse");
    }
}

/// Object keys from a listing and keys as text: one spelling per value.
fn text(s: &str) {
    if let Ok(k) = ObjectKey::parse(s) {
        assert_eq!(
            k.to_string(),
            s,
            "an object key parsed from another spelling"
        );
        assert_eq!(
            k.session_key().prefix(),
            ObjectKey::session_prefix(k.session_key())
        );
    }
    let _ = allowed_name(s);
    if let Ok(k) = EndpointKey::from_str(s) {
        assert_eq!(
            k.to_string(),
            s,
            "an endpoint key parsed from another spelling"
        );
    }
    if let Ok(k) = key_from_pem(s) {
        assert_eq!(
            key_from_pem(&key_to_pem(&k)).ok(),
            Some(k),
            "a PEM key does not round-trip"
        );
    }
}

fn chain(mode: u8, docs: &[&[u8]]) {
    let (relink, resync) = (mode & 1 != 0, mode & 2 != 0);
    let Some((first, rest)) = docs.split_first() else {
        return;
    };
    let Ok(mut v) = ChainVerifier::new(first) else {
        return;
    };
    let header = v.header().clone();
    assert_eq!(
        SessionHeader::from_bytes(first).ok().as_ref(),
        Some(&header),
        "the chain's header is not the parsed header"
    );
    assert_eq!(
        v.key().is_some(),
        header.version == 2,
        "signed iff version 2"
    );
    assert_eq!(v.head(), Sha256Digest::of(first));
    let signer = fixtures::signer(0);
    for d in rest {
        let relinked;
        let d: &[u8] = if relink {
            relinked = relinked_to(d, v.head(), &signer);
            relinked.as_deref().unwrap_or(d)
        } else {
            d
        };
        let (head, seen) = (v.head(), v.chunks_seen());
        match v.push(d) {
            Ok(m) => {
                assert_eq!(m.seq, seen, "a push accepted another sequence number");
                assert_eq!(m.prev, head, "a push accepted another link");
                assert_eq!(m.session_id, header.session_id);
                assert_eq!(m.version, header.version, "a push mixed versions");
                assert_eq!(v.head(), Sha256Digest::of(d));
                assert_eq!(v.chunks_seen(), seen + 1);
                continue;
            }
            Err(_) => {
                // The scan retries a failed link at its next pass: a refusal must leave the
                // chain exactly where it was.
                assert_eq!(
                    (v.head(), v.chunks_seen()),
                    (head, seen),
                    "a failed push moved the chain"
                );
            }
        }
        if let Ok(c) = v.check_close(d) {
            assert_eq!(c.session_id, header.session_id);
            assert_eq!(c.version, header.version, "a close record mixed versions");
            if let Ok(c) = v.finish(d) {
                assert_eq!(c.chunk_count, seen, "finish accepted another chunk count");
                assert_eq!(c.prev, head, "finish accepted another link");
                assert!(
                    c.ended_at >= header.started_at,
                    "a session ended before it started"
                );
            }
            return;
        }
        if resync {
            match v.resync(d) {
                Ok(m) => {
                    assert!(m.seq >= seen, "resync went back");
                    assert_eq!(m.session_id, header.session_id);
                    assert_eq!(m.version, header.version, "resync mixed versions");
                    assert_eq!(v.head(), Sha256Digest::of(d));
                    assert_eq!(v.chunks_seen(), m.seq + 1);
                }
                Err(_) => assert_eq!(
                    (v.head(), v.chunks_seen()),
                    (head, seen),
                    "a failed resync moved the chain"
                ),
            }
        }
    }
}

/// `doc` with its `prev` set to `head`: a v1 document directly, a v2 envelope's document and
/// then the envelope re-signed by `signer`. `None` if it is not a JSON object.
fn relinked_to(doc: &[u8], head: Sha256Digest, signer: &EndpointSigner) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    let obj = v.as_object_mut()?;
    let prev = serde_json::Value::String(head.to_string());
    if let (Some(kind), Some(payload)) = (
        obj.get("document").and_then(|k| k.as_str()),
        obj.get("payload").and_then(|p| p.as_str()),
    ) {
        let kind = kind.to_owned();
        let mut body: serde_json::Value =
            serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        body.as_object_mut()?.insert("prev".into(), prev);
        let body = serde_json::to_vec(&body).ok()?;
        let signature = signer.sign_as(&kind, &body);
        obj.insert("payload".into(), B64.encode(&body).into());
        obj.insert("signature".into(), B64.encode(signature).into());
    } else {
        obj.insert("prev".into(), prev);
    }
    serde_json::to_vec(&v).ok()
}
