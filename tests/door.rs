//! The player's door, tried as an attacker and as a careless client would, against the real
//! `jitrec-player serve` on SQLite and on PostgreSQL: a burst of wrong passwords (429s with
//! `Retry-After`, bounded memory, the right password still works after the back-off), oversized
//! names, playback fetched around the page (audited all the same), filtered listings, cookie and
//! cache headers, CSRF, and accounts disabled or removed while signed in.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitrec_format::SessionId;
use jitrec_format::fixtures;
use jitrec_tests::child::Reaped;
use jitrec_tests::{TestBucket, http, postgres, session_objects};

use crate::retention::ok;

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");
const LIMIT: Duration = Duration::from_secs(120);
pub(crate) const ADMIN: (&str, &str) = ("door-admin", "correct horse battery");
const REVIEWER: (&str, &str) = ("door-reviewer", "staple battery horse");

/// Where the tests keep the index: a SQLite file, or a fresh PostgreSQL database.
pub(crate) fn index_spec(backend: &str, dir: &Path) -> String {
    match backend {
        "sqlite" => dir.join("index.sqlite3").display().to_string(),
        _ => postgres::new_database("jitrec_door").unwrap(),
    }
}

/// `jitrec-player ARGS --index SPEC` (SPEC: a SQLite path or a URL).
pub(crate) fn player(args: &[&str], index: &str) -> Command {
    let mut c = Command::new(PLAYER);
    c.args(args)
        .args(["--index", index])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

pub(crate) fn add_user(index: &str, (name, password): (&str, &str), role: &str) {
    use std::io::Write;
    let mut add = player(&["user", "add", name, "--role", role], index)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(add.stdin.take().unwrap(), "{password}").unwrap();
    assert!(add.wait().unwrap().success());
}

/// `jitrec-player serve` on a bucket directory (no --plain-http-cookies: the defaults).
pub(crate) fn serve(bucket: &Path, index: &str) -> (Reaped, SocketAddr) {
    let mut served = jitrec_tests::child::serve_http(
        |addr| {
            let mut c = player(
                &[
                    "serve",
                    "--listen",
                    &addr.to_string(),
                    "--retention-every",
                    "0",
                    "--bucket-dir",
                    &bucket.display().to_string(),
                ],
                index,
            );
            c.stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    served.wait_ok("/login", LIMIT);
    (served.child, served.addr)
}

pub(crate) fn sign_in_request(addr: SocketAddr, user: &str, password: &str) -> http::Response {
    http::request(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        serde_json::json!({"user": user, "password": password})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

/// A signed-in client: its cookie and CSRF token.
pub(crate) struct Client {
    addr: SocketAddr,
    pub(crate) cookie: String,
    csrf: String,
}

impl Client {
    pub(crate) fn sign_in(addr: SocketAddr, (user, password): (&str, &str)) -> Client {
        let r = sign_in_request(addr, user, password);
        assert_eq!(r.status, 200, "{}", r.text());
        let cookie = r
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .unwrap()
            .to_owned();
        let csrf = r.json().unwrap()["csrf"].as_str().unwrap().to_owned();
        Client { addr, cookie, csrf }
    }

    pub(crate) fn get(&self, path: &str) -> http::Response {
        http::request(self.addr, "GET", path, &[("Cookie", &self.cookie)], &[]).unwrap()
    }

    fn post(&self, path: &str, csrf: &str) -> http::Response {
        http::request(
            self.addr,
            "POST",
            path,
            &[("Cookie", &self.cookie), ("X-CSRF-Token", csrf)],
            &[],
        )
        .unwrap()
    }

    /// The audit log, newest first, every page of it.
    pub(crate) fn audit(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        let mut path = "/api/audit?limit=100".to_owned();
        loop {
            let r = self.get(&path);
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json().unwrap();
            all.extend(v["entries"].as_array().unwrap().iter().cloned());
            match v["next_before"].as_str() {
                Some(b) => path = format!("/api/audit?limit=100&before={b}"),
                None => return all,
            }
        }
    }
}

/// The player's peak resident memory (VmHWM), in KiB.
pub(crate) fn peak_kib(child: &Reaped) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn sign_in_under_attack(backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let index = index_spec(backend, tmp.path());
    add_user(&index, ADMIN, "admin");
    let (child, addr) = serve(&bucket, &index);
    let before = peak_kib(&child);

    // A user name of 1.5 MB is refused unread; one that fits the request is not hashed (it is
    // no account's), and audited only in part.
    let huge = "x".repeat(1_500_000);
    let body = serde_json::json!({"user": huge, "password": "whatever"}).to_string();
    match http::request(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    ) {
        Ok(r) => assert!(matches!(r.status, 400 | 413), "{}", r.text()),
        // Refused and closed before the body was taken: the answer itself may be lost to
        // the reset, which is still a refusal unread.
        Err(e) => assert!(
            format!("{e:#}").contains("closed the connection mid-body"),
            "{e:#}"
        ),
    }
    let long = format!("{}\u{202e}", "y".repeat(6000));
    assert_eq!(sign_in_request(addr, &long, "whatever").status, 401);

    // 200 wrong passwords for the admin, 20 at a time from one address.
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(move || {
                    (0..10)
                        .map(|n| {
                            let r = sign_in_request(addr, ADMIN.0, &format!("wrong guess {n}"));
                            (r.status, r.header("retry-after").map(str::to_owned))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let throttled = statuses.iter().filter(|(s, _)| *s == 429).count();
    let refused = statuses.iter().filter(|(s, _)| *s == 401).count();
    eprintln!("{backend}: 200 wrong sign-ins: {refused} answered 401, {throttled} answered 429");
    assert_eq!(throttled + refused, 200, "{statuses:?}");
    // Five free failures, then one more check per expired wait: nearly all are turned away
    // before any password is hashed.
    assert!(throttled >= 180, "{statuses:?}");
    assert!(
        statuses.iter().filter(|(s, _)| *s == 429).all(|(_, ra)| ra
            .as_deref()
            .and_then(|r| r.parse::<u64>().ok())
            .is_some_and(|r| r >= 1)),
        "every 429 says when to come back"
    );
    let after = peak_kib(&child);
    eprintln!("{backend}: player peak memory {before} KiB before, {after} KiB after the burst");
    assert!(after < 200 * 1024, "peak {after} KiB");

    // The right password works once the wait is over (polled: the wait is the player's).
    let started = Instant::now();
    let admin = loop {
        let r = sign_in_request(addr, ADMIN.0, ADMIN.1);
        if r.status == 200 {
            break Client::sign_in(addr, ADMIN);
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(started.elapsed() < LIMIT, "still throttled after {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "{backend}: the right password was accepted {:.1} s after the burst",
        started.elapsed().as_secs_f64()
    );

    let log = admin.audit();
    let failed = log
        .iter()
        .filter(|e| e["action"] == "sign_in_failed" && e["user"] == ADMIN.0)
        .count();
    assert_eq!(failed, refused, "every password checked is audited, once");
    assert!(
        log.iter().all(|e| e["user"].as_str().unwrap().len() < 700
            && e["detail"].as_str().unwrap().len() < 700),
        "audit fields are bounded"
    );
    assert!(
        log.iter().any(|e| e["detail"]
            .as_str()
            .unwrap()
            .contains("next attempt refused")),
        "the audit log says when a wait began"
    );
    assert!(
        log.iter().any(|e| e["action"] == "sign_in_failed"
            && e["user"].as_str().unwrap().ends_with("(6003 bytes in all)")),
        "the long name is recorded, cut"
    );
    drop(child);
}

#[test]
fn a_burst_of_wrong_passwords_is_throttled_on_sqlite() {
    sign_in_under_attack("sqlite");
}

#[test]
fn a_burst_of_wrong_passwords_is_throttled_on_postgresql() {
    sign_in_under_attack("postgresql");
}

/// A closed v1 session of 3 chunks in the bucket.
fn one_session(bucket: &Path) -> SessionId {
    let b = TestBucket::new(bucket);
    let id = fixtures::session_id(1);
    let s = fixtures::stored_session(id, 3);
    for (k, v) in session_objects(&s) {
        b.put(&k, &v).unwrap();
    }
    id
}

fn playback_is_audited(backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let id = one_session(&bucket);
    let index = index_spec(backend, tmp.path());
    add_user(&index, ADMIN, "admin");
    add_user(&index, REVIEWER, "reviewer");
    let (child, addr) = serve(&bucket, &index);
    let reviewer = Client::sign_in(addr, REVIEWER);
    let started = Instant::now();
    while reviewer.get(&format!("/api/sessions/{id}")).status != 200 {
        assert!(started.elapsed() < LIMIT, "the session was not indexed");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The media, fetched around the page: no detail call, straight to playlist and chunks.
    let playlist = reviewer.get(&format!("/api/sessions/{id}/playlist.m3u8"));
    assert_eq!(playlist.status, 200);
    assert_eq!(playlist.header("cache-control"), Some("no-store"));
    for n in 0..3 {
        let chunk = reviewer.get(&format!("/api/sessions/{id}/chunks/{n}.m4s"));
        assert_eq!(chunk.status, 200, "{}", chunk.text());
        assert_eq!(chunk.header("cache-control"), Some("no-store"));
    }
    // Another sign-in of the same account is another watcher.
    let again = Client::sign_in(addr, REVIEWER);
    assert_eq!(
        again.get(&format!("/api/sessions/{id}/init/0.mp4")).status,
        200
    );
    // A filtered listing says what was looked for.
    assert_eq!(
        reviewer
            .get("/api/sessions?user=alice&status=complete")
            .status,
        200
    );
    // A state change with a wrong CSRF token of the right length is refused.
    let wrong = "0".repeat(reviewer.csrf.len());
    assert_eq!(
        reviewer
            .post(&format!("/api/sessions/{id}/verify"), &wrong)
            .status,
        403
    );
    assert_eq!(
        reviewer
            .post(&format!("/api/sessions/{id}/verify"), &reviewer.csrf)
            .status,
        200
    );
    let admin = Client::sign_in(addr, ADMIN);
    let log = admin.audit();
    let plays: Vec<_> = log
        .iter()
        .filter(|e| e["action"] == "play" && e["target"] == id.to_string())
        .collect();
    assert_eq!(plays.len(), 2, "one play record per sign-in: {plays:?}");
    assert!(plays.iter().all(|e| e["user"] == REVIEWER.0));
    assert!(
        plays
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("playlist")),
        "{plays:?}"
    );
    let list = log
        .iter()
        .find(|e| e["action"] == "list")
        .expect("the filtered listing is audited");
    assert_eq!(list["user"], REVIEWER.0);
    let filters = list["target"].as_str().unwrap();
    assert!(
        filters.contains("user=\"alice\"") && filters.contains("status=\"complete\""),
        "{filters}"
    );
    drop(child);
}

#[test]
fn playback_fetched_around_the_page_is_audited_on_sqlite() {
    playback_is_audited("sqlite");
}

#[test]
fn playback_fetched_around_the_page_is_audited_on_postgresql() {
    playback_is_audited("postgresql");
}

#[test]
fn a_disabled_or_removed_account_is_signed_out_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let index = index_spec("sqlite", tmp.path());
    add_user(&index, ADMIN, "admin");
    add_user(&index, REVIEWER, "reviewer");
    let (child, addr) = serve(&bucket, &index);

    // The sign-in cookie is Secure unless plain HTTP was asked for.
    let r = sign_in_request(addr, REVIEWER.0, REVIEWER.1);
    let cookie = r.header("set-cookie").unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));

    let reviewer = Client::sign_in(addr, REVIEWER);
    assert_eq!(reviewer.get("/api/me").status, 200);
    let out = ok(player(&["user", "disable", REVIEWER.0], &index));
    assert!(out.contains("disabled"), "{out}");
    assert_eq!(
        reviewer.get("/api/me").status,
        401,
        "the sign-in ended at once"
    );
    assert_eq!(sign_in_request(addr, REVIEWER.0, REVIEWER.1).status, 401);
    let listed = ok(player(&["user", "list"], &index));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(REVIEWER.0) && l.contains("disabled since")),
        "{listed}"
    );

    ok(player(&["user", "enable", REVIEWER.0], &index));
    let reviewer = Client::sign_in(addr, REVIEWER);
    ok(player(&["user", "remove", REVIEWER.0], &index));
    assert_eq!(reviewer.get("/api/me").status, 401);
    assert_eq!(sign_in_request(addr, REVIEWER.0, REVIEWER.1).status, 401);
    assert!(!ok(player(&["user", "list"], &index)).contains(REVIEWER.0));
    // An unknown account is an error, not a silent success.
    let out = player(&["user", "disable", "nobody"], &index)
        .output()
        .unwrap();
    assert!(!out.status.success());

    let admin = Client::sign_in(addr, ADMIN);
    let log = admin.audit();
    for action in ["user_disable", "user_enable", "user_remove"] {
        assert!(
            log.iter()
                .any(|e| e["action"] == action && e["target"] == REVIEWER.0),
            "{action} is audited: {log:?}"
        );
    }
    drop(child);
}

#[test]
fn plain_http_cookies_are_refused_off_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let index = index_spec("sqlite", tmp.path());
    let out = player(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--plain-http-cookies",
            "--bucket-dir",
            &tmp.path().display().to_string(),
        ],
        &index,
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--plain-http-cookies is for a loopback"),
        "{err}"
    );
}

/// PostgreSQL over TLS, with the password from a file: the real program against a server that
/// accepts only TLS and scram-sha-256 (a certificate of its own test CA). With the CA and the
/// password file it works; without the CA (the system's roots do not know it), with TLS turned
/// off, or with a wrong password it is refused; a password in the URL still works, with a
/// warning that says where it belongs.
#[test]
fn the_index_is_reached_over_tls_with_a_password_from_a_file() {
    let srv = postgres::tls_server();
    let tmp = tempfile::tempdir().unwrap();
    let pwfile = tmp.path().join("pg-password");
    std::fs::write(&pwfile, format!("{}\n", srv.password)).unwrap();
    let wrong = tmp.path().join("wrong-password");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let status = |url: &str, env: &[(&str, &Path)]| {
        let mut c = Command::new(PLAYER);
        c.args(["status", "--index", url])
            .env("RUST_LOG", "warn")
            .env_remove("PGPASSWORD")
            .env_remove("JITREC_INDEX_PASSWORD_FILE")
            .env_remove("JITREC_INDEX_CA_FILE")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let ca = srv.ca.as_path();
    let (ok, text) = status(
        &srv.url("require"),
        &[
            ("JITREC_INDEX_PASSWORD_FILE", &pwfile),
            ("JITREC_INDEX_CA_FILE", ca),
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("index (postgresql)"), "{text}");
    assert!(!text.contains("password is in the index URL"), "{text}");

    let (ok, text) = status(
        &srv.url("require"),
        &[("JITREC_INDEX_PASSWORD_FILE", &pwfile)],
    );
    assert!(!ok, "a certificate of an unknown CA is accepted: {text}");
    let (ok, text) = status(
        &srv.url("disable"),
        &[
            ("JITREC_INDEX_PASSWORD_FILE", &pwfile),
            ("JITREC_INDEX_CA_FILE", ca),
        ],
    );
    assert!(!ok, "a plain connection got through: {text}");
    assert!(text.contains("pg_hba"), "{text}");
    let (ok, text) = status(
        &srv.url("require"),
        &[
            ("JITREC_INDEX_PASSWORD_FILE", &wrong),
            ("JITREC_INDEX_CA_FILE", ca),
        ],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("password authentication failed"), "{text}");

    let in_url = srv.url("require").replacen(
        &format!("{}@", postgres::ROLE),
        &format!("{}:{}@", postgres::ROLE, srv.password),
        1,
    );
    let (ok, text) = status(&in_url, &[("JITREC_INDEX_CA_FILE", ca)]);
    assert!(ok, "{text}");
    assert!(text.contains("JITREC_INDEX_PASSWORD_FILE"), "{text}");
}

/// The player's records through `backup` and `restore`, from SQLite into PostgreSQL: accounts
/// (a disabled one too), retention policies, the enrolment of a machine key, the witness record
/// and the bundle key all come back as they were; the restored password signs in; a restore into
/// a database that already holds records, or of a backup naming a table that is not a record,
/// is refused.
#[test]
fn the_records_survive_backup_and_restore_across_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let b = TestBucket::new(&bucket);
    let signer = fixtures::signer(5);
    for s in [
        fixtures::stored_session(fixtures::session_id(1), 2),
        fixtures::stored_session_v2(fixtures::session_id(2), 2, &signer),
    ] {
        for (k, v) in session_objects(&s) {
            b.put(&k, &v).unwrap();
        }
    }
    let from = index_spec("sqlite", tmp.path());
    add_user(&from, ADMIN, "admin");
    add_user(&from, REVIEWER, "reviewer");
    ok(player(&["user", "disable", REVIEWER.0], &from));
    let with_bucket = |args: &[&str], index: &str| {
        let mut c = player(args, index);
        c.arg("--bucket-dir").arg(&bucket);
        c
    };
    ok(with_bucket(&["reindex"], &from));
    ok(player(
        &[
            "retention",
            "set",
            "--level",
            "computer",
            "--name",
            "ws-0421",
            "--keep-days",
            "7",
        ],
        &from,
    ));
    let show = |index: &str| {
        [
            ok(player(&["user", "list"], index)),
            ok(player(&["retention", "list"], index)),
            ok(player(&["machines", "list"], index)),
            ok(player(&["witness", "head"], index)),
            ok(player(&["bundle-key"], index)),
        ]
    };
    let before = show(&from);
    assert!(before[2].contains("Pending"), "{}", before[2]);

    let file = tmp.path().join("records.jsonl");
    let out = ok(player(
        &["backup", "-o", &file.display().to_string()],
        &from,
    ));
    assert!(out.contains("rows of"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("\"logins\""), "sign-ins are not backed up");

    let to = postgres::new_database("jitrec_restore").unwrap();
    let out = ok(player(&["restore", &file.display().to_string()], &to));
    assert!(out.contains("restored"), "{out}");
    assert_eq!(show(&to), before, "every record as it was");
    let idx = jitrec_player::index::open(&to).unwrap();
    assert!(
        jitrec_player::auth::sign_in(idx.as_ref(), ADMIN.0, ADMIN.1)
            .unwrap()
            .is_some()
    );
    assert!(
        jitrec_player::auth::sign_in(idx.as_ref(), REVIEWER.0, REVIEWER.1)
            .unwrap()
            .is_none(),
        "the disabled account stays disabled"
    );
    let log = jitrec_player::auth::audit_log(idx.as_ref(), 500, None).unwrap();
    assert!(log.iter().any(|e| e.action == "restore"), "{log:?}");
    assert!(log.iter().any(|e| e.action == "user_disable"), "{log:?}");
    // The sessions come back from the bucket, checked against the restored witness record.
    ok(with_bucket(&["reindex"], &to));
    let out = ok(player(&["witness", "check"], &to));
    assert!(out.contains("intact"), "{out}");

    // Never merged into records already there.
    let out = player(&["restore", &file.display().to_string()], &to)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restore into a new database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A backup naming another table (a cache table, or one an attacker wants written) is not
    // restored.
    let forged = tmp.path().join("forged.jsonl");
    let mut lines: Vec<&str> = text.lines().collect();
    let extra = r#"{"t":"sessions","v":["x"]}"#;
    lines.insert(2, extra);
    std::fs::write(&forged, lines.join("\n")).unwrap();
    let fresh = index_spec("sqlite", &tmp.path().join("fresh"));
    std::fs::create_dir_all(tmp.path().join("fresh")).unwrap();
    let out = player(&["restore", &forged.display().to_string()], &fresh)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a record table"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `POST /api/notify` against the real `serve`, on SQLite and PostgreSQL: an id that is not in
/// the bucket creates nothing, and a session the retention job deleted does not come back, not
/// even when its objects are put back into the bucket and a notify names it.
fn notify_creates_nothing(backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let b = TestBucket::new(&bucket);
    let gone = fixtures::stored_session(fixtures::session_id(1), 2);
    let gone_id = fixtures::session_id(1);
    for (k, v) in session_objects(&gone) {
        b.put(&k, &v).unwrap();
    }
    let index = index_spec(backend, tmp.path());
    add_user(&index, ADMIN, "admin");
    let with_bucket = |args: &[&str]| {
        let mut c = player(args, &index);
        c.arg("--bucket-dir").arg(&bucket);
        c
    };
    ok(with_bucket(&["reindex"]));
    ok(player(
        &["retention", "set", "--level", "global", "--keep-days", "0"],
        &index,
    ));
    let run = ok(with_bucket(&["retention", "run"]));
    assert!(run.contains(&format!("deleted {gone_id}")), "{run}");
    // Put back, as an endpoint (or whoever holds its key) could.
    for (k, v) in session_objects(&gone) {
        b.tamper(&k, &v).unwrap();
    }
    let (child, addr) = serve(&bucket, &index);
    let admin = Client::sign_in(addr, ADMIN);
    let passes = || {
        admin.get("/api/status").json().unwrap()["indexer"]["passes"]
            .as_u64()
            .unwrap()
    };
    let wait_passes = |n: u64| {
        let start = passes();
        let t = Instant::now();
        while passes() < start + n {
            assert!(t.elapsed() < LIMIT, "the indexer made no passes");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let notify = |id: SessionId| {
        let r = http::request(
            addr,
            "POST",
            "/api/notify",
            &[("Cookie", &admin.cookie), ("X-CSRF-Token", &admin.csrf)],
            format!("{{\"session\": \"{id}\"}}").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
    };
    let unknown = SessionId::new();
    notify(unknown);
    notify(gone_id);
    wait_passes(3);
    assert_eq!(admin.get(&format!("/api/sessions/{unknown}")).status, 404);
    assert_eq!(
        admin.get(&format!("/api/sessions/{gone_id}")).status,
        404,
        "a deleted session came back"
    );
    let list = admin.get("/api/sessions").json().unwrap();
    assert!(list["sessions"].as_array().unwrap().is_empty(), "{list}");

    // A flood of notifies starts passes no faster than one per 100 ms.
    let (start, t) = (passes(), Instant::now());
    for _ in 0..100 {
        notify(SessionId::new());
    }
    let (done, took) = (passes() - start, t.elapsed());
    eprintln!("{backend}: 100 notifies in {took:?} started {done} passes");
    assert!(
        done <= took.as_millis() as u64 / 100 + 2,
        "{done} passes in {took:?}"
    );
    drop(child);
}

#[test]
fn notify_creates_nothing_on_sqlite() {
    notify_creates_nothing("sqlite");
}

#[test]
fn notify_creates_nothing_on_postgresql() {
    notify_creates_nothing("postgresql");
}
