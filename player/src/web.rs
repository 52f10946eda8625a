//! The report view: the pages reviewers use, served by `jitrec-player serve` with everything
//! behind sign-in.
//!
//! The pages are plain HTML, CSS and JavaScript in `player/web/`, embedded in the binary at
//! build time (no CDN, no separate front-end server, no build step). They talk only to the JSON
//! API in [`crate::api`]. This module adds sign-in around it: [`require_login`] lets a request
//! through only with a valid sign-in cookie (and, for anything but GET and HEAD, the sign-in's
//! CSRF token in `X-CSRF-Token`); an API request without one gets 401, a page request is sent
//! to the sign-in page.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use crate::api::{self, AppState};
use crate::auth::{self, COOKIE, Login, Role};
use crate::throttle::{Refusal, SignInGuard};

const LOGIN_HTML: &str = include_str!("../web/login.html");
const LIST_HTML: &str = include_str!("../web/list.html");
const SESSION_HTML: &str = include_str!("../web/session.html");
const AUDIT_HTML: &str = include_str!("../web/audit.html");
const RETENTION_HTML: &str = include_str!("../web/retention.html");
const MACHINES_HTML: &str = include_str!("../web/machines.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");

/// The address a sign-in is counted under: the TCP peer's, or, when the peer is one of the
/// trusted reverse proxies, the client address that proxy appended last to `X-Forwarded-For`
/// (what a client sends itself comes before it, and is not believed).
pub(crate) fn client_address(config: &WebConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !config.trusted_proxies.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|a| a.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

/// Settings of the report view.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Reverse proxies whose `X-Forwarded-For` names the client (`serve --trusted-proxy`).
    pub trusted_proxies: Vec<IpAddr>,
    /// Leave `Secure` off the sign-in cookie, for a player reached over plain HTTP on loopback
    /// (`serve --plain-http-cookies`, refused on other addresses). By default the cookie is
    /// `Secure`: a browser sends it only over HTTPS (and to `localhost`).
    pub plain_http_cookies: bool,
    /// Where requests and sign-ins are counted (`serve --metrics-listen` shows them).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Sign-in through an OpenID provider (`serve --oidc-issuer`).
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Refuse sign-in with local accounts (`serve --no-local-accounts`; needs OIDC).
    pub no_local_accounts: bool,
}

/// The whole service: pages, sign-in and the API, everything but the sign-in page and its
/// assets behind [`require_login`].
pub fn app(state: AppState, config: WebConfig) -> Router {
    let protected = Router::new()
        .route("/", get(|| page(LIST_HTML)))
        .route("/session/{id}", get(|| page(SESSION_HTML)))
        .route("/audit", get(|| page(AUDIT_HTML)))
        .route("/api/me", get(me))
        .route("/api/logout", post(logout))
        .route("/api/audit", get(audit_log))
        .route("/retention", get(|| page(RETENTION_HTML)))
        .route("/api/retention", get(retention_overview))
        .route(
            "/api/retention/policies",
            axum::routing::put(set_policy).delete(unset_policy),
        )
        .route(
            "/api/sessions/{id}/hold",
            post(set_hold).delete(release_hold),
        )
        .route("/api/sessions/{id}/ack", post(acknowledge))
        .route("/machines", get(|| page(MACHINES_HTML)))
        .route("/api/machines", get(machines))
        .route("/api/machines/decide", post(decide_machine))
        .merge(api::routes())
        .merge(crate::review::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_login));
    Router::new()
        .route("/login", get(|| page(LOGIN_HTML)))
        .route("/api/login", post(login))
        .route("/api/login/options", get(login_options))
        .route("/oidc/start", get(crate::sso::start))
        .route("/oidc/callback", get(crate::sso::callback))
        .route("/assets/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route("/assets/app.css", get(|| asset(APP_CSS, "text/css")))
        .merge(protected)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&config.metrics),
            crate::metrics::track,
        ))
        .layer(Extension(Arc::new(config)))
        .layer(Extension(Arc::new(SignInGuard::default())))
        .layer(Extension(Arc::new(api::PlayLog::default())))
        .with_state(state)
}

/// What the sign-in page offers: local accounts, single sign-on, or both.
async fn login_options(Extension(config): Extension<Arc<WebConfig>>) -> Response {
    Json(serde_json::json!({
        "local": !config.no_local_accounts,
        "oidc": config.oidc.is_some(),
    }))
    .into_response()
}

pub(crate) fn security_headers(h: &mut HeaderMap) {
    // The pages load only their own scripts and media; nothing may frame them.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

pub(crate) async fn page(html: &'static str) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response();
    security_headers(r.headers_mut());
    r
}

async fn asset(body: &'static str, mime: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, mime)], body).into_response();
    security_headers(r.headers_mut());
    r
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, COOKIE)
}

/// The value of the cookie `name` the request carries.
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

fn unauthorised(req: &Request, why: &str) -> Response {
    if req.uri().path().starts_with("/api/") {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": why })),
        )
            .into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

/// Lets a request through only with a valid sign-in (and its CSRF token when it changes state);
/// hands the [`Login`] to the handlers.
pub async fn require_login(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(token) = cookie_token(req.headers()) else {
        return unauthorised(&req, "sign in first");
    };
    let index = Arc::clone(&st.index);
    let found = tokio::task::spawn_blocking(move || auth::login(index.as_ref(), &token)).await;
    let login = match found {
        Ok(Ok(Some(l))) => l,
        Ok(Ok(None)) => return unauthorised(&req, "your sign-in has expired; sign in again"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading sign-ins failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "sign-in check failed").into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "sign-in check panicked");
            return (StatusCode::INTERNAL_SERVER_ERROR, "sign-in check failed").into_response();
        }
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        // Compared in constant time: how long a wrong guess takes says nothing of the token.
        let matches = sent.is_some_and(|t| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                t.as_bytes(),
                login.csrf.as_bytes(),
            ))
        });
        if !matches {
            return (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({ "error": "missing or wrong X-CSRF-Token" })),
            )
                .into_response();
        }
    }
    req.extensions_mut().insert(login);
    let mut resp = next.run(req).await;
    security_headers(resp.headers_mut());
    resp
}

#[derive(Deserialize)]
struct Credentials {
    user: String,
    password: String,
}

/// The largest sign-in request read: a user name and a password of the longest allowed, as JSON.
const LOGIN_BODY_MAX: usize = 8 * 1024;

/// The sign-in cookie for `token`.
pub(crate) fn session_cookie(config: &WebConfig, token: &str) -> Option<HeaderValue> {
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::LOGIN_TTL.as_secs(),
        if config.plain_http_cookies {
            ""
        } else {
            "; Secure"
        }
    );
    HeaderValue::from_str(&cookie).ok()
}

fn too_many(r: Refusal) -> Response {
    let why = match r {
        Refusal::BackOff(_) => "too many failed sign-ins: wait before trying again",
        Refusal::Busy => "too many sign-ins at once: try again in a moment",
    };
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(serde_json::json!({ "error": why, "retry_after": r.retry_after_secs() })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_secs()));
    resp
}

/// Sign-in. In this order, so that what an attacker sends costs as little as it can: the
/// address and name are checked against the back-off ([`crate::throttle`]), the body is read
/// within [`LOGIN_BODY_MAX`], the password is checked when a hashing turn is free, and the
/// outcome audited (the name as sent, cut to the audit bound).
async fn login(
    State(st): State<AppState>,
    Extension(config): Extension<Arc<WebConfig>>,
    Extension(guard): Extension<Arc<SignInGuard>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    req: Request,
) -> Response {
    let Some(Extension(ConnectInfo(peer))) = peer else {
        // Without the peer's address every client would share one throttle key.
        tracing::error!("sign-in refused: the server was started without peer addresses");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "sign-in is not available",
        )
            .into_response();
    };
    if config.no_local_accounts {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({
                "error": "local accounts are switched off here: sign in with single sign-on"
            })),
        )
            .into_response();
    }
    let from = client_address(&config, peer.ip(), req.headers());
    // JSON only: a cross-site form cannot send it without a CORS preflight we never answer.
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = axum::body::to_bytes(req.into_body(), LOGIN_BODY_MAX).await;
    let creds: Option<Credentials> = match (json, body) {
        (true, Ok(b)) => serde_json::from_slice(&b).ok(),
        _ => None,
    };
    let Some(c) = creds else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": format!("send {{\"user\", \"password\"}} as JSON, at most {LOGIN_BODY_MAX} bytes")
            })),
        )
            .into_response();
    };
    let throttled = |r| {
        crate::metrics::Metrics::count(&config.metrics.sign_ins_throttled);
        too_many(r)
    };
    let wait = match guard.attempt(&c.user, from, Instant::now()) {
        Ok(w) => w,
        Err(r) => return throttled(r),
    };
    let turn = match guard.hashing_turn().await {
        Ok(t) => t,
        Err(r) => return throttled(r),
    };
    let index = Arc::clone(&st.index);
    let user = c.user.clone();
    // The turn goes with the check: released when the hash has run, even if this request is
    // cancelled (the client hung up) meanwhile.
    let result = tokio::task::spawn_blocking(move || {
        let r = auth::sign_in(index.as_ref(), &user, &c.password);
        drop(turn);
        r
    })
    .await;
    let outcome = match &result {
        Ok(Ok(Some(_))) => {
            guard.succeeded(&c.user, from);
            crate::metrics::Metrics::count(&config.metrics.sign_ins);
            ("sign_in", String::new())
        }
        Ok(Ok(None)) => {
            crate::metrics::Metrics::count(&config.metrics.sign_in_failures);
            let detail = match wait {
                Some(w) => format!("from {from}; next attempt refused for {} s", w.as_secs()),
                None => format!("from {from}"),
            };
            ("sign_in_failed", detail)
        }
        _ => ("sign_in_error", format!("from {from}")),
    };
    let index = Arc::clone(&st.index);
    let audited = tokio::task::spawn_blocking(move || {
        auth::audit(index.as_ref(), &c.user, outcome.0, "", &outcome.1)
    })
    .await;
    if !matches!(audited, Ok(Ok(()))) {
        // A sign-in that cannot be recorded is not given.
        tracing::warn!("the audit record of a sign-in could not be written");
        return (StatusCode::INTERNAL_SERVER_ERROR, "sign-in failed").into_response();
    }
    match result {
        Ok(Ok(Some((token, login)))) => {
            let mut r = Json(&login).into_response();
            if let Some(v) = session_cookie(&config, &token) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Ok(None)) => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "wrong user name or password" })),
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "sign-in failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "sign-in failed").into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sign-in failed").into_response(),
    }
}

async fn me(Extension(login): Extension<Login>) -> Response {
    Json(login).into_response()
}

async fn logout(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = cookie_token(&headers) {
        let index = Arc::clone(&st.index);
        let user = login.user.clone();
        let _ = tokio::task::spawn_blocking(move || {
            auth::sign_out(index.as_ref(), &token)?;
            auth::audit(index.as_ref(), &user, "sign_out", "", "")
        })
        .await;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("jitrec_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

#[derive(Deserialize)]
struct AuditParams {
    /// RFC 3339: records older than this (the previous page's `next_before`).
    before: Option<String>,
    limit: Option<u32>,
}

async fn audit_log(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    axum::extract::Query(p): axum::extract::Query<AuditParams>,
) -> Response {
    if login.role != Role::Admin {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": "the audit log is for admins" })),
        )
            .into_response();
    }
    let before = match p.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(b) => match chrono::DateTime::parse_from_rfc3339(b) {
            Ok(t) => Some(t.with_timezone(&chrono::Utc)),
            Err(e) => return bad(format!("before {b:?} is not an RFC 3339 time: {e}")),
        },
    };
    let limit = p.limit.unwrap_or(auth::AUDIT_PAGE_MAX);
    let index = Arc::clone(&st.index);
    match tokio::task::spawn_blocking(move || auth::audit_log(index.as_ref(), limit, before)).await
    {
        Ok(Ok(entries)) => {
            // A full page may have more behind it.
            let next = (entries.len() as u32 >= limit.clamp(1, auth::AUDIT_PAGE_MAX))
                .then(|| {
                    entries
                        .last()
                        .map(|e| e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                })
                .flatten();
            Json(serde_json::json!({ "entries": entries, "next_before": next })).into_response()
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the audit log failed",
        )
            .into_response(),
    }
}

fn forbidden(what: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(serde_json::json!({ "error": format!("{what} is for admins") })),
    )
        .into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "retention request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

fn bad(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

/// What an admin operation writes to the audit log: action, target, detail.
type AuditRecord = (&'static str, String, String);

/// Runs `f` on the index off the async workers, writing `audit` first (a change is answered only
/// once it is audited); admins only.
async fn admin_op(
    st: &AppState,
    login: &Login,
    audit: Option<AuditRecord>,
    f: impl FnOnce(
        &dyn crate::index::Index,
    ) -> Result<serde_json::Value, crate::retention::RetentionError>
    + Send
    + 'static,
) -> Response {
    if login.role != Role::Admin {
        return forbidden("retention");
    }
    let index = Arc::clone(&st.index);
    let user = login.user.clone();
    let r = tokio::task::spawn_blocking(move || {
        if let Some((action, target, detail)) = audit {
            auth::audit(index.as_ref(), &user, action, &target, &detail)
                .map_err(|e| crate::retention::RetentionError::Invalid(e.to_string()))?;
        }
        f(index.as_ref())
    })
    .await;
    match r {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(crate::retention::RetentionError::Invalid(m))) => bad(m),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

async fn retention_overview(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
) -> Response {
    let job = st.retention.as_ref().map(|s| s.state());
    admin_op(&st, &login, None, move |idx| {
        use crate::retention as r;
        let review: Vec<_> = r::awaiting_review(idx, 500)?
            .into_iter()
            .map(|(session, status)| serde_json::json!({ "session": session, "status": status }))
            .collect();
        Ok(serde_json::json!({
            "policies": r::policies(idx)?.list(),
            "holds": r::holds(idx)?,
            "deletions": r::deletion_log(idx, 500)?,
            "awaiting_review": review,
            "job": job,
        }))
    })
    .await
}

#[derive(Deserialize)]
struct PolicyBody {
    level: String,
    #[serde(default)]
    name: String,
    /// `null` keeps forever.
    keep_days: Option<u32>,
}

async fn set_policy(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    Json(p): Json<PolicyBody>,
) -> Response {
    let Some(level) = crate::retention::Level::parse(&p.level) else {
        return bad(format!(
            "level {:?}: use global, company, location or computer",
            p.level
        ));
    };
    let detail = p
        .keep_days
        .map_or_else(|| "forever".to_owned(), |d| format!("{d} days"));
    let by = login.user.clone();
    admin_op(
        &st,
        &login,
        Some(("policy_set", format!("{} {}", p.level, p.name), detail)),
        move |idx| {
            crate::retention::set_policy(idx, level, &p.name, p.keep_days, &by)?;
            Ok(serde_json::json!({}))
        },
    )
    .await
}

#[derive(Deserialize)]
struct PolicyKey {
    level: String,
    #[serde(default)]
    name: String,
}

async fn unset_policy(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    axum::extract::Query(p): axum::extract::Query<PolicyKey>,
) -> Response {
    let Some(level) = crate::retention::Level::parse(&p.level) else {
        return bad(format!("level {:?}", p.level));
    };
    admin_op(
        &st,
        &login,
        Some((
            "policy_unset",
            format!("{} {}", p.level, p.name),
            String::new(),
        )),
        move |idx| {
            let existed = crate::retention::unset_policy(idx, level, &p.name)?;
            Ok(serde_json::json!({ "removed": existed }))
        },
    )
    .await
}

/// Every machine key on record (admins): pending ones first, with fingerprints.
async fn machines(State(st): State<AppState>, Extension(login): Extension<Login>) -> Response {
    admin_op(&st, &login, None, |idx| {
        let keys = crate::enroll::list(idx)
            .map_err(|e| crate::retention::RetentionError::Invalid(e.to_string()))?;
        Ok(serde_json::json!({ "keys": keys }))
    })
    .await
}

#[derive(Deserialize)]
struct DecideBody {
    /// `approve`, `revoke` or `replace`.
    action: String,
    machine: String,
    fingerprint: String,
    #[serde(default)]
    reason: String,
}

/// An administrator's decision on a machine key (audited by [`crate::enroll`]).
async fn decide_machine(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    Json(b): Json<DecideBody>,
) -> Response {
    let by = login.user.clone();
    admin_op(&st, &login, None, move |idx| {
        use crate::enroll;
        let f = match b.action.as_str() {
            "approve" => enroll::approve,
            "revoke" => enroll::revoke,
            "replace" => enroll::replace,
            other => {
                return Err(crate::retention::RetentionError::Invalid(format!(
                    "action {other:?}: use approve, revoke or replace"
                )));
            }
        };
        f(idx, &b.machine, &b.fingerprint, &by, &b.reason)
            .map_err(|e| crate::retention::RetentionError::Invalid(e.to_string()))?;
        Ok(serde_json::json!({ "machine": b.machine, "fingerprint": b.fingerprint, "action": b.action }))
    })
    .await
}

#[derive(Deserialize)]
struct AckBody {
    #[serde(default)]
    note: String,
    /// The status the admin reviewed; refused if the session's is another now.
    status: String,
}

/// An admin acknowledges a session kept for its trouble (audited before it takes effect).
async fn acknowledge(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Json(b): Json<AckBody>,
) -> Response {
    let Ok(session) = id.parse::<jitrec_format::SessionId>() else {
        return bad(format!("session id {id:?}"));
    };
    let Some(reviewed) = crate::scan::Status::parse(&b.status) else {
        return bad(format!(
            "status {:?}: tampered, gap or interrupted",
            b.status
        ));
    };
    let by = login.user.clone();
    admin_op(
        &st,
        &login,
        Some(("retention_ack", id, format!("{} ({})", b.note, b.status))),
        move |idx| {
            let ack = crate::retention::acknowledge(idx, session, reviewed, &b.note, &by)?;
            Ok(serde_json::json!(ack))
        },
    )
    .await
}

#[derive(Deserialize)]
struct HoldBody {
    reason: String,
}

async fn set_hold(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Json(h): Json<HoldBody>,
) -> Response {
    let Ok(session) = id.parse::<jitrec_format::SessionId>() else {
        return bad(format!("session id {id:?}"));
    };
    let Some(bucket) = st.bucket_admin.clone() else {
        return no_bucket_admin();
    };
    let by = login.user.clone();
    admin_op(
        &st,
        &login,
        Some(("hold", id, h.reason.clone())),
        move |idx| {
            let enforced = crate::retention::hold(idx, bucket.as_ref(), session, &h.reason, &by)?;
            Ok(hold_answer(enforced))
        },
    )
    .await
}

/// A hold's answer: who enforces it, in a word and in a sentence.
fn hold_answer(enforced: jitrec_bucket::HoldEnforcement) -> serde_json::Value {
    serde_json::json!({
        "enforced_by": match enforced {
            jitrec_bucket::HoldEnforcement::Bucket => "bucket",
            jitrec_bucket::HoldEnforcement::RetentionJobOnly => "retention_job",
        },
        "message": enforced.describe(),
    })
}

/// Legal holds go through the bucket's admin handle; a player started without one cannot place
/// or release them.
fn no_bucket_admin() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({
            "error": "this player has no admin access to the bucket: legal holds cannot be placed or released here"
        })),
    )
        .into_response()
}

async fn release_hold(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Ok(session) = id.parse::<jitrec_format::SessionId>() else {
        return bad(format!("session id {id:?}"));
    };
    let Some(bucket) = st.bucket_admin.clone() else {
        return no_bucket_admin();
    };
    admin_op(
        &st,
        &login,
        Some(("hold_release", id, String::new())),
        move |idx| {
            let released = crate::retention::release(idx, bucket.as_ref(), session)?;
            Ok(match released {
                None => serde_json::json!({ "released": false }),
                Some(e) => {
                    let mut v = hold_answer(e);
                    v["released"] = serde_json::Value::Bool(true);
                    v
                }
            })
        },
    )
    .await
}
