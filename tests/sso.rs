//! Single sign-on (issue 21): the real `jitrec-player serve` against a real OpenID provider on
//! 127.0.0.1 (`oidc-provider`, `jitrec_tests::oidc`), driven through both login forms in
//! Debian's Chromium. A user whose `groups` claim maps to a role gets that role; one whose claim
//! maps to none is refused; both outcomes are in the audit log; a forged callback signs nobody
//! in; and `--no-local-accounts` leaves single sign-on as the only door.

use std::cell::RefCell;
use std::process::{Command, Stdio};
use std::time::Duration;

use jitrec_tests::child::{Served, serve_http};
use jitrec_tests::webdriver::Browser;
use jitrec_tests::{http, oidc};
use serde_json::json;

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");
const LIMIT: Duration = Duration::from_secs(120);
const SECRET: &str = "client secret of the test provider";
const ADMIN: (&str, &str) = ("adam", "admin password 12");

/// The provider and a player that signs in through it (each on a port of its own: the
/// provider must know the player's callback, the player the provider's issuer).
fn start(dir: &std::path::Path, extra: &[&str]) -> (oidc::Provider, Served) {
    let index = dir.join("index.sqlite3");
    let secret = dir.join("oidc-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    let provider = RefCell::new(None);
    let mut player = serve_http(
        |addr| {
            let p = oidc::start(
                "jitrec-player",
                SECRET,
                &format!("http://{addr}/oidc/callback"),
                &[
                    ("bob", &["staff", "jit-reviewers"]),
                    ("alice", &["jit-admins"]),
                    ("mallory", &["contractors"]),
                ],
            );
            let issuer = p.issuer.clone();
            *provider.borrow_mut() = Some(p);
            let mut c = Command::new(PLAYER);
            c.args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--plain-http-cookies",
            ])
            .args(["--retention-every", "0"])
            .arg("--index")
            .arg(&index)
            .arg("--bucket-dir")
            .arg(dir.join("bucket"))
            .args([
                "--oidc-issuer",
                &issuer,
                "--oidc-client-id",
                "jitrec-player",
            ])
            .arg("--oidc-client-secret-file")
            .arg(&secret)
            .args([
                "--oidc-redirect-url",
                &format!("http://{addr}/oidc/callback"),
            ])
            .args([
                "--oidc-reviewer",
                "jit-reviewers",
                "--oidc-admin",
                "jit-admins",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    player.wait_ok("/login", LIMIT);
    (provider.into_inner().unwrap(), player)
}

fn add_admin(dir: &std::path::Path) {
    let index = dir.join("index.sqlite3");
    crate::door::add_user(index.to_str().unwrap(), ADMIN, "admin");
}

/// Where the browser is and what it shows, for a failing test's message.
fn page(b: &Browser) -> String {
    b.eval(
        "return location.href + '\\n' + document.body.innerText.slice(0, 3000);",
        json!([]),
    )
    .map_or_else(
        |e| e.to_string(),
        |v| v.as_str().unwrap_or_default().to_owned(),
    )
}

/// Goes through the provider's login and consent forms as `user` (those it shows: a user
/// already signed in there sees neither), from the player's sign-in page; returns when the
/// browser is back at the player.
fn through_provider(b: &Browser, base: &str, user: &str) {
    b.goto(&format!("{base}/login")).unwrap();
    b.wait_for(
        "!document.querySelector('#sso').hidden",
        LIMIT,
        "the single sign-on button",
    )
    .unwrap();
    b.click(&b.find("#sso-link").unwrap()).unwrap();
    let back =
        format!("location.href.startsWith('{base}/') && !location.pathname.startsWith('/oidc/')");
    let step = format!(
        "{back} ? 'player' \
         : document.querySelector('input[name=prompt][value=consent]') ? 'consent' \
         : document.querySelector('input[name=login]') ? 'login' : null"
    );
    for _ in 0..4 {
        let at = b
            .wait_for(&step, LIMIT, "the provider's forms or the player")
            .unwrap_or_else(|e| panic!("{e}; the page: {}", page(b)));
        match at.as_str() {
            Some("player") => return,
            // Marks this page, so the wait below ends once another page has replaced it.
            _ => {
                b.eval("window.jitrecLeft = true; return null;", json!([]))
                    .unwrap();
            }
        }
        match at.as_str() {
            Some("login") => {
                b.type_into(&b.find("input[name=login]").unwrap(), user)
                    .unwrap();
                b.type_into(&b.find("input[name=password]").unwrap(), "any password")
                    .unwrap();
                b.click(&b.find("button[type=submit]").unwrap()).unwrap();
            }
            _ => {
                let button = b
                    .find("form:has(input[name=prompt][value=consent]) button[type=submit]")
                    .unwrap();
                b.click(&button).unwrap();
            }
        }
        b.wait_for(
            "!window.jitrecLeft && document.readyState === 'complete'",
            LIMIT,
            "the next page",
        )
        .unwrap_or_else(|e| panic!("{e}; the page: {}", page(b)));
    }
    panic!("still at the provider after four forms: {}", page(b));
}

#[test]
fn a_user_signs_in_through_the_provider_with_the_role_their_claim_maps_to_and_others_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    add_admin(tmp.path());
    let (_provider, player) = start(tmp.path(), &[]);
    let base = format!("http://{}", player.addr);

    // bob's groups hold jit-reviewers: a reviewer.
    {
        let b = Browser::start(1280, 900).unwrap();
        through_provider(&b, &base, "bob");
        b.wait_for(
            "location.pathname === '/' && document.querySelector('#me').textContent",
            LIMIT,
            "the session list after single sign-on",
        )
        .unwrap();
        let me = b
            .eval_async("return await (await fetch('/api/me')).json();")
            .unwrap();
        assert_eq!(me["user"], "oidc:bob", "{me}");
        assert_eq!(me["role"], "reviewer", "{me}");
        let audit = b
            .eval_async("return (await fetch('/api/audit')).status;")
            .unwrap();
        assert_eq!(audit, 403, "a reviewer may not read the audit log");
        b.screenshot(&tmp.path().join("sso-bob.png")).unwrap();

        // An admin disables the account: bob's sign-in ends at once, and his next single
        // sign-on (the provider still knows him) is refused.
        let out = Command::new(PLAYER)
            .args(["user", "disable", "oidc:bob", "--index"])
            .arg(tmp.path().join("index.sqlite3"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let me = b
            .eval_async("return (await fetch('/api/me')).status;")
            .unwrap();
        assert_eq!(me, 401, "a disabled account's sign-in has ended");
        through_provider(&b, &base, "bob");
        let error = b
            .wait_for(
                "location.pathname === '/login' && document.querySelector('#error').textContent",
                LIMIT,
                "the sign-in page saying why",
            )
            .unwrap();
        assert!(error.as_str().unwrap().contains("disabled"), "{error}");
    }
    // mallory is signed in at the provider, but her groups map to no role here.
    {
        let b = Browser::start(1280, 900).unwrap();
        through_provider(&b, &base, "mallory");
        let error = b
            .wait_for(
                "location.pathname === '/login' && document.querySelector('#error').textContent",
                LIMIT,
                "the sign-in page saying why",
            )
            .unwrap();
        assert!(error.as_str().unwrap().contains("no role"), "{error}");
        let me = b
            .eval_async("return (await fetch('/api/me')).status;")
            .unwrap();
        assert_eq!(me, 401, "mallory is not signed in");
        // The page shows only its own sentences: a crafted link cannot put words on it.
        b.goto(&format!(
            "{base}/login?error=Call%20%2B1-555-0100%20to%20unlock"
        ))
        .unwrap();
        let shown = b
            .wait_for(
                "document.readyState === 'complete' && !document.querySelector('#sso').hidden ? document.querySelector('#error').textContent || 'empty' : null",
                LIMIT,
                "the sign-in page",
            )
            .unwrap();
        assert_eq!(shown, "empty", "a crafted error text is not shown");
    }

    // A callback nobody started, or with a state this browser did not get, signs nobody in.
    for (path, cookie) in [
        (
            "/oidc/callback?code=forged&state=forged",
            "jitrec_oidc=forged",
        ),
        (
            "/oidc/callback?code=forged&state=forged",
            "jitrec_oidc=another",
        ),
        ("/oidc/callback?code=forged&state=forged", "x=y"),
        ("/oidc/callback?error=access_denied", "jitrec_oidc=forged"),
        ("/oidc/callback", "jitrec_oidc=forged"),
    ] {
        let r = http::request(player.addr, "GET", path, &[("Cookie", cookie)], b"").unwrap();
        assert_eq!(r.status, 303, "{path}: {}", r.text());
        assert!(
            r.header("location").unwrap().starts_with("/login?error="),
            "{path}"
        );
        assert!(
            r.header("set-cookie").is_none(),
            "{path}: no sign-in cookie"
        );
    }

    // Both outcomes are in the audit log, with what the provider vouched for.
    // Local accounts still work beside single sign-on.
    let entries = crate::door::Client::sign_in(player.addr, ADMIN).audit();
    let audit = json!(entries);
    let has = |user: &str, action: &str, words: &str| {
        entries.iter().any(|e| {
            e["user"] == user
                && e["action"] == action
                && e["detail"].as_str().unwrap().contains(words)
        })
    };
    assert!(has("oidc:bob", "sign_in", "jit-reviewers"), "{audit}");
    assert!(has("oidc:mallory", "sign_in_refused", "no role"), "{audit}");
    assert!(has("oidc:bob", "sign_in_refused", "disabled"), "{audit}");
    assert!(
        has("oidc", "sign_in_failed", "not the one this browser started"),
        "{audit}"
    );
    assert!(has("oidc", "sign_in_failed", "access_denied"), "{audit}");
    assert!(
        has("oidc", "sign_in_failed", "was not started here"),
        "{audit}"
    );

    // Anyone can call the callback: a flood of forged ones is refused, and fills neither the
    // audit log (at most 120 failed single sign-ons a minute are written) nor stops the player.
    for n in 0..300 {
        let r = http::request(
            player.addr,
            "GET",
            &format!("/oidc/callback?code=c{n}&state=s{n}"),
            &[("Cookie", &format!("jitrec_oidc=s{n}"))],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 303);
    }
    let failed = crate::door::Client::sign_in(player.addr, ADMIN)
        .audit()
        .iter()
        .filter(|e| e["action"] == "sign_in_failed")
        .count();
    assert!(
        (120..=125).contains(&failed),
        "{failed} failed single sign-ons audited after a flood of 300 (bound: 120 a minute)"
    );
}

/// With `--no-local-accounts`, the password form is refused and hidden; single sign-on still
/// works, and an admin claim makes an admin.
#[test]
fn with_local_accounts_off_only_single_sign_on_signs_in() {
    let tmp = tempfile::tempdir().unwrap();
    add_admin(tmp.path());
    let (_provider, player) = start(tmp.path(), &["--no-local-accounts"]);
    let base = format!("http://{}", player.addr);
    let login = http::request(
        player.addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        json!({"user": ADMIN.0, "password": ADMIN.1})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(login.status, 403, "{}", login.text());
    assert!(login.header("set-cookie").is_none());
    let b = Browser::start(1280, 900).unwrap();
    through_provider(&b, &base, "alice");
    b.wait_for(
        "location.pathname === '/' && document.querySelector('#me').textContent",
        LIMIT,
        "the session list after single sign-on",
    )
    .unwrap();
    let me = b
        .eval_async("return await (await fetch('/api/me')).json();")
        .unwrap();
    assert_eq!(me["role"], "admin", "{me}");
    b.goto(&format!("{base}/login")).unwrap();
    let hidden = b
        .wait_for(
            "document.querySelector('#signin').hidden ? 'hidden' : null",
            LIMIT,
            "the password form hidden",
        )
        .unwrap();
    assert_eq!(hidden, "hidden");
}
