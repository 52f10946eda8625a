//! The report view in a real browser: Debian's Chromium, headless, over WebDriver, against the
//! player as `serve` runs it (sign-in, pages, API), with sessions recorded on Xvfb and uploaded
//! to the local store by the real uploader.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitrec_bucket::{BucketAdmin, DirBucket};
use jitrec_player::auth::{self, Role};
use jitrec_player::index::Index;
use jitrec_player::index::sqlite::SqliteIndex;
use jitrec_tests::http;
use jitrec_tests::webdriver::Browser;
use serde_json::json;

use crate::player::{Player, record_real_session};

const LIMIT: Duration = Duration::from_secs(120);
const REVIEWER: (&str, &str) = ("rita", "reviewer password 1");
const ADMIN: (&str, &str) = ("adam", "admin password 12");

pub(crate) fn sign_in(b: &Browser, base: &str, (user, password): (&str, &str)) {
    b.goto(&format!("{base}/login")).unwrap();
    b.type_into(&b.find("#user").unwrap(), user).unwrap();
    b.type_into(&b.find("#password").unwrap(), password)
        .unwrap();
    b.click(&b.find("#submit").unwrap()).unwrap();
    b.wait_for(
        "location.pathname === '/' && document.querySelector('#me').textContent",
        LIMIT,
        "the session list after signing in",
    )
    .unwrap();
}

/// Waits for the player's state to satisfy `cond` (a JS expression over `s`); returns it.
pub(crate) fn state_when(b: &Browser, cond: &str, what: &str) -> serde_json::Value {
    b.wait_for(
        &format!("(() => {{ const s = window.jitrecProbe && jitrecProbe.state(); return s && ({cond}) ? s : null; }})()"),
        LIMIT,
        what,
    )
    .unwrap_or_else(|e| {
        let last = b.eval(
            "return [window.jitrecProbe ? jitrecProbe.state() : null, document.querySelector('#message') && document.querySelector('#message').textContent];",
            json!([]),
        );
        panic!("{e}; last state: {last:?}")
    })
}

/// Seeks to `t` seconds and waits until the frame there is shown.
pub(crate) fn seek(b: &Browser, t: f64) -> serde_json::Value {
    b.eval_async(&format!(
        "const v = document.querySelector('#video'); v.pause();\
         await new Promise((ok) => {{ v.addEventListener('seeked', ok, {{once: true}}); v.currentTime = {t}; }});\
         await new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)));\
         return jitrecProbe.state();"
    ))
    .unwrap()
}

/// The computed `display` of the LIVE badge.
fn badge_display(b: &Browser) -> serde_json::Value {
    b.eval(
        "return getComputedStyle(document.querySelector('#live')).display;",
        json!([]),
    )
    .unwrap()
}

pub(crate) fn pixel(b: &Browser, x: u32, y: u32) -> [u8; 3] {
    let v = b
        .eval(
            "return jitrecProbe.pixel(arguments[0], arguments[1]);",
            json!([x, y]),
        )
        .unwrap();
    let p: Vec<u8> = serde_json::from_value(v).unwrap();
    [p[0], p[1], p[2]]
}

pub(crate) fn close_to(px: [u8; 3], rgb: [u8; 3]) -> bool {
    px.iter()
        .zip(rgb)
        .all(|(a, b)| (i16::from(*a) - i16::from(b)).abs() <= 40)
}

/// Where test artefacts a person may want to look at go (`target/test-artifacts`).
pub(crate) fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_signs_in_plays_seeks_searches_and_is_audited() {
    let rec = tokio::task::spawn_blocking(record_real_session)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let bucket = work.path().join("bucket");
    jitrec_tests::drain(
        DirBucket::new(&bucket),
        jitrec_uploader::UploaderConfig::new(rec.spool.path()),
        LIMIT,
    )
    .await
    .unwrap();
    let src: Arc<dyn BucketAdmin> = Arc::new(DirBucket::new(&bucket));
    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&work.path().join("index.sqlite3")).unwrap());
    auth::init(index.as_ref()).unwrap();
    auth::add_user(index.as_ref(), REVIEWER.0, Role::Reviewer, REVIEWER.1).unwrap();
    auth::add_user(index.as_ref(), ADMIN.0, Role::Admin, ADMIN.1).unwrap();
    let player = tokio::task::block_in_place(|| {
        Player::start_with(Arc::clone(&src), Arc::clone(&index), true)
    });
    let base = format!("http://{}", player.addr);
    let id = rec.id.to_string();

    tokio::task::block_in_place(|| {
        // Without sign-in, nothing but the sign-in page: pages redirect, API and media refuse.
        for path in [
            "/".to_owned(),
            format!("/session/{id}"),
            "/audit".to_owned(),
        ] {
            let r = http::get(player.addr, &path).unwrap();
            assert_eq!(r.status, 303, "{path}");
            assert_eq!(r.header("location"), Some("/login"), "{path}");
        }
        for path in [
            "/api/sessions".to_owned(),
            format!("/api/sessions/{id}"),
            format!("/api/sessions/{id}/init/0.mp4"),
            format!("/api/sessions/{id}/chunks/0.m4s"),
            format!("/api/sessions/{id}/playlist.m3u8"),
            format!("/api/sessions/{id}/export.mp4"),
            "/api/audit".to_owned(),
        ] {
            assert_eq!(http::get(player.addr, &path).unwrap().status, 401, "{path}");
        }
        let forged = http::request(
            player.addr,
            "GET",
            "/api/sessions",
            &[("Cookie", "jitrec_session=0123456789abcdef")],
            &[],
        )
        .unwrap();
        assert_eq!(forged.status, 401);
        assert_eq!(http::get(player.addr, "/login").unwrap().status, 200);
        // Signed in but without the CSRF token, a state-changing request is refused.
        let login = http::request(
            player.addr,
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            json!({"user": REVIEWER.0, "password": REVIEWER.1})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(login.status, 200, "{}", login.text());
        let cookie = login.header("set-cookie").unwrap().to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let token = cookie.split(';').next().unwrap().to_owned();
        let csrf = login.json().unwrap()["csrf"].as_str().unwrap().to_owned();
        let notify = |headers: &[(&str, &str)]| {
            http::request(player.addr, "POST", "/api/notify", headers, b"")
                .unwrap()
                .status
        };
        assert_eq!(notify(&[("Cookie", &token)]), 403);
        assert_eq!(
            notify(&[("Cookie", &token), ("X-CSRF-Token", "wrong")]),
            403
        );
        assert_eq!(notify(&[("Cookie", &token), ("X-CSRF-Token", &csrf)]), 202);
        // A reviewer may not read the audit log or touch retention.
        for path in ["/api/audit", "/api/retention"] {
            let r = http::request(player.addr, "GET", path, &[("Cookie", &token)], &[]).unwrap();
            assert_eq!(r.status, 403, "{path}");
        }
        let wrong = http::request(
            player.addr,
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            json!({"user": REVIEWER.0, "password": "not the password"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(wrong.status, 401);

        let b = Browser::start(1280, 1000).unwrap();
        sign_in(&b, &base, REVIEWER);
        // The list shows the session once indexed, complete.
        let row = format!("tr.session[data-id='{id}']");
        let started = Instant::now();
        loop {
            let ok = b
                .eval(
                    &format!("const r = document.querySelector(\"{row}\"); return r && r.querySelector('.badge').textContent;"),
                    json!([]),
                )
                .unwrap();
            if ok == "complete" {
                break;
            }
            assert!(
                started.elapsed() < LIMIT,
                "session never listed complete: {ok}"
            );
            std::thread::sleep(Duration::from_millis(200));
            b.goto(&format!("{base}/")).unwrap();
        }

        // Open it: the video plays.
        b.click(&b.find(&format!("{row} a")).unwrap()).unwrap();
        let s = state_when(&b, "s.readyState >= 2 && s.chunks > 0", "the first frame");
        assert!(s["error"].is_null(), "{s}");
        assert_eq!(badge_display(&b), "none", "a complete session is not live");
        b.eval("document.querySelector('#video').play();", json!([]))
            .unwrap();
        let s = state_when(&b, "s.currentTime > 0.5", "playback to advance");
        assert!(!s["paused"].as_bool().unwrap(), "{s}");

        // The picture: black before the window appeared, green after (canvas grab of the video).
        let detail: serde_json::Value = b
            .eval_async(&format!(
                "return await (await fetch('/api/sessions/{id}')).json();"
            ))
            .unwrap();
        let started_at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(detail["session"]["started_at"].clone()).unwrap();
        let map_t = (rec.mapped_at - started_at).num_microseconds().unwrap() as f64 / 1e6;
        let end_t = detail["chunks"].as_array().unwrap().last().unwrap()["media_end_us"]
            .as_u64()
            .unwrap() as f64
            / 1e6;
        seek(&b, (map_t - 0.4).max(0.0));
        let before = pixel(&b, 120, 90);
        assert!(close_to(before, [0, 0, 0]), "before the window: {before:?}");
        let small_before = pixel(&b, 270, 210);
        assert!(
            close_to(small_before, [0, 0, 0]),
            "before the small window: {small_before:?}"
        );
        let target = (map_t + 0.9).min(end_t - 0.05);
        let s = seek(&b, target);
        let after = pixel(&b, 120, 90);
        assert!(close_to(after, [0, 255, 0]), "after the window: {after:?}");
        // The small red window, mapped 0.4 s after the green one, came as a hand-made picture
        // of intra macroblocks, each in a slice of its own: Chromium decodes it too.
        let small = pixel(&b, 270, 210);
        assert!(close_to(small, [255, 0, 0]), "the small window: {small:?}");
        // The seek landed within one frame interval (10 fps).
        let landed = s["currentTime"].as_f64().unwrap();
        assert!((landed - target).abs() <= 0.1, "{landed} vs {target}");
        b.screenshot(&artifacts().join("report-view-player.png"))
            .unwrap();

        // The filmstrip: pictures the player made (decoded by its confined child process) and
        // shown along the seek bar, each the screen at the start of its chunk: the first is
        // the black screen from before the window, as the video is there.
        b.wait_for(
            "[...document.querySelectorAll('#filmstrip img')].length > 0 && [...document.querySelectorAll('#filmstrip img')].every((i) => i.complete && i.naturalWidth === 192)",
            LIMIT,
            "the filmstrip's pictures",
        )
        .unwrap();
        let first = b
            .eval(
                "const i = document.querySelector('#filmstrip img'); const c = document.createElement('canvas'); \
                 c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0); \
                 return [i.naturalHeight, Number(i.dataset.seq), ...g.getImageData(72, 54, 1, 1).data.slice(0, 3)];",
                json!([]),
            )
            .unwrap();
        let first: Vec<u32> = serde_json::from_value(first).unwrap();
        assert_eq!(
            first[..2],
            [144, 0],
            "320x240 at 192 wide, chunk 0: {first:?}"
        );
        assert!(
            first[2..].iter().all(|c| *c < 40),
            "the black screen: {first:?}"
        );
        b.eval(
            "document.querySelector('#filmstrip').scrollIntoView();",
            json!([]),
        )
        .unwrap();
        b.screenshot(&artifacts().join("report-view-filmstrip.png"))
            .unwrap();

        // 4x: media time runs about four times faster than the wall clock.
        let r = b
            .eval_async(
                "const v = document.querySelector('#video');\
                 v.currentTime = 0; await new Promise((ok) => v.addEventListener('seeked', ok, {once: true}));\
                 document.querySelector('#speed').value = '4';\
                 document.querySelector('#speed').dispatchEvent(new Event('change'));\
                 await v.play(); const t0 = performance.now(), m0 = v.currentTime;\
                 await new Promise((ok) => setTimeout(ok, 400));\
                 const r = {media: v.currentTime - m0, wall: (performance.now() - t0) / 1000, rate: v.playbackRate};\
                 v.pause(); return r;",
            )
            .unwrap();
        let (media, wall) = (r["media"].as_f64().unwrap(), r["wall"].as_f64().unwrap());
        eprintln!("4x: {media:.3} s of media in {wall:.3} s");
        assert_eq!(r["rate"], 4.0);
        assert!(media / wall > 2.5, "{r}");

        // Clicking the marker command in the timeline seeks to its media time.
        let li = b
            .eval(
                "const m = arguments[0]; const li = [...document.querySelectorAll('#events li.process_start')].find((l) => l.textContent.includes(m)); if (!li) return null; li.id = 'marker-event'; return Number(li.dataset.mediaUs);",
                json!([rec.marker]),
            )
            .unwrap();
        let at = li.as_f64().expect("the marker command is in the timeline") / 1e6;
        b.click(&b.find("#marker-event").unwrap()).unwrap();
        let s = state_when(
            &b,
            // `current` follows on `seeked`, after `currentTime` already changed.
            &format!(
                "Math.abs(s.currentTime - {at}) < 0.05 && s.current === {:.0}",
                at * 1e6
            ),
            "the timeline click to seek",
        );
        assert_eq!(s["current"].as_f64().unwrap() / 1e6, at, "{s}");
        assert!(
            b.eval(
                "return document.querySelector('#marker-event').classList.contains('current');",
                json!([])
            )
            .unwrap()
            .as_bool()
            .unwrap()
        );

        // A text search for the command lists the session and jumps to the moment.
        b.goto(&format!("{base}/?q={}", rec.marker)).unwrap();
        b.wait_for(
            &format!("document.querySelector(\"{row} a.hit\")"),
            LIMIT,
            "the search hit",
        )
        .unwrap();
        b.click(&b.find(&format!("{row} a.hit")).unwrap()).unwrap();
        let s = state_when(
            &b,
            &format!("s.readyState >= 2 && Math.abs(s.currentTime - {at}) < 0.01"),
            "the search hit to open the player at the moment",
        );
        assert!(s["error"].is_null(), "{s}");

        // Export from the page's link: an MP4 (checked in depth by the player's tests).
        let exported = b
            .eval_async(
                "const r = await fetch(document.querySelector('#export').href);\
                 const b = new Uint8Array(await r.arrayBuffer());\
                 return {status: r.status, type: r.headers.get('content-type'), len: b.length,\
                         ftyp: String.fromCharCode(...b.slice(4, 8)),\
                         disposition: r.headers.get('content-disposition'),\
                         cache: r.headers.get('cache-control')};",
            )
            .unwrap();
        assert_eq!(exported["status"], 200, "{exported}");
        assert_eq!(exported["type"], "video/mp4");
        assert_eq!(exported["ftyp"], "ftyp");
        assert_eq!(exported["cache"], "no-store");
        // The recording is unsigned (format v1): its export is named as not vouched for.
        assert!(
            exported["disposition"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!("jitrec-{id}-UNVERIFIED.mp4\""))),
            "{exported}"
        );

        // An admin sees the reviewer's views, search and export in the audit log.
        b.eval_async("await fetch('/api/logout', {method: 'POST', headers: {'X-CSRF-Token': (await (await fetch('/api/me')).json()).csrf}});")
            .unwrap();
        sign_in(&b, &base, ADMIN);
        b.goto(&format!("{base}/audit")).unwrap();
        let entries = b
            .wait_for(
                "(() => { const rows = [...document.querySelectorAll('#audit tr.entry')].map((r) => [...r.children].map((c) => c.textContent)); return rows.length ? rows : null; })()",
                LIMIT,
                "the audit log",
            )
            .unwrap();
        let rows: Vec<Vec<String>> = serde_json::from_value(entries).unwrap();
        let has = |action: &str, target: &str| {
            rows.iter()
                .any(|r| r[1] == REVIEWER.0 && r[2] == action && r[3].contains(target))
        };
        assert!(has("view", &id), "{rows:?}");
        assert!(has("search", &rec.marker), "{rows:?}");
        assert!(has("export", &id), "{rows:?}");
        // The page's player fetched media: one play record for this sign-in.
        assert!(has("play", &id), "{rows:?}");
        assert!(has("sign_in", ""), "{rows:?}");
        assert!(rows.iter().any(|r| r[2] == "sign_in_failed"), "{rows:?}");

        // Retention, admin part: a global policy set through the page's form governs the
        // session, which shows its expiry; a legal hold shows instead; both are audited.
        b.goto(&format!("{base}/retention")).unwrap();
        b.wait_for(
            "document.querySelector('#me').textContent",
            LIMIT,
            "the retention page",
        )
        .unwrap();
        b.type_into(&b.find("#policy input[name=keep_days]").unwrap(), "30")
            .unwrap();
        b.click(&b.find("#policy button").unwrap()).unwrap();
        b.wait_for(
            "[...document.querySelectorAll('#policies tr.policy')].some((r) => r.textContent.includes('30 days'))",
            LIMIT,
            "the new policy in the table",
        )
        .unwrap();
        b.goto(&format!("{base}/session/{id}")).unwrap();
        let shown = b
            .wait_for(
                "document.querySelector('#retention') && document.querySelector('#retention').textContent",
                LIMIT,
                "the session's retention",
            )
            .unwrap();
        assert!(
            shown
                .as_str()
                .unwrap()
                .starts_with("global: keep 30 days, expires "),
            "{shown}"
        );
        let held = b
            .eval_async(&format!(
                "const me = await (await fetch('/api/me')).json();\
                 const r = await fetch('/api/sessions/{id}/hold', {{method: 'POST', headers: {{'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf}}, body: JSON.stringify({{reason: 'case 7'}})}});\
                 const answer = await r.json();\
                 const d = await (await fetch('/api/sessions/{id}')).json();\
                 return [r.status, d.retention.hold && d.retention.hold.reason, answer.enforced_by];"
            ))
            .unwrap();
        // A directory bucket cannot hold objects: the answer says the job alone enforces it.
        assert_eq!(held, json!([200, "case 7", "retention_job"]));
        let audit = auth::audit_log(index.as_ref(), 50, None).unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.user == ADMIN.0 && e.action == "policy_set" && e.detail == "30 days")
        );
        assert!(
            audit
                .iter()
                .any(|e| e.user == ADMIN.0 && e.action == "hold" && e.target == id)
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_still_being_recorded_plays_near_its_live_edge_and_follows_new_chunks() {
    use jitrec_recorder::events::{EventLimits, SourceFactory};
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let bucket = work.path().join("bucket");
    std::fs::create_dir_all(&spool).unwrap();

    // The recorder, with JIT on until `stop` says otherwise.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let recorder = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            let x = jitrec_tests::xvfb::Xvfb::start(320, 240).unwrap();
            let display = x.display.clone();
            let factory: SourceFactory = Box::new(|_| Vec::new());
            crate::events::record_into(&spool, &x, factory, EventLimits::default(), || {
                let _w = jitrec_tests::xvfb::map_window(&display, (40, 30, 200, 150), 0x00ff_0000)
                    .unwrap();
                let _ = stop_rx.recv();
            })
        })
    };
    // The uploader, shipping chunks as they are committed.
    let uploader = jitrec_uploader::Uploader::new(
        DirBucket::new(&bucket),
        jitrec_uploader::UploaderConfig::new(&spool),
    )
    .unwrap();
    let stop_upload = tokio_util::sync::CancellationToken::new();
    let upload = tokio::spawn(uploader.run(stop_upload.clone()));

    let src: Arc<dyn BucketAdmin> = Arc::new(DirBucket::new(&bucket));
    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&work.path().join("index.sqlite3")).unwrap());
    auth::init(index.as_ref()).unwrap();
    auth::add_user(index.as_ref(), REVIEWER.0, Role::Reviewer, REVIEWER.1).unwrap();
    let player = tokio::task::block_in_place(|| {
        Player::start_with(Arc::clone(&src), Arc::clone(&index), true)
    });
    let base = format!("http://{}", player.addr);

    tokio::task::block_in_place(|| {
        let b = Browser::start(1280, 900).unwrap();
        sign_in(&b, &base, REVIEWER);
        // The session is listed while it is recorded.
        let started = Instant::now();
        let id = loop {
            let id = b
                .eval(
                    "const r = [...document.querySelectorAll('tr.session')].find((r) => r.querySelector('.badge').textContent === 'recording'); return r ? r.dataset.id : null;",
                    json!([]),
                )
                .unwrap();
            if let Some(id) = id.as_str() {
                break id.to_owned();
            }
            assert!(
                started.elapsed() < LIMIT,
                "the live session was never listed"
            );
            std::thread::sleep(Duration::from_millis(200));
            b.goto(&format!("{base}/")).unwrap();
        };
        b.goto(&format!("{base}/session/{id}")).unwrap();
        let s = state_when(
            &b,
            "s.live && s.readyState >= 2 && s.currentTime > 0",
            "the live session to play",
        );
        assert!(s["error"].is_null(), "{s}");
        assert_ne!(
            badge_display(&b),
            "none",
            "a session being recorded shows LIVE"
        );
        let (c1, t1) = (
            s["chunks"].as_u64().unwrap(),
            s["currentTime"].as_f64().unwrap(),
        );
        // It keeps following: more chunks arrive and the playhead moves with them.
        let s = state_when(
            &b,
            &format!(
                "s.chunks >= {} && s.currentTime > {} && !s.paused",
                c1 + 3,
                t1 + 2.0
            ),
            "the player to follow new chunks",
        );
        let started_at: chrono::DateTime<chrono::Utc> = serde_json::from_value(
            b.eval_async(&format!(
                "return (await (await fetch('/api/sessions/{id}')).json()).session.started_at;"
            ))
            .unwrap(),
        )
        .unwrap();
        let s2 = b.eval("return jitrecProbe.state();", json!([])).unwrap();
        let real = (chrono::Utc::now() - started_at).num_milliseconds() as f64 / 1e3;
        let delay = real - s2["currentTime"].as_f64().unwrap();
        eprintln!("live: {s}; {delay:.2} s behind real time");
        b.screenshot(&artifacts().join("report-view-live.png"))
            .unwrap();
        // The target is 5 s (1 s chunks here, upload within milliseconds, a 1 s index pass and
        // a 1 s poll); the bound leaves room for a loaded machine.
        assert!(delay < 8.0, "{delay:.2} s behind real time");

        // JIT ends: the page notices the close record and stops being live.
        stop_tx.send(()).unwrap();
        let s = state_when(&b, "!s.live", "the session to be closed");
        eprintln!("closed: {s}");
    });
    recorder.join().unwrap();
    stop_upload.cancel();
    upload.await.unwrap().unwrap();
}
