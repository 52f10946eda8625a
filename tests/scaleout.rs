//! The player run at scale (issue 21), through the player program as an operator deploys it:
//! several `serve` processes on one PostgreSQL index and one bucket (every one answers the API
//! and the report view, exactly one indexes and runs retention, another takes the lead when the
//! leader is killed), and the metrics an operator watches them by.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitrec_format::SessionId;
use jitrec_format::fixtures;
use jitrec_tests::child::{Served, serve_http};
use jitrec_tests::{TestBucket, http, session_objects};

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");
/// Generous limits for conditions awaited on a loaded CI machine.
const LIMIT: Duration = Duration::from_secs(120);
const USER: (&str, &str) = ("rev", "correct horse battery");

/// `jitrec-player serve` on `bucket` and `index`, the retention schedule every second.
fn serve(bucket: &std::path::Path, index: &str) -> Served {
    let mut s = serve_http(
        |addr| {
            let mut c = Command::new(PLAYER);
            c.args(["serve", "--listen", &addr.to_string()])
                .args(["--retention-every", "1", "--index", index])
                .arg("--bucket-dir")
                .arg(bucket)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    s.wait_ok("/login", LIMIT);
    s
}

fn status(s: &Served, cookie: &str) -> serde_json::Value {
    let r = http::request(s.addr, "GET", "/api/status", &[("Cookie", cookie)], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()
}

fn wait_until(what: &str, ok: &mut dyn FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

fn listed(s: &Served, cookie: &str, id: SessionId) -> bool {
    http::request(
        s.addr,
        "GET",
        &format!("/api/sessions/{id}"),
        &[("Cookie", cookie)],
        b"",
    )
    .is_ok_and(|r| r.status == 200)
}

/// Two players on one PostgreSQL: one leads (indexes, runs retention), the other serves the
/// same sessions and accepts the same sign-in; killing the leader with SIGKILL makes the other
/// lead within a few seconds (the lead is let go of when the leader's connection closes;
/// `LEAD_RETRY` is 1 s), and a session uploaded after the kill appears through it, and through
/// a player started again, which follows. Retention ran only where the lead was.
#[test]
fn two_players_share_one_index_and_the_other_leads_when_the_leader_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let b = TestBucket::new(&root);
    std::fs::create_dir_all(&root).unwrap();
    let put = |n: u64| {
        let id = fixtures::session_id(n);
        for (k, v) in session_objects(&fixtures::stored_session(id, 2)) {
            b.put(&k, &v).unwrap();
        }
        id
    };
    let index = jitrec_tests::postgres::new_database("two_players").unwrap();
    crate::door::add_user(&index, USER, "admin");

    let mut a = serve(&root, &index);
    let cookie = crate::door::Client::sign_in(a.addr, USER).cookie;
    wait_until("the first player to lead", &mut || {
        status(&a, &cookie)["indexer"]["role"] == "leader"
    });
    let b_player = serve(&root, &index);
    // The sign-in made on one player holds on the other.
    wait_until("the second player to follow", &mut || {
        status(&b_player, &cookie)["indexer"]["role"] == "follower"
    });

    let first = put(1);
    wait_until("the session listed through both players", &mut || {
        listed(&a, &cookie, first) && listed(&b_player, &cookie, first)
    });
    wait_until("two retention runs on the leader", &mut || {
        status(&a, &cookie)["retention"]["runs"].as_u64().unwrap() >= 2
    });
    let follower = status(&b_player, &cookie);
    assert_eq!(
        follower["retention"]["runs"], 0,
        "the follower ran retention while the other led: {follower}"
    );
    assert_eq!(
        follower["indexer"]["passes"], 0,
        "the follower indexed while the other led: {follower}"
    );

    // The leader dies as a host's process would, without closing anything itself.
    let kill = Command::new("/usr/bin/kill")
        .args(["-9", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    a.child.wait().unwrap();
    let took = wait_until("the second player to lead", &mut || {
        status(&b_player, &cookie)["indexer"]["role"] == "leader"
    });
    eprintln!(
        "the follower led {:.2} s after the leader was killed",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(10),
        "the lead took {took:?} to move (bound: 1 s retry once the dead leader's connection closed, +9 s slack)"
    );
    let second = put(2);
    wait_until("a session uploaded after the kill listed", &mut || {
        listed(&b_player, &cookie, second)
    });
    wait_until("retention on the new leader", &mut || {
        status(&b_player, &cookie)["retention"]["runs"]
            .as_u64()
            .unwrap()
            >= 1
    });

    // Started again, the first player follows and serves what the new leader indexed.
    let again = serve(&root, &index);
    wait_until("the restarted player to follow", &mut || {
        status(&again, &cookie)["indexer"]["role"] == "follower"
    });
    assert!(listed(&again, &cookie, second));
    assert!(listed(&again, &cookie, first));
    let st = status(&again, &cookie);
    assert_eq!(st["retention"]["runs"], 0, "{st}");
    assert!(
        !again.stderr().contains("retention job ran"),
        "{}",
        again.stderr()
    );
}

/// `serve --metrics-listen`: the Prometheus text counts requests by route template (not by the
/// path sent), sign-ins by outcome, and says the player leads and indexes; a client sending
/// many distinct paths adds no series.
#[test]
fn the_players_metrics_count_requests_sign_ins_and_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    std::fs::create_dir_all(&root).unwrap();
    let index = tmp.path().join("index.sqlite3");
    let index = index.to_str().unwrap();
    crate::door::add_user(index, USER, "reviewer");
    let metrics = std::cell::Cell::new(None);
    let mut s = serve_http(
        |addr| {
            let m = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap();
            metrics.set(Some(m));
            let mut c = Command::new(PLAYER);
            c.args(["serve", "--listen", &addr.to_string()])
                .args(["--metrics-listen", &m.to_string()])
                .args(["--retention-every", "0", "--index", index])
                .arg("--bucket-dir")
                .arg(&root)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    s.wait_ok("/login", LIMIT);
    let metrics = metrics.get().unwrap();
    let scrape = || {
        let r = http::get(metrics, "/metrics").unwrap();
        assert_eq!(r.status, 200);
        r.text()
    };
    assert_eq!(
        crate::door::sign_in_request(s.addr, USER.0, "wrong").status,
        401
    );
    let cookie = crate::door::Client::sign_in(s.addr, USER).cookie;
    for n in 0..20 {
        let id = fixtures::session_id(n);
        let r = http::request(
            s.addr,
            "GET",
            &format!("/api/sessions/{id}"),
            &[("Cookie", cookie.as_str())],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(
            http::get(s.addr, &format!("/no/such/{n}")).unwrap().status,
            404
        );
    }
    wait_until("a completed index pass in the metrics", &mut || {
        scrape()
            .lines()
            .any(|l| l.starts_with("jitrec_player_index_passes_total ") && !l.ends_with(" 0"))
    });
    let text = scrape();
    for line in [
        "jitrec_player_http_requests_total{route=\"/api/login\",method=\"POST\",status=\"401\"} 1",
        "jitrec_player_http_requests_total{route=\"/api/login\",method=\"POST\",status=\"200\"} 1",
        "jitrec_player_http_requests_total{route=\"/api/sessions/{id}\",method=\"GET\",status=\"404\"} 20",
        "jitrec_player_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 20",
        "jitrec_player_sign_ins_total 1",
        "jitrec_player_sign_in_failures_total 1",
        "jitrec_player_leader 1",
        "jitrec_player_index_open_sessions 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("jitrec_player_index_lag_seconds ")),
        "{text}"
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("jitrec_player_http_requests_total{"))
        .count();
    assert!(
        series <= 6,
        "the paths sent made series of their own:\n{text}"
    );
}

/// Two `serve` processes on one SQLite file agree too (a lock on `<index>.lead`): the second
/// follows, and leads once the first is killed.
#[test]
fn two_players_on_one_sqlite_file_take_turns_to_lead() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    std::fs::create_dir_all(&root).unwrap();
    let index = tmp.path().join("index.sqlite3");
    let index = index.to_str().unwrap();
    crate::door::add_user(index, USER, "admin");
    let mut a = serve(&root, index);
    let cookie = crate::door::Client::sign_in(a.addr, USER).cookie;
    wait_until("the first player to lead", &mut || {
        status(&a, &cookie)["indexer"]["role"] == "leader"
    });
    let b = serve(&root, index);
    wait_until("the second player to follow", &mut || {
        status(&b, &cookie)["indexer"]["role"] == "follower"
    });
    assert_eq!(status(&b, &cookie)["indexer"]["passes"], 0);
    let kill = Command::new("/usr/bin/kill")
        .args(["-9", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    a.child.wait().unwrap();
    wait_until("the second player to lead", &mut || {
        status(&b, &cookie)["indexer"]["role"] == "leader"
    });
}
