//! Alerts out to the security stack (issue 20), through the real `jitrec-player serve` with
//! sessions written into a directory bucket as an uploader would: a webhook receiver on
//! 127.0.0.1 (`jitrec_tests::webhook`) that checks every signature with OpenSSL's HMAC (not
//! the player's code), and Debian's rsyslog on 127.0.0.1 (`jitrec_tests::syslog`) parsing the
//! RFC 5424 structured data. Start, end, status changes (tampered, silent) and rule matches
//! arrive at both with the same ids; a body changed after signing does not verify; both
//! receivers down for 30 s lose nothing; sessions indexed before the alerter first ran are
//! never alerted; a 5xx is retried with the same id, a 4xx refused for good; TLS to rsyslog
//! with its CA, and nothing sent to a receiver whose certificate that CA did not sign.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitrec_format::{ObjectKey, SessionId, fixtures};
use jitrec_tests::child::Served;
use jitrec_tests::syslog::Rsyslog;
use jitrec_tests::webhook::{Receiver, Request};
use jitrec_tests::{TestBucket, session_objects, session_objects_at};

use crate::door::{index_spec, player};

/// How long the tests wait for anything at all (a loaded CI machine), never a synchronisation.
const LIMIT: Duration = Duration::from_secs(90);
/// What the issue asks the sender to survive.
const OUTAGE: Duration = Duration::from_secs(30);
const SECRET: &str = "jitrec-alerts-test-secret-5f1c9a";
const HOOK_PATH: &str = "/hooks/jitrec";

/// A 6-chunk session started just now (2 s chunks), so it is open and followed live.
fn session_now(n: u64) -> (SessionId, fixtures::StoredSession) {
    let now = chrono::Utc::now();
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&(0xa1e7_0000 + n).to_be_bytes());
    let id = SessionId::from_parts(now.timestamp_millis() as u64, random);
    let mut h = fixtures::header(id);
    h.started_at = now - chrono::Duration::seconds(4);
    (id, fixtures::stored_session_with(h, 6, fixtures::events))
}

/// A closed session of `chunks` chunks (each with a `useradd temp{seq}` process start).
fn closed(n: u64, chunks: u64) -> (SessionId, fixtures::StoredSession) {
    let id = fixtures::session_id(n);
    (id, fixtures::stored_session(id, chunks))
}

/// A closed session whose chunk 1 video is not what its manifest hashes: tampered.
fn tampered(n: u64) -> (SessionId, fixtures::StoredSession) {
    let (id, mut s) = closed(n, 3);
    s.chunks[1].1 = b"forged video".to_vec();
    (id, s)
}

fn put_all(b: &TestBucket, s: &fixtures::StoredSession) {
    for (k, v) in session_objects(s) {
        b.put(&k, &v).unwrap();
    }
}

/// Header and init, and chunks `chunks`; the close record too with `close`.
fn put_part(
    b: &TestBucket,
    id: SessionId,
    s: &fixtures::StoredSession,
    chunks: std::ops::Range<u64>,
    close: bool,
) {
    for (k, v) in session_objects_at(s, id.into()) {
        let wanted = match &k {
            ObjectKey::SessionHeader(_) | ObjectKey::Init(..) => chunks.start == 0,
            ObjectKey::ChunkVideo(_, n)
            | ObjectKey::ChunkEvents(_, n)
            | ObjectKey::ChunkManifest(_, n) => chunks.contains(n),
            ObjectKey::SessionClosed(_) => close,
        };
        if wanted {
            b.put(&k, &v).unwrap();
        }
    }
}

/// `jitrec-player serve` with the alert options `alerts`, logging the alerter at info.
fn serve_alerts(bucket: &Path, index: &str, alerts: &[String]) -> Served {
    let served = jitrec_tests::child::serve_http(
        |addr| {
            let mut args: Vec<String> = [
                "serve",
                "--listen",
                &addr.to_string(),
                "--retention-every",
                "0",
                "--bucket-dir",
                &bucket.display().to_string(),
            ]
            .map(String::from)
            .to_vec();
            args.extend(alerts.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut c = player(&args, index);
            c.env("RUST_LOG", "warn,jitrec_player::alerts=info")
                .stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    // Sessions written from here on are new to the alerter.
    wait_for(
        "the alerter to follow the index",
        || served.stderr().contains("alerts: following the index"),
        &served,
    );
    served
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool, served: &Served) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < LIMIT,
            "waited {LIMIT:?} for {what}; the player said:\n{}",
            served.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// HMAC-SHA256 of `data` with `key`, by the `openssl` program (an implementation that is not
/// the player's), in hex.
fn openssl_hmac(key: &str, data: &[u8]) -> String {
    let mut c = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit(' ').next().unwrap().to_owned()
}

/// What a receiver does: the signature of `<timestamp>.<body>` under the secret, checked by
/// OpenSSL, with a timestamp within 5 minutes.
fn verified(r: &Request) -> bool {
    let (Some(ts), Some(sig)) = (
        r.header("x-jitrec-timestamp"),
        r.header("x-jitrec-signature"),
    ) else {
        return false;
    };
    let Ok(t) = ts.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let mut data = ts.as_bytes().to_vec();
    data.push(b'.');
    data.extend_from_slice(&r.body);
    sig == format!("sha256={}", openssl_hmac(SECRET, &data))
}

/// An alert as a receiver saw it: its type, session and id, and the whole of it.
#[derive(Debug, Clone)]
struct Seen {
    kind: String,
    session: String,
    id: String,
    fields: serde_json::Value,
}

/// The alerts the webhook received (every request, retries included).
fn hooked(rx: &Receiver) -> Vec<Seen> {
    rx.requests()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            Seen {
                kind: v["type"].as_str().unwrap().to_owned(),
                session: v["session"]["id"].as_str().unwrap().to_owned(),
                id: v["id"].as_str().unwrap().to_owned(),
                fields: v,
            }
        })
        .collect()
}

/// The alerts rsyslog received.
fn logged(rs: &Rsyslog) -> Vec<Seen> {
    rs.messages()
        .into_iter()
        .map(|m| {
            let sd = &m["sd"]["jitrec@32473"];
            Seen {
                kind: m["msgid"].as_str().unwrap().to_owned(),
                session: sd["session"].as_str().unwrap().to_owned(),
                id: sd["id"].as_str().unwrap().to_owned(),
                fields: m.clone(),
            }
        })
        .collect()
}

fn has(seen: &[Seen], kind: &str, session: SessionId) -> bool {
    let s = session.to_string();
    seen.iter().any(|x| x.kind == kind && x.session == s)
}

fn one<'a>(seen: &'a [Seen], kind: &str, session: SessionId) -> &'a Seen {
    let s = session.to_string();
    seen.iter()
        .find(|x| x.kind == kind && x.session == s)
        .unwrap_or_else(|| panic!("no {kind} of {session} in {seen:#?}"))
}

/// Every id is one alert: a duplicate (at-least-once delivery) has the same type, session
/// and fields; returns how many duplicates there were.
fn duplicates_are_the_same_alert(
    seen: &[Seen],
    fields: impl Fn(&Seen) -> serde_json::Value,
) -> usize {
    let mut by_id: BTreeMap<&str, Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        by_id.entry(&s.id).or_default().push(s);
    }
    let mut dupes = 0;
    for (id, all) in &by_id {
        for s in &all[1..] {
            assert_eq!(fields(s), fields(all[0]), "two alerts with id {id}");
        }
        dupes += all.len() - 1;
    }
    // And one id per session's start or end.
    let mut starts_ends: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for s in seen
        .iter()
        .filter(|s| s.kind != "rule_match" && s.kind != "status_change")
    {
        starts_ends
            .entry((&s.kind, &s.session))
            .or_default()
            .insert(&s.id);
    }
    for (k, ids) in starts_ends {
        assert_eq!(ids.len(), 1, "{k:?} alerted under several ids: {ids:?}");
    }
    dupes
}

#[test]
fn alerts_reach_a_webhook_and_rsyslog_and_outlive_a_30_s_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&dir).unwrap();
    let bucket = TestBucket::new(&dir);
    let index = index_spec("sqlite", tmp.path());

    // Indexed before the alerter ever ran: never alerted (no flood on first start).
    let (old, old_s) = closed(90, 2);
    put_all(&bucket, &old_s);
    let out = player(
        &["reindex", "--bucket-dir", &dir.display().to_string()],
        &index,
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let secret = tmp.path().join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let mut rx = Receiver::start().unwrap();
    let mut rs = Rsyslog::start().unwrap();
    let mut served = serve_alerts(
        &dir,
        &index,
        &[
            "--webhook".into(),
            format!("http://{}{HOOK_PATH}", rx.addr),
            "--webhook-secret-file".into(),
            secret.display().to_string(),
            "--syslog".into(),
            format!("tcp://{}", rs.addr()),
            "--public-url".into(),
            "https://jitrec.example/".into(),
        ],
    );

    let (a, a_s) = closed(1, 3);
    let (c, c_s) = tampered(3);
    let (b, b_s) = session_now(2);
    put_all(&bucket, &a_s);
    put_all(&bucket, &c_s);
    put_part(&bucket, b, &b_s, 0..2, false);

    let first: [(&str, SessionId); 7] = [
        ("session_start", a),
        ("session_end", a),
        ("session_start", c),
        ("status_change", c),
        ("session_end", c),
        ("session_start", b),
        // Its chunks stop: silent (2 s chunks: 11 s after the last).
        ("status_change", b),
    ];
    let all_there =
        |seen: &[Seen], wanted: &[(&str, SessionId)]| wanted.iter().all(|(k, s)| has(seen, k, *s));
    wait_for(
        "start, end and status changes at the webhook and rsyslog",
        || all_there(&hooked(&rx), &first) && all_there(&logged(&rs), &first),
        &served,
    );

    // The webhook: every request signed (checked by OpenSSL), with the fields documented.
    let requests = rx.requests();
    for r in &requests {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", HOOK_PATH));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(verified(r), "a request that does not verify: {r:?}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.header("x-jitrec-alert-id"), v["id"].as_str());
    }
    // An attacker's view: the body changed after signing does not verify, by OpenSSL nor by
    // the player's own verifier (which agrees with OpenSSL on the real one).
    let r = &requests[0];
    let ts = r.header("x-jitrec-timestamp").unwrap();
    let sig = r.header("x-jitrec-signature").unwrap();
    let mut forged = r.clone();
    forged.body = String::from_utf8(r.body.clone())
        .unwrap()
        .replace("alice", "mallory")
        .into_bytes();
    assert_ne!(forged.body, r.body);
    assert!(!verified(&forged));
    let now = chrono::Utc::now();
    let tol = Duration::from_secs(300);
    assert!(jitrec_player::alerts::verify_signature(
        SECRET.as_bytes(),
        ts,
        &r.body,
        sig,
        now,
        tol
    ));
    assert!(!jitrec_player::alerts::verify_signature(
        SECRET.as_bytes(),
        ts,
        &forged.body,
        sig,
        now,
        tol
    ));
    assert!(!jitrec_player::alerts::verify_signature(
        b"not the secret, guessed",
        ts,
        &r.body,
        sig,
        now,
        tol
    ));

    let hooks = hooked(&rx);
    let start = &one(&hooks, "session_start", a).fields;
    assert_eq!(start["version"], 1);
    assert_eq!(start["session"]["user"], "alice");
    assert_eq!(start["session"]["machine"]["hostname"], "ws-0421");
    assert_eq!(
        start["session"]["machine"]["id"],
        "4c4c4544-0042-3510-8048-b4c04f565831"
    );
    assert_eq!(start["session"]["authorized_by"], "bob@example.com");
    assert_eq!(start["session"]["reason"], "INC-4711 printer driver");
    assert_eq!(start["url"], format!("https://jitrec.example/session/{a}"));
    assert!(chrono::DateTime::parse_from_rfc3339(start["at"].as_str().unwrap()).is_ok());
    assert_eq!(start["id"].as_str().unwrap().len(), 32);
    let end = &one(&hooks, "session_end", a).fields;
    assert_eq!(
        (
            end["session"]["status"].as_str(),
            end["session"]["closed"].as_bool()
        ),
        (Some("complete"), Some(true))
    );
    let c_change = &one(&hooks, "status_change", c).fields;
    assert_eq!(c_change["status"]["from"], "recording");
    assert_eq!(c_change["status"]["to"], "tampered");
    assert_eq!(
        one(&hooks, "session_end", c).fields["session"]["status"],
        "tampered"
    );
    let b_change = &one(&hooks, "status_change", b).fields;
    assert_eq!(b_change["status"]["to"], "silent");
    assert_eq!(
        one(&hooks, "session_start", b).fields["session"]["closed"],
        false
    );

    // rsyslog: the same alerts, same ids, fields parsed from the structured data.
    let logs = logged(&rs);
    for (kind, s) in first {
        let (h, l) = (one(&hooks, kind, s), one(&logs, kind, s));
        assert_eq!(h.id, l.id, "{kind} of {s}: one id for both targets");
        let m = &l.fields;
        assert_eq!(m["app"], "jitrec-player");
        assert_eq!(m["msg"], h.fields["message"], "{m:#}");
        let sd = &m["sd"]["jitrec@32473"];
        assert_eq!(sd["type"], kind);
        assert_eq!(sd["user"], "alice");
        assert_eq!(sd["host"], "ws-0421");
        assert_eq!(sd["status"], h.fields["session"]["status"]);
        assert_eq!(sd["url"], format!("https://jitrec.example/session/{s}"));
        // authpriv (10): tampered is err (3), silent warning (4), the rest info (6) or notice.
        let pri: u32 = m["pri"].as_str().unwrap().parse().unwrap();
        assert_eq!(pri / 8, 10, "{m:#}");
    }
    let sd_change = &one(&logs, "status_change", c).fields["sd"]["jitrec@32473"];
    assert_eq!(
        (sd_change["from"].as_str(), sd_change["to"].as_str()),
        (Some("recording"), Some("tampered"))
    );
    assert_eq!(one(&logs, "status_change", c).fields["pri"], "83");

    // Both receivers down for 30 s; meanwhile B ends and D comes and goes.
    rx.stop();
    rs.stop();
    let down = Instant::now();
    let (d, d_s) = closed(4, 2);
    put_part(&bucket, b, &b_s, 2..6, true);
    put_all(&bucket, &d_s);
    while down.elapsed() < OUTAGE {
        assert!(
            served.child.try_wait().unwrap().is_none(),
            "the player exited during the outage:\n{}",
            served.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        served
            .stderr()
            .contains("alerts: the receiver does not take alerts"),
        "{}",
        served.stderr()
    );
    rx.restart().unwrap();
    rs.restart().unwrap();
    let back = Instant::now();
    let after: [(&str, SessionId); 3] =
        [("session_end", b), ("session_start", d), ("session_end", d)];
    wait_for(
        "what was queued during the outage",
        || all_there(&hooked(&rx), &after) && all_there(&logged(&rs), &after),
        &served,
    );
    eprintln!(
        "after a {OUTAGE:?} outage, everything queued arrived {:.1} s after the receivers were back",
        back.elapsed().as_secs_f64()
    );
    let hooks = hooked(&rx);
    let logs = logged(&rs);
    assert_eq!(
        one(&hooks, "session_end", b).fields["session"]["status"],
        "complete"
    );
    let hook_dupes = duplicates_are_the_same_alert(&hooks, |s| s.fields.clone());
    let log_dupes = duplicates_are_the_same_alert(&logs, |s| s.fields["sd"].clone());
    eprintln!("duplicates (same id, same alert): webhook {hook_dupes}, syslog {log_dupes}");
    for seen in [&hooks, &logs] {
        assert!(
            !seen.iter().any(|s| s.session == old.to_string()),
            "a session indexed before the alerter first ran was alerted"
        );
    }

    // Rule matches: the built-in rules flag `useradd` (every chunk of these fixtures has one).
    let flags_table = {
        let idx = jitrec_player::index::open(&index).unwrap();
        idx.query("SELECT 1 FROM flags LIMIT 1", &[]).is_ok()
    };
    let started = Instant::now();
    let matched = |seen: &[Seen]| has(seen, "rule_match", a) && has(seen, "rule_match", d);
    while !(matched(&hooked(&rx)) && matched(&logged(&rs))) {
        assert!(
            started.elapsed() < LIMIT,
            "no rule_match of {a} and {d} at both receivers (the index {} a flags table: the \
             detection rules are {}):\n{}",
            if flags_table { "has" } else { "has no" },
            if flags_table {
                "there, the alerts failed"
            } else {
                "not there yet"
            },
            served.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let hooks = hooked(&rx);
    let m = &one(&hooks, "rule_match", a).fields;
    assert!(!m["flag"]["rule"].as_str().unwrap().is_empty(), "{m:#}");
    assert!(
        m["flag"]["text"].as_str().unwrap().contains("useradd temp"),
        "{m:#}"
    );
    assert!(
        ["info", "low", "medium", "high", "critical"]
            .contains(&m["flag"]["severity"].as_str().unwrap()),
        "{m:#}"
    );
    let l = one(&logged(&rs), "rule_match", a).fields.clone();
    assert_eq!(l["sd"]["jitrec@32473"]["rule"], m["flag"]["rule"]);
    assert_eq!(l["sd"]["jitrec@32473"]["text"], m["flag"]["text"]);
    served.child.kill().unwrap();
}

/// On PostgreSQL: a receiver answering 503 gets the same alert again (same id, new valid
/// signature) until it takes it; a 400 is final (asked once, never again); the rest goes on.
#[test]
fn alerts_on_postgresql_are_retried_on_5xx_and_refused_on_4xx() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&dir).unwrap();
    let bucket = TestBucket::new(&dir);
    let index = index_spec("postgresql", tmp.path());
    let secret = tmp.path().join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let rx = Receiver::start().unwrap();
    rx.answer(503);
    let served = serve_alerts(
        &dir,
        &index,
        &[
            "--webhook".into(),
            format!("http://{}{HOOK_PATH}", rx.addr),
            "--webhook-secret-file".into(),
            secret.display().to_string(),
        ],
    );
    let (a, a_s) = closed(11, 2);
    put_all(&bucket, &a_s);
    let a_start = |r: &Request| {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["type"] == "session_start" && v["session"]["id"] == a.to_string()
    };
    wait_for(
        "the start retried after 503s",
        || rx.requests().iter().filter(|r| a_start(r)).count() >= 3,
        &served,
    );
    let tries: Vec<Request> = rx.requests().into_iter().filter(|r| a_start(r)).collect();
    assert!(tries.iter().all(verified), "every retry signed anew");
    assert!(
        tries.windows(2).all(|w| w[0].body == w[1].body),
        "the same alert each time"
    );
    // The rest waits behind it, in order.
    assert!(rx.requests().iter().all(a_start));
    rx.answer(200);
    wait_for(
        "the start and end taken",
        || {
            let h = hooked(&rx);
            has(&h, "session_start", a) && has(&h, "session_end", a)
        },
        &served,
    );

    // A receiver refusing one alert (400): refused for good, the next ones delivered.
    let (c, c_s) = tampered(13);
    let c_text = c.to_string();
    rx.answer_with(move |r| {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if v["type"] == "session_start" && v["session"]["id"] == c_text.as_str() {
            400
        } else {
            200
        }
    });
    put_all(&bucket, &c_s);
    wait_for(
        "the tampered session's status and end after its refused start",
        || {
            let h = hooked(&rx);
            has(&h, "status_change", c) && has(&h, "session_end", c)
        },
        &served,
    );
    let (e, e_s) = closed(14, 1);
    put_all(&bucket, &e_s);
    wait_for(
        "a later session's end",
        || has(&hooked(&rx), "session_end", e),
        &served,
    );
    let refused = rx.requests().iter().filter(|r| r.answered == 400).count();
    assert_eq!(refused, 1, "a refused alert is not sent again");
    assert!(
        served.stderr().contains("refused the alert for good"),
        "{}",
        served.stderr()
    );
}

/// RFC 5425: TLS to rsyslog, trusting its CA only; a player given another CA sends nothing
/// (and says why) while the first one delivers.
#[test]
fn syslog_over_tls_checks_the_receivers_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&dir).unwrap();
    let bucket = TestBucket::new(&dir);
    let rs = Rsyslog::start_tls().unwrap();
    let ca = rs.ca.clone().unwrap();
    let tls = format!("tls://{}", rs.addr());
    let served = serve_alerts(
        &dir,
        &index_spec("sqlite", tmp.path()),
        &[
            "--syslog".into(),
            tls.clone(),
            "--syslog-ca".into(),
            ca.display().to_string(),
        ],
    );
    // Another player, its own index, trusting a CA that did not sign rsyslog's certificate.
    let other = Rsyslog::start_tls().unwrap();
    let wrong_dir = tmp.path().join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    let wrong = serve_alerts(
        &dir,
        &index_spec("sqlite", &wrong_dir),
        &[
            "--syslog".into(),
            tls,
            "--syslog-ca".into(),
            other.ca.clone().unwrap().display().to_string(),
        ],
    );
    let (a, a_s) = closed(21, 2);
    put_all(&bucket, &a_s);
    wait_for(
        "start and end over TLS",
        || {
            let l = logged(&rs);
            has(&l, "session_start", a) && has(&l, "session_end", a)
        },
        &served,
    );
    wait_for(
        "the other player to say it cannot deliver",
        || {
            wrong
                .stderr()
                .contains("alerts: the receiver does not take alerts")
        },
        &wrong,
    );
    let said = wrong.stderr();
    assert!(said.contains("TLS handshake"), "{said}");
    let l = logged(&rs);
    // What the first player sent (one start and one end), nothing from the other: its alerts
    // would have the same ids (the same sessions from the same bucket), not the same PROCID.
    let pid = served.child.id().to_string();
    assert!(
        l.iter().all(|s| s.fields["procid"] == pid.as_str()),
        "{l:#?}"
    );
    let ids: BTreeSet<(&str, &str)> = l
        .iter()
        .filter(|s| s.session == a.to_string() && s.kind.starts_with("session_"))
        .map(|s| (s.kind.as_str(), s.id.as_str()))
        .collect();
    assert_eq!(ids.len(), 2, "{l:#?}");
    let sd = &one(&l, "session_start", a).fields["sd"]["jitrec@32473"];
    assert_eq!(sd["user"], "alice");
}
