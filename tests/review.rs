//! Review at scale, as deployed (issue 20): the real recorder, uploader and player
//! ([`Pipeline`]) on Xvfb; during JIT the elevated account runs what matters during an
//! elevation (account and group changes, a service stop, a cron table, a package install,
//! clearing history) while another account's job runs beside it. The detection rules flag each
//! command at its moment with its severity and sentence, the session's risk is shown and
//! filtered on, the other account's process is told apart from the session's own; then the
//! review workflow: the authoriser's attempt refused, another reviewer's review in Chromium, the
//! queue and the coverage page changing, all of it in the audit log.
//!
//! The elevated account is `nobody`, run through `runuser` by this (root) test, so the commands
//! are really executed by the account whose elevation is recorded, and fail for want of rights:
//! nothing on the machine is changed. The change ledger watches a copy of a machine's files
//! instead (the recorder's `events.changes_root`), to which the test makes, after each command,
//! the change that command makes on a real machine; the ledger must list each, after its
//! command. Where the machine lacks a program (no cron, no systemd),
//! a stand-in of that name (a copy of `false`) is run instead: the rules know a program by the
//! name of its executable, which is all a stand-in shares with the real one.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jitrec_tests::pipeline::{Pipeline, PipelineConfig, Programs, REVIEWER, Store};
use jitrec_tests::webdriver::Browser;
use serde_json::{Value, json};

use crate::door::{Client, add_user};
use crate::report_view::sign_in;

const LIMIT: Duration = Duration::from_secs(120);

/// The second reviewer, who did not authorise the elevation.
const CAROL: (&str, &str) = ("carol", "carol's long review password");

fn programs() -> Programs {
    Programs {
        recorder: env!("CARGO_BIN_EXE_jitrec-test-recorder").into(),
        uploader: env!("CARGO_BIN_EXE_jitrec-test-uploader").into(),
        player: env!("CARGO_BIN_EXE_jitrec-test-player").into(),
    }
}

/// A directory of stand-ins, readable by every account, for the programs in `names` this
/// machine does not have.
fn stand_ins(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in names {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !found {
            // A copy of `false` under the program's name: an executable of that name, as the
            // kernel reports it, that does nothing.
            let path = dir.path().join(name);
            std::fs::copy("/bin/false", &path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    dir
}

/// Runs `script` with `sh -c` as `user` (through runuser, as root); returns when it is done,
/// with the wall-clock times around it.
fn run_as(user: &str, path: &str, script: &str) -> (DateTime<Utc>, DateTime<Utc>) {
    let before = Utc::now();
    let status = Command::new("runuser")
        .args(["-u", user, "--", "env", &format!("PATH={path}"), "sh", "-c"])
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runuser (util-linux)");
    // The commands fail for want of rights (that is the point); the shell itself ran.
    let _ = status;
    (before, Utc::now())
}

/// The start of the process whose command line is `needle` (quoting aside: the recorder
/// quotes arguments its own way).
fn event_with<'a>(events: &'a [Value], needle: &str) -> &'a Value {
    let unquoted = |s: &str| s.replace(['\'', '"'], "");
    events
        .iter()
        .find(|e| {
            e["kind"] == "process_start"
                && e["data"]["command_line"]
                    .as_str()
                    .is_some_and(|c| unquoted(c) == unquoted(needle))
        })
        .unwrap_or_else(|| {
            let lines: Vec<&str> = events.iter().filter_map(|e| e["text"].as_str()).collect();
            panic!("no process_start of {needle:?} in {lines:#?}")
        })
}

/// A machine's files, as the change ledger reads them.
fn machine_tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let put = |rel: &str, text: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    put("etc/group", "root:x:0:\nsudo:x:27:\nnogroup:x:65534:\n");
    put("etc/shadow", "root:*:19000:0:99999:7:::\n");
    put(
        "etc/sudoers",
        "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n",
    );
    put(
        "etc/crontab",
        "17 * * * * root cd / && run-parts --report /etc/cron.hourly\n",
    );
    put("var/spool/cron/crontabs/.placeholder", "");
    put(
        "etc/systemd/system/multi-user.target.wants/.placeholder",
        "",
    );
    put(
        "var/log/dpkg.log",
        "2026-11-01 10:00:00 status installed base-files:amd64 12.4+deb12u8\n",
    );
    put("root/.bash_history", "ls\nuseradd -m jitrec-review-eve\n");
    d
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn an_elevation_on_xvfb_is_flagged_where_it_happened_reviewed_and_counted() {
    let tree = machine_tree();
    let root = tree.path().to_owned();
    let mut p = Pipeline::start(&PipelineConfig {
        programs: programs(),
        store: Store::DirBucket,
        width: 640,
        height: 400,
        fps: 5,
        chunk_ms: 1000,
        index: None,
        encrypt: false,
        player_args: vec!["--review-separation".into()],
        recorder_toml: format!(
            "\n[events]\nchanges_root = {:?}\n",
            root.display().to_string()
        ),
    })
    .unwrap();
    let index = p.path().join("index.sqlite3").display().to_string();
    add_user(&index, CAROL, "reviewer");
    let bin = stand_ins(&[
        "useradd",
        "usermod",
        "systemctl",
        "crontab",
        "apt-get",
        "bash",
    ]);
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        bin.path().display()
    );

    // The signed-in reviewer of the pipeline authorised this elevation.
    let authoriser = format!("{}@example.com", REVIEWER.0);
    let id = p.jit_start("nobody", &authoriser, "CHG-20").unwrap();
    // What the elevated account runs, one command at a time, each with the rule that must
    // flag it.
    let commands: &[(&str, &str)] = &[
        ("useradd -m jitrec-review-eve", "account.create"),
        ("usermod -aG sudo jitrec-review-eve", "account.group_add"),
        ("systemctl stop cron", "service.change"),
        ("crontab /tmp/jitrec-review-tab", "persistence.cron"),
        (
            "apt-get install -y ./jitrec-review-hello.deb",
            "package.change",
        ),
        ("bash -c 'history -c'", "history.clear"),
    ];
    // What each command does to a real machine, made to the ledger's copy after it ran.
    let effects: [&dyn Fn(); 6] = [
        &|| {
            append(
                &root.join("etc/passwd"),
                "jitrec-review-eve:x:1500:1500::/home/jitrec-review-eve:/bin/sh\n",
            );
            append(&root.join("etc/group"), "jitrec-review-eve:x:1500:\n");
        },
        &|| {
            let g = std::fs::read_to_string(root.join("etc/group")).unwrap();
            std::fs::write(
                root.join("etc/group"),
                g.replace("sudo:x:27:", "sudo:x:27:jitrec-review-eve"),
            )
            .unwrap();
        },
        &|| {}, // stopping a service changes no file
        &|| {
            std::fs::write(
                root.join("var/spool/cron/crontabs/nobody"),
                "*/5 * * * * /tmp/jitrec-review-beacon.sh\n",
            )
            .unwrap();
        },
        &|| {
            append(
                &root.join("var/log/dpkg.log"),
                "2026-12-02 18:30:00 install jitrec-review-hello:amd64 <none> 1.0\n\
                 2026-12-02 18:30:00 status installed jitrec-review-hello:amd64 1.0\n",
            );
        },
        &|| std::fs::write(root.join("root/.bash_history"), "").unwrap(),
    ];
    let mut ran = Vec::new();
    for ((cmd, _), effect) in commands.iter().zip(effects) {
        ran.push(run_as("nobody", &path, cmd));
        effect();
    }
    // Meanwhile another account's job: the rest of the machine, not the session's own.
    run_as("daemon", &path, "ls /tmp/jitrec-review-daemon-job");
    p.jit_stop().unwrap();
    p.wait_for_within("the session to be playable", LIMIT, |p| p.playable(id))
        .unwrap();
    // A second elevation, authorised by carol, in which nothing of note happens.
    let quiet = p
        .jit_start("nobody", "carol@example.com", "CHG-21")
        .unwrap();
    run_as("nobody", &path, "ls /srv");
    p.jit_stop().unwrap();
    p.wait_for_within("the quiet session to be playable", LIMIT, |p| {
        p.playable(quiet)
    })
    .unwrap();

    let d = p.detail(id).unwrap().unwrap();
    let events = d["events"].as_array().unwrap().clone();
    let flags = d["flags"].as_array().unwrap().clone();
    for ((cmd, rule), (before, after)) in commands.iter().zip(&ran) {
        let e = event_with(&events, cmd);
        assert_eq!(
            e["data"]["in_session"], true,
            "{cmd} ran as the elevated account: {e}"
        );
        let f = flags
            .iter()
            .find(|f| f["rule"] == *rule && f["seq"] == e["seq"] && f["idx"] == e["idx"])
            .unwrap_or_else(|| panic!("{cmd}: no {rule} flag on its event; flags: {flags:#?}"));
        // At the moment it ran: the event's own media time, and a wall-clock time between the
        // moments before and after the command.
        assert_eq!(f["media_us"], e["media_us"], "{f}");
        let at: DateTime<Utc> = serde_json::from_value(f["utc"].clone()).unwrap();
        assert!(
            *before - chrono::Duration::milliseconds(500) <= at
                && at <= *after + chrono::Duration::milliseconds(500),
            "{cmd}: flagged at {at}, ran between {before} and {after}"
        );
        assert!(!f["sentence"].as_str().unwrap().is_empty(), "{f}");
        assert!(
            ["low", "medium", "high", "critical"].contains(&f["severity"].as_str().unwrap()),
            "{f}"
        );
    }
    exported_subtitles_list_the_commands(&p, id, &d, commands);
    filmstrip_pictures_are_made_confined(&p, id, &d);

    // The other account's job is the machine's, and the runuser that started the commands
    // (root, started by this test) too.
    let job = event_with(&events, "ls /tmp/jitrec-review-daemon-job");
    assert_eq!(job["data"]["in_session"], false, "{job}");
    assert_eq!(job["data"]["user"]["name"], "daemon", "{job}");
    assert!(
        events.iter().any(|e| e["kind"] == "process_start"
            && e["data"]["exe"]
                .as_str()
                .is_some_and(|x| x.ends_with("/runuser"))
            && e["data"]["in_session"] == false),
        "runuser (root, this test's child) is the machine's"
    );
    // The change ledger: each change after the command that made it.
    let changes: Vec<&Value> = events.iter().filter(|e| e["kind"] == "change").collect();
    let change = |area: &str, action: &str, subject: &str| -> &Value {
        changes
            .iter()
            .find(|e| {
                e["data"]["area"] == area
                    && e["data"]["action"] == action
                    && e["data"]["subject"] == subject
            })
            .copied()
            .unwrap_or_else(|| panic!("no {area} {action} {subject} in the ledger: {changes:#?}"))
    };
    let after = |c: &Value, cmd: &str| {
        let e = event_with(&events, cmd);
        assert!(
            c["media_us"].as_u64() >= e["media_us"].as_u64(),
            "{c} is before {cmd} ({e})"
        );
    };
    let user = change("accounts", "user_added", "jitrec-review-eve");
    after(user, "useradd -m jitrec-review-eve");
    let member = change("accounts", "member_added", "jitrec-review-eve");
    assert_eq!(member["data"]["detail"], "group sudo", "{member}");
    after(member, "usermod -aG sudo jitrec-review-eve");
    let cron = change("cron", "entry_added", "/var/spool/cron/crontabs/nobody");
    assert_eq!(
        cron["data"]["detail"], "*/5 * * * * /tmp/jitrec-review-beacon.sh",
        "{cron}"
    );
    after(cron, "crontab /tmp/jitrec-review-tab");
    let package = change("packages", "installed", "jitrec-review-hello:amd64");
    after(package, "apt-get install -y ./jitrec-review-hello.deb");
    let history = change("files", "modified", "/root/.bash_history");
    after(history, "bash -c 'history -c'");
    // Nothing else changed, so nothing else is in the ledger (the group file's rewrite for the
    // member is one change, not a removal and an addition).
    let listed: Vec<String> = changes.iter().map(|e| e["text"].to_string()).collect();
    assert!(
        !changes
            .iter()
            .any(|e| e["data"]["action"] == "member_removed"
                || e["data"]["action"] == "user_removed"),
        "{listed:#?}"
    );

    // The ledger's entries are flagged too: the account made a member of sudo is critical.
    let member_flag = flags
        .iter()
        .find(|f| f["seq"] == member["seq"] && f["idx"] == member["idx"])
        .unwrap_or_else(|| panic!("the sudo membership is not flagged: {flags:#?}"));
    assert_eq!(member_flag["rule"], "change.admin_member", "{member_flag}");
    assert_eq!(member_flag["severity"], "critical", "{member_flag}");
    // Risk: the most severe flag.
    assert_eq!(d["risk"], "critical", "{}", d["flags"]);
    let listed = |q: &str| -> Vec<String> {
        p.get_json(&format!("/api/sessions?{q}")).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(listed("risk=critical").contains(&id.to_string()));
    assert_eq!(
        listed("risk=low"),
        [id.to_string()],
        "the quiet session has no flag"
    );
    assert_eq!(listed("").len(), 2);
    let all = p.get_json("/api/sessions").unwrap();
    let row = |sid: jitrec_format::SessionId| {
        all["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == sid.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(row(id)["risk"], "critical", "{all}");
    assert_eq!(row(quiet)["risk"], Value::Null, "{all}");
    assert_eq!(
        p.get("/api/sessions?risk=severe").unwrap().status,
        400,
        "an unknown risk level is refused"
    );

    // The queue holds it, riskiest first.
    let queue = p.get_json("/api/review/queue?order=risk").unwrap();
    assert_eq!(queue["sessions"][0]["id"], id.to_string(), "{queue}");
    assert_eq!(queue["sessions"][0]["risk"], "critical", "{queue}");
    assert_eq!(queue["sessions"][1]["id"], quiet.to_string(), "{queue}");
    assert_eq!(queue["counts"]["unreviewed"], 2, "{queue}");
    assert_eq!(queue["counts"]["unreviewed_high_risk"], 1, "{queue}");
    let oldest = p.get_json("/api/review/queue?order=oldest").unwrap();
    assert_eq!(oldest["sessions"][0]["id"], id.to_string(), "{oldest}");

    let post_review = |sid: jitrec_format::SessionId, body: Value| {
        jitrec_tests::http::request(
            p.player,
            "POST",
            &format!("/api/sessions/{sid}/review"),
            &[
                ("Cookie", p.cookie()),
                ("X-CSRF-Token", p.csrf()),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    // The pipeline's reviewer did not authorise the quiet session: they may review it.
    let r = post_review(
        quiet,
        json!({"state": "reviewed", "comment": "listing only"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // What a review must be: a known state, a bounded comment; flagged says why.
    for bad in [
        json!({"state": "approved", "comment": "x"}),
        json!({"state": "flagged", "comment": ""}),
        json!({"state": "reviewed", "comment": "x".repeat(2001)}),
        json!({"state": "reviewed", "comment": "a\u{1b}[31mred"}),
    ] {
        let r = post_review(quiet, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let queue = p.get_json("/api/review/queue?order=risk").unwrap();
    assert_eq!(queue["counts"]["unreviewed"], 1, "{queue}");
    assert_eq!(queue["counts"]["reviewed"], 1, "{queue}");

    // The authoriser (the pipeline's reviewer, e2e-reviewer, authorised as
    // e2e-reviewer@example.com) cannot review the session they authorised.
    let r = post_review(id, json!({"state": "reviewed", "comment": "fine by me"}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("authorised"), "{}", r.text());
    assert!(
        p.get_json(&format!("/api/sessions/{id}")).unwrap()["reviews"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Carol reviews it in the report view: the flags on the seek bar and the timeline, the
    // other account's job hidden until asked for, then her review.
    let b = Browser::start(1280, 900).unwrap();
    sign_in(&b, &p.base(), CAROL);
    b.goto(&format!("{}/session/{id}", p.base())).unwrap();
    b.wait_for(
        "document.querySelectorAll('#marks .flag').length >= 6 && document.querySelector('#review-form')",
        LIMIT,
        "the flags on the seek bar and the review form",
    )
    .unwrap();
    let shown = b
        .eval(
            "return [...document.querySelectorAll('#events li')].map((li) => li.textContent);",
            json!([]),
        )
        .unwrap();
    let shown_text = shown.to_string();
    assert!(
        shown_text.contains("useradd -m jitrec-review-eve"),
        "{shown_text}"
    );
    assert!(
        shown_text.contains("A local account was created."),
        "the flag's sentence on the timeline: {shown_text}"
    );
    assert!(
        !shown_text.contains("jitrec-review-daemon-job"),
        "the other account's job is not in the default timeline: {shown_text}"
    );
    let ledger = b
        .eval(
            "return [...document.querySelectorAll('#ledger li')].map((li) => li.textContent);",
            json!([]),
        )
        .unwrap()
        .to_string();
    for what in [
        "accounts: user added jitrec-review-eve",
        "accounts: member added jitrec-review-eve: group sudo",
        "cron: entry added /var/spool/cron/crontabs/nobody",
        "packages: installed jitrec-review-hello:amd64",
    ] {
        assert!(
            ledger.contains(what),
            "{what:?} not in the page's ledger: {ledger}"
        );
    }
    b.click(&b.find("#show-machine").unwrap()).unwrap();
    b.wait_for(
        "[...document.querySelectorAll('#events li.machine')].some((li) => li.textContent.includes('jitrec-review-daemon-job'))",
        LIMIT,
        "the rest of the machine's activity, one click away",
    )
    .unwrap();
    assert_eq!(
        b.eval(
            "return document.querySelector('#risk').textContent;",
            json!([])
        )
        .unwrap(),
        "critical"
    );
    // The filmstrip along the seek bar: every picture made and shown.
    b.wait_for(
        "[...document.querySelectorAll('#filmstrip img')].length > 0 && [...document.querySelectorAll('#filmstrip img')].every((i) => i.complete && i.naturalWidth === 192 && i.naturalHeight === 120)",
        LIMIT,
        "the filmstrip's pictures",
    )
    .unwrap();
    let artifacts = crate::report_view::artifacts();
    b.screenshot(&artifacts.join("review-session.png")).unwrap();
    b.eval(
        "document.querySelector('#review-state').value = 'flagged';",
        json!([]),
    )
    .unwrap();
    b.type_into(
        &b.find("#review-comment").unwrap(),
        "eve created and put in sudo; ask CHG-20's owner",
    )
    .unwrap();
    b.click(&b.find("#review-submit").unwrap()).unwrap();
    b.wait_for(
        "[...document.querySelectorAll('#reviews li')].some((li) => li.textContent.includes('flagged by carol'))",
        LIMIT,
        "carol's review in the session's history",
    )
    .unwrap();

    // The queue and the coverage page changed.
    b.goto(&format!("{}/review", p.base())).unwrap();
    b.wait_for(
        "document.querySelector('#review-counts').textContent.includes('0 unreviewed') && document.querySelector('#coverage tbody tr')",
        LIMIT,
        "the review page with nothing waiting",
    )
    .unwrap();
    let first_period = b
        .eval(
            "return [...document.querySelectorAll('#coverage tbody tr')[0].children].map((td) => td.textContent);",
            json!([]),
        )
        .unwrap();
    assert_eq!(
        first_period[1], "2",
        "two sessions this week: {first_period}"
    );
    assert_eq!(first_period[2], "1", "reviewed: {first_period}");
    assert_eq!(first_period[3], "1", "flagged: {first_period}");
    assert_eq!(first_period[5], "100%", "{first_period}");
    b.screenshot(&artifacts.join("review-queue.png")).unwrap();
    let carol = Client::sign_in(p.player, CAROL);
    let queue = carol.get("/api/review/queue").json().unwrap();
    assert_eq!(queue["counts"]["unreviewed"], 0, "{queue}");
    assert_eq!(queue["counts"]["flagged"], 1, "{queue}");
    assert!(queue["sessions"].as_array().unwrap().is_empty(), "{queue}");
    let cov = carol
        .get("/api/review/coverage?period=week&periods=2")
        .json()
        .unwrap();
    assert_eq!(cov["periods"][0]["sessions"], 2, "{cov}");
    assert_eq!(cov["periods"][0]["reviewed"], 1, "{cov}");
    assert_eq!(cov["periods"][0]["flagged"], 1, "{cov}");
    assert_eq!(cov["periods"][0]["share_reviewed"], 1.0, "{cov}");

    // The audit log: the refusal, the review with its comment, the queue and coverage views.
    let admin = Client::sign_in(p.player, REVIEWER);
    let audit = admin.audit();
    let has = |user: &str, action: &str, detail: &str| {
        audit.iter().any(|e| {
            e["user"] == user
                && e["action"] == action
                && e["detail"].as_str().is_some_and(|d| d.contains(detail))
        })
    };
    assert!(
        has(REVIEWER.0, "review_refused", "authorised"),
        "{audit:#?}"
    );
    assert!(has("carol", "review", "flagged: eve created"), "{audit:#?}");
    assert!(
        has("carol", "review_queue", "sessions listed"),
        "{audit:#?}"
    );
    assert!(has("carol", "review_coverage", ""), "{audit:#?}");
    assert!(has("carol", "view", ""), "{audit:#?}");
}

/// The session exported through the API: its MP4 carries a subtitle track (`mov_text`, as
/// ffprobe reports it) whose cues, read back by Debian's ffmpeg, show each command and the rule
/// that flagged it from the command's media time, and not the other account's job.
fn exported_subtitles_list_the_commands(
    p: &Pipeline,
    id: jitrec_format::SessionId,
    d: &Value,
    commands: &[(&str, &str)],
) {
    let r = p.get(&format!("/api/sessions/{id}/export.mp4")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("session.mp4");
    std::fs::write(&mp4, &r.body).unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=index,codec_type,codec_name",
        ])
        .args(["-of", "json"])
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(probe.status.success(), "{probe:?}");
    let streams: Value = serde_json::from_slice(&probe.stdout).unwrap();
    let subtitle = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "subtitle")
        .unwrap_or_else(|| panic!("no subtitle stream: {streams}"));
    assert_eq!(subtitle["codec_name"], "mov_text", "{streams}");
    // -copyts: the file's own times (ffmpeg otherwise moves every stream by the video's start).
    let srt = Command::new("ffmpeg")
        .args(["-v", "error", "-copyts", "-i"])
        .arg(&mp4)
        .args(["-map", "0:s:0", "-f", "srt", "-"])
        .output()
        .unwrap();
    assert!(srt.status.success(), "{srt:?}");
    let cues = parse_srt(&String::from_utf8(srt.stdout).unwrap());
    assert!(!cues.is_empty());
    // The export's time 0 is its first chunk's start.
    let origin = d["chunks"][0]["media_start_us"].as_u64().unwrap();
    let events = d["events"].as_array().unwrap();
    for (cmd, rule) in commands {
        let e = event_with(events, cmd);
        let at_ms = (e["media_us"].as_u64().unwrap() - origin) / 1000;
        // The command's own line (root's runuser that started it names it too).
        let line = format!("$ {}", e["data"]["command_line"].as_str().unwrap());
        let first = cues
            .iter()
            .find(|c| c.2.lines().any(|l| l == line))
            .unwrap_or_else(|| panic!("{cmd:?} in no cue: {cues:#?}"));
        assert!(
            first.0.abs_diff(at_ms) <= 1,
            "{cmd}: first shown at {} ms, it ran at {at_ms} ms",
            first.0
        );
        assert!(
            cues.iter().any(|c| c.0 <= at_ms + 1
                && at_ms < c.1
                && c.2.lines().any(|l| l.starts_with("! ") && l.contains(rule))),
            "{rule}'s flag is not shown with {cmd}: {cues:#?}"
        );
    }
    assert!(
        !cues
            .iter()
            .any(|c| c.2.contains("jitrec-review-daemon-job")),
        "the other account's job is not in the subtitles"
    );
}

/// SRT cues: (start ms, end ms, text).
fn parse_srt(srt: &str) -> Vec<(u64, u64, String)> {
    let ms = |t: &str| -> u64 {
        let (hms, milli) = t.trim().split_once(',').unwrap();
        let p: Vec<u64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
        ((p[0] * 60 + p[1]) * 60 + p[2]) * 1000 + milli.parse::<u64>().unwrap()
    };
    srt.replace("\r", "")
        .split("\n\n")
        .filter_map(|block| {
            let mut lines = block.lines().skip_while(|l| l.trim().is_empty());
            lines.next()?;
            let (a, b) = lines.next()?.split_once(" --> ")?;
            // ffmpeg's SRT carries the track's style as a font tag and an alignment.
            let text = lines.collect::<Vec<_>>().join("\n");
            let text = text
                .strip_prefix("<font face=\"Monospace\" size=\"13\">")
                .unwrap_or(&text)
                .trim_start_matches("{\\an1}")
                .trim_end_matches("</font>")
                .to_owned();
            Some((ms(a), ms(b), text))
        })
        .collect()
}

/// The filmstrip's pictures through the API: a PNG of the screen (192 wide, the picture's
/// proportions), for chunks that start with a keyframe only; made by the player's confined
/// child process.
fn filmstrip_pictures_are_made_confined(p: &Pipeline, id: jitrec_format::SessionId, d: &Value) {
    let chunks = d["chunks"].as_array().unwrap();
    let key = chunks.iter().find(|c| c["keyframe"] == true).unwrap();
    let r = p
        .get(&format!("/api/sessions/{id}/thumbs/{}.png", key["seq"]))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("thumb.png");
    std::fs::write(&png, &r.body).unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
        ])
        .args(["-of", "json"])
        .arg(&png)
        .output()
        .unwrap();
    let s: Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(s["streams"][0]["codec_name"], "png", "{s}");
    assert_eq!(s["streams"][0]["width"], 192, "{s}");
    assert_eq!(s["streams"][0]["height"], 120, "640x400 at 192 wide: {s}");
    if let Some(other) = chunks.iter().find(|c| c["keyframe"] == false) {
        let r = p
            .get(&format!("/api/sessions/{id}/thumbs/{}.png", other["seq"]))
            .unwrap();
        assert_eq!(r.status, 404, "a chunk without a keyframe has no picture");
    }
    for bad in ["x.png", "1.jpg", "99999.png"] {
        let r = p.get(&format!("/api/sessions/{id}/thumbs/{bad}")).unwrap();
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
    }
}

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");

fn player_cli(args: &[&str]) -> std::process::Output {
    Command::new(PLAYER)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn process_event(seq: u64, pid: u32, exe: &str, command_line: &str) -> jitrec_format::Event {
    use jitrec_format::{EventKind, MediaTime, ProcessStart, UserRef, fixtures};
    let at = seq * 2_000_000 + 700_000;
    jitrec_format::Event {
        media_us: MediaTime::from_micros(at),
        utc: fixtures::t0() + chrono::Duration::microseconds(at as i64),
        event: EventKind::ProcessStart(ProcessStart {
            pid,
            ppid: 1,
            user: UserRef {
                name: "root".into(),
                id: "0".into(),
            },
            exe: exe.into(),
            command_line: command_line.into(),
            elevated: true,
            in_session: Some(true),
        }),
    }
}

/// The flags of every session, as (session, seq, idx, rule), in order.
fn all_flags(index: &str, ids: &[jitrec_format::SessionId]) -> Vec<(String, u64, u32, String)> {
    let ix = jitrec_player::index::open(index).unwrap();
    let mut out = Vec::new();
    for id in ids {
        for f in ix.flags(*id).unwrap() {
            out.push((id.to_string(), f.seq, f.idx, f.rule));
        }
    }
    out
}

#[test]
fn rules_from_a_file_apply_again_through_the_cli_as_a_reindex_would_and_padding_hides_nothing() {
    use jitrec_format::{SessionHeader, fixtures};
    let tmp = tempfile::tempdir().unwrap();
    let bucket_dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let bucket = jitrec_tests::TestBucket::new(&bucket_dir);
    let index = tmp.path().join("index.sqlite3").display().to_string();
    // A: the recorded admin ran useradd under the name `ls` (`exec -a ls`), its command line
    // padded to 200 kB so that the index keeps only a cut copy of it; then a shell whose
    // `history -c` is padded on both sides, past what the index keeps of either end. B:
    // nothing of note.
    let padded = format!("ls {}", "A".repeat(200_000));
    let pad = format!(": {}", "B".repeat(100_000));
    let hidden = format!("bash -c {pad}; history -c; {pad}");
    let a =
        fixtures::stored_session_with(
            fixtures::header(fixtures::session_id(1)),
            2,
            |seq| match seq {
                0 => vec![
                    process_event(0, 100, "/usr/sbin/useradd", &padded),
                    process_event(0, 102, "/bin/bash", &hidden),
                ],
                _ => vec![process_event(1, 101, "/usr/bin/ls", "ls -l /srv")],
            },
        );
    let b = fixtures::stored_session_with(fixtures::header(fixtures::session_id(2)), 1, |_| {
        vec![process_event(0, 200, "/usr/bin/ls", "ls /home")]
    });
    let ids: Vec<_> = [&a, &b]
        .iter()
        .map(|s| SessionHeader::from_bytes(&s.header).unwrap().session_id)
        .collect();
    for s in [&a, &b] {
        for (key, bytes) in jitrec_tests::session_objects(s) {
            bucket.put(&key, &bytes).unwrap();
        }
    }
    let bucket_arg = bucket_dir.display().to_string();
    let out = player_cli(&["reindex", "--bucket-dir", &bucket_arg, "--index", &index]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flag = |id: &jitrec_format::SessionId, seq, idx, rule: &str| {
        (id.to_string(), seq, idx, rule.to_owned())
    };
    assert_eq!(
        all_flags(&index, &ids),
        [
            // The padded useradd, by its executable whatever its argv[0]; cut, and so flagged.
            flag(&ids[0], 0, 0, "account.create"),
            flag(&ids[0], 0, 0, "evasion.cut_command"),
            // The hidden `history -c`, found in the whole event.
            flag(&ids[0], 0, 1, "evasion.cut_command"),
            flag(&ids[0], 0, 1, "history.clear"),
        ],
    );

    // The operator's file: account.create off, a rule of their own on `ls`.
    let rules = tmp.path().join("rules.toml");
    std::fs::write(
        &rules,
        "version = 3\ndisable = [\"account.create\"]\n\n[[rule]]\nid = \"site.listing\"\n\
         severity = \"low\"\nsentence = \"Someone listed a directory.\"\nprogram = [\"ls\"]\n",
    )
    .unwrap();
    let rules_arg = rules.display().to_string();
    let out = player_cli(&["rules", "check", &rules_arg]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("1 rules of its own, 1 built-in rules disabled"),
        "{said}"
    );
    let out = player_cli(&["rules", "list", "--rules", &rules_arg]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("rule set builtin-2+file-3-"), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("account.create") && l.contains("disabled")),
        "{listed}"
    );
    let out = player_cli(&["rules", "apply", "--index", &index, "--rules", &rules_arg]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("2 sessions evaluated, 6 flags, 2 sessions changed"),
        "{said}"
    );
    let applied = all_flags(&index, &ids);
    // The padded one is `ls` by its argv[0]: the operator's rule on `ls` matches it too. The
    // hidden `history -c` is not in the index's copy, but its flag, found on the whole event
    // and still in force, stays.
    assert_eq!(
        applied,
        [
            flag(&ids[0], 0, 0, "evasion.cut_command"),
            flag(&ids[0], 0, 0, "site.listing"),
            flag(&ids[0], 0, 1, "evasion.cut_command"),
            flag(&ids[0], 0, 1, "history.clear"),
            flag(&ids[0], 1, 0, "site.listing"),
            flag(&ids[1], 0, 0, "site.listing"),
        ]
    );
    // A reindex with the same rules comes to the same flags as applying them.
    let out = player_cli(&[
        "reindex",
        "--bucket-dir",
        &bucket_arg,
        "--index",
        &index,
        "--rules",
        &rules_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(all_flags(&index, &ids), applied);

    // A broken rule file is refused with its reason, by `check` and by `serve`: never silently
    // run without the operator's rules.
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"x\"\nseverity = \"high\"\nsentence = \"s\"\n",
    )
    .unwrap();
    let out = player_cli(&["rules", "check", &rules_arg]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would match every process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = player_cli(&[
        "serve",
        "--bucket-dir",
        &bucket_arg,
        "--index",
        &index,
        "--listen",
        "127.0.0.1:0",
        "--rules",
        &rules_arg,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("detection rules"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An admin who runs a flagged command thousands of times (to bury the one that matters, or to
/// make the session page too heavy to open) costs the session's answer a bounded number of
/// flags per rule: the detail carries the first of each rule with every rule's count, the rest
/// come page by page, the risk is still the most severe, and the one `history -c` among them
/// is in the detail.
#[test]
fn a_flood_of_flags_is_bounded_per_rule_and_paged() {
    use jitrec_format::{SessionHeader, fixtures};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let bucket = jitrec_tests::TestBucket::new(&root);
    const FLOOD: u32 = 1_500;
    let s = fixtures::stored_session_with(fixtures::header(fixtures::session_id(7)), 2, |seq| {
        let mut e: Vec<_> = (0..FLOOD)
            .map(|i| process_event(seq, 1000 + i, "/usr/sbin/useradd", "useradd x"))
            .collect();
        if seq == 1 {
            e.push(process_event(1, 9999, "/bin/bash", "bash -c 'history -c'"));
        }
        e
    });
    for (k, v) in jitrec_tests::session_objects(&s) {
        bucket.put(&k, &v).unwrap();
    }
    let id = SessionHeader::from_bytes(&s.header).unwrap().session_id;
    let src: Arc<dyn jitrec_bucket::BucketReader> = Arc::new(jitrec_bucket::DirBucket::new(&root));
    let index: Arc<dyn jitrec_player::index::Index> = Arc::new(
        jitrec_player::index::sqlite::SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap(),
    );
    let p = crate::player::Player::start(src, index);
    let started = std::time::Instant::now();
    let d = loop {
        let r = p.get(&format!("/api/sessions/{id}"));
        if r.status == 200 {
            let d = r.json().unwrap();
            if d["session"]["status"] == "complete" {
                break d;
            }
        }
        assert!(started.elapsed() < LIMIT, "the session was not indexed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let per_rule = jitrec_player::api::FLAGS_PER_RULE as usize;
    let flags = d["flags"].as_array().unwrap();
    let of = |rule: &str| flags.iter().filter(|f| f["rule"] == rule).count();
    assert_eq!(
        of("account.create"),
        per_rule,
        "the first of the flood only"
    );
    assert_eq!(of("history.clear"), 1, "the one that matters is not buried");
    assert_eq!(d["flags_more"], true);
    let count = d["flag_counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["rule"] == "account.create")
        .unwrap()
        .clone();
    assert_eq!(count["count"], 2 * FLOOD, "{count}");
    assert_eq!(d["risk"], "high");
    // The rest, page by page, in order, each once.
    let mut all = 0usize;
    let mut after = String::new();
    let mut last = (0u64, 0u64);
    loop {
        let r = p.get(&format!(
            "/api/sessions/{id}/flags?rule=account.create&limit=1000{after}"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json().unwrap();
        let got = page["flags"].as_array().unwrap();
        for f in got {
            let at = (f["seq"].as_u64().unwrap(), f["idx"].as_u64().unwrap());
            assert!(all == 0 || at > last, "{at:?} after {last:?}");
            last = at;
        }
        all += got.len();
        if page["more"] != true {
            break;
        }
        after = format!("&after_seq={}&after_idx={}", last.0, last.1);
    }
    assert_eq!(all, 2 * FLOOD as usize);
    assert_eq!(
        p.get(&format!("/api/sessions/{id}/flags")).status,
        400,
        "a rule is needed"
    );
}
