//! The report view: the pages reviewers use, served by `jitrec-player serve` with everything
//! behind sign-in.
//!
//! The pages are plain HTML, CSS and JavaScript in `player/web/`, embedded in the binary at
//! build time (no CDN, no separate front-end server, no build step). They talk only to the JSON
//! API in [`crate::api`]. This module adds sign-in around it: [`require_login`] lets a request
//! through only with a valid sign-in cookie (and, for anything but GET and HEAD, the sign-in's
//! CSRF token in `X-CSRF-Token`); an API request without one gets 401, a page request is sent
//! to the sign-in page.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use crate::api::{self, AppState};
use crate::auth::{self, COOKIE, Login, Role};

const LOGIN_HTML: &str = include_str!("../web/login.html");
const LIST_HTML: &str = include_str!("../web/list.html");
const SESSION_HTML: &str = include_str!("../web/session.html");
const AUDIT_HTML: &str = include_str!("../web/audit.html");
const RETENTION_HTML: &str = include_str!("../web/retention.html");
const MACHINES_HTML: &str = include_str!("../web/machines.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");

/// Settings of the report view.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Mark the cookie `Secure` (when served over HTTPS, e.g. behind a TLS-terminating proxy).
    pub secure_cookies: bool,
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
        .route("/machines", get(|| page(MACHINES_HTML)))
        .route("/api/machines", get(machines))
        .route("/api/machines/decide", post(decide_machine))
        .merge(api::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_login));
    Router::new()
        .route("/login", get(|| page(LOGIN_HTML)))
        .route("/api/login", post(login))
        .route("/assets/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route("/assets/app.css", get(|| asset(APP_CSS, "text/css")))
        .merge(protected)
        .layer(Extension(Arc::new(config)))
        .with_state(state)
}

fn security_headers(h: &mut HeaderMap) {
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

async fn page(html: &'static str) -> Response {
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
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == COOKIE)
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
        if sent != Some(login.csrf.as_str()) {
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

async fn login(
    State(st): State<AppState>,
    Extension(config): Extension<Arc<WebConfig>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // JSON only: a cross-site form cannot send it without a CORS preflight we never answer.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let creds: Option<Credentials> = json.then(|| serde_json::from_slice(&body).ok()).flatten();
    let Some(c) = creds else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "send {\"user\", \"password\"} as JSON" })),
        )
            .into_response();
    };
    let index = Arc::clone(&st.index);
    let result = tokio::task::spawn_blocking(move || {
        let r = auth::sign_in(index.as_ref(), &c.user, &c.password);
        let action = match &r {
            Ok(Some(_)) => "sign_in",
            _ => "sign_in_failed",
        };
        let _ = auth::audit(index.as_ref(), &c.user, action, "", "");
        r
    })
    .await;
    match result {
        Ok(Ok(Some((token, login)))) => {
            let cookie = format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                auth::LOGIN_TTL.as_secs(),
                if config.secure_cookies {
                    "; Secure"
                } else {
                    ""
                }
            );
            let mut r = Json(&login).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
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

async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie_token(&headers) {
        let index = Arc::clone(&st.index);
        let _ = tokio::task::spawn_blocking(move || auth::sign_out(index.as_ref(), &token)).await;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("jitrec_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn audit_log(State(st): State<AppState>, Extension(login): Extension<Login>) -> Response {
    if login.role != Role::Admin {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": "the audit log is for admins" })),
        )
            .into_response();
    }
    let index = Arc::clone(&st.index);
    match tokio::task::spawn_blocking(move || auth::audit_log(index.as_ref(), 500)).await {
        Ok(Ok(entries)) => Json(serde_json::json!({ "entries": entries })).into_response(),
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
    admin_op(&st, &login, None, |idx| {
        use crate::retention as r;
        Ok(serde_json::json!({
            "policies": r::policies(idx)?.list(),
            "holds": r::holds(idx)?,
            "deletions": r::deletion_log(idx, 500)?,
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
