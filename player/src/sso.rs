//! The report view's single sign-on routes around [`crate::oidc`]: `/oidc/start` sends the
//! browser to the provider, `/oidc/callback` brings it back signed in, or refused. Every
//! outcome is audited like a local sign-in (`sign_in`, `sign_in_refused` when the claim maps to
//! no role, `sign_in_failed` when the flow or the token does not check), and counted in the
//! metrics.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::api::AppState;
use crate::auth;
use crate::metrics::Metrics;
use crate::web::WebConfig;

/// The cookie that binds a started sign-in to the browser that started it.
const FLOW_COOKIE: &str = "jitrec_oidc";

/// Failed callbacks audited per minute at most. Anyone can call `/oidc/callback`: beyond this
/// a failure is still counted in the metrics and logged, but writes no audit row, so nobody can
/// fill the audit log from outside. (A local sign-in's failures are bounded by its back-off.)
const FAILURES_AUDITED_PER_MINUTE: u32 = 120;

static FAILURES_AUDITED: Window = Window::new();

/// A fixed one-minute window of [`FAILURES_AUDITED_PER_MINUTE`] admissions.
struct Window(std::sync::Mutex<Option<(std::time::Instant, u32)>>);

impl Window {
    const fn new() -> Self {
        Self(std::sync::Mutex::new(None))
    }

    fn admit(&self) -> bool {
        let mut w = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let (start, n) = w.get_or_insert((now, 0));
        if now.duration_since(*start) >= std::time::Duration::from_secs(60) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        if *n == FAILURES_AUDITED_PER_MINUTE + 1 {
            tracing::warn!(
                "more than {FAILURES_AUDITED_PER_MINUTE} failed single sign-ons this minute; the \
                 rest are counted in the metrics but not audited"
            );
        }
        *n <= FAILURES_AUDITED_PER_MINUTE
    }
}

/// The largest state, code or error text read from the callback's query.
const PARAM_MAX: usize = 4096;

fn flow_cookie(config: &WebConfig, value: &str, max_age: u64) -> Option<HeaderValue> {
    // Lax, not Strict: the provider's redirect back is a cross-site navigation, and the cookie
    // must come with it. Only the callback reads it.
    HeaderValue::from_str(&format!(
        "{FLOW_COOKIE}={value}; Path=/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        if config.plain_http_cookies {
            ""
        } else {
            "; Secure"
        }
    ))
    .ok()
}

/// Why single sign-on sent the browser back to the sign-in page. Only these codes go in the
/// URL, and the page shows its own sentence for each: a link to `/login?error=...` cannot make
/// the page say what its author wants.
#[derive(Debug, Clone, Copy)]
enum Why {
    Unreachable,
    Failed,
    Denied,
    Restart,
    NoRole,
    Disabled,
}

/// Back to the sign-in page, saying why.
fn refused(why: Why) -> Response {
    let code = match why {
        Why::Unreachable => "sso_unreachable",
        Why::Failed => "sso_failed",
        Why::Denied => "sso_denied",
        Why::Restart => "sso_restart",
        Why::NoRole => "sso_no_role",
        Why::Disabled => "sso_disabled",
    };
    Redirect::to(&format!("/login?error={code}")).into_response()
}

/// `GET /oidc/start`: to the provider.
pub async fn start(Extension(config): Extension<Arc<WebConfig>>) -> Response {
    let Some(oidc) = config.oidc.clone() else {
        return (StatusCode::NOT_FOUND, "single sign-on is not configured").into_response();
    };
    match oidc.start().await {
        Ok((url, state)) => {
            let mut r = Redirect::to(&url).into_response();
            if let Some(c) = flow_cookie(&config, &state, crate::oidc::FLOW_TTL.as_secs()) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "single sign-on could not start");
            refused(Why::Unreachable)
        }
    }
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// The issuer the provider says answered (RFC 9207), when it says.
    iss: Option<String>,
}

/// `GET /oidc/callback`: the provider's answer.
pub async fn callback(
    State(st): State<AppState>,
    Extension(config): Extension<Arc<WebConfig>>,
    Query(q): Query<Callback>,
    headers: HeaderMap,
) -> Response {
    let Some(oidc) = config.oidc.clone() else {
        return (StatusCode::NOT_FOUND, "single sign-on is not configured").into_response();
    };
    let audit = |user: String, action: &'static str, detail: String| {
        let index = Arc::clone(&st.index);
        async move {
            tokio::task::spawn_blocking(move || {
                auth::audit(index.as_ref(), &user, action, "", &detail)
            })
            .await
            .is_ok_and(|r| r.is_ok())
        }
    };
    let fail = |detail: String| {
        Metrics::count(&config.metrics.sign_in_failures);
        tracing::info!(detail, "single sign-on refused");
        let record = FAILURES_AUDITED.admit();
        let write = audit("oidc".into(), "sign_in_failed", detail);
        async move {
            if record {
                write.await;
            }
        }
    };
    let too_long = |v: &Option<String>| v.as_ref().is_some_and(|v| v.len() > PARAM_MAX);
    if too_long(&q.code) || too_long(&q.state) || too_long(&q.error) || too_long(&q.iss) {
        fail(format!("via {}: an oversized callback", oidc.issuer())).await;
        return refused(Why::Failed);
    }
    if let Some(e) = &q.error {
        fail(format!(
            "via {}: the provider said {}",
            oidc.issuer(),
            auth::bounded(e, 200)
        ))
        .await;
        return refused(Why::Denied);
    }
    if q.iss.as_deref().is_some_and(|i| i != oidc.issuer()) {
        fail(format!(
            "via {}: the callback names another issuer",
            oidc.issuer()
        ))
        .await;
        return refused(Why::Failed);
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        fail(format!(
            "via {}: a callback without code or state",
            oidc.issuer()
        ))
        .await;
        return refused(Why::Failed);
    };
    // The flow must be this browser's own: the state in the cookie it got at the start.
    let bound = crate::web::cookie_value(&headers, FLOW_COOKIE).is_some_and(|c| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            c.as_bytes(),
            state.as_bytes(),
        ))
    });
    if !bound {
        fail(format!(
            "via {}: the callback's state is not the one this browser started",
            oidc.issuer()
        ))
        .await;
        return refused(Why::Restart);
    }
    let id = match oidc.finish(&state, &code).await {
        Ok(id) => id,
        Err(e) => {
            fail(format!("via {}: {e}", oidc.issuer())).await;
            return refused(Why::Failed);
        }
    };
    let said = format!(
        "via OpenID provider {}, subject {}, claim values {:?}",
        id.issuer, id.subject, id.claim_values
    );
    let Some(role) = id.role else {
        Metrics::count(&config.metrics.sign_in_failures);
        audit(
            id.account.clone(),
            "sign_in_refused",
            format!("{said}: no role maps"),
        )
        .await;
        tracing::info!(account = id.account, "single sign-on refused: no role maps");
        return refused(Why::NoRole);
    };
    let index = Arc::clone(&st.index);
    let account = id.account.clone();
    let started =
        tokio::task::spawn_blocking(move || auth::sign_in_external(index.as_ref(), &account, role))
            .await;
    let (token, login) = match started {
        Ok(Ok(Some(t))) => t,
        Ok(Ok(None)) => {
            Metrics::count(&config.metrics.sign_in_failures);
            audit(
                id.account.clone(),
                "sign_in_refused",
                format!("{said}: the account is disabled"),
            )
            .await;
            return refused(Why::Disabled);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "single sign-on: the sign-in could not be recorded");
            return refused(Why::Failed);
        }
        Err(_) => return refused(Why::Failed),
    };
    if !audit(
        login.user.clone(),
        "sign_in",
        format!("{said}: {}", role.as_str()),
    )
    .await
    {
        // A sign-in that cannot be recorded is not given.
        tracing::warn!("the audit record of a sign-in could not be written");
        let index = Arc::clone(&st.index);
        let _ = tokio::task::spawn_blocking(move || auth::sign_out(index.as_ref(), &token)).await;
        return (StatusCode::INTERNAL_SERVER_ERROR, "sign-in failed").into_response();
    }
    Metrics::count(&config.metrics.sign_ins);
    // A page that moves on by itself, not a redirect: the sign-in cookie is SameSite=Strict, and
    // a browser does not send it on a redirect that a cross-site navigation (the provider's)
    // began.
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "<!doctype html><meta http-equiv=\"refresh\" content=\"0;url=/\">\
         <title>Signed in · jitrec</title><p>Signed in. <a href=\"/\">Continue</a></p>",
    )
        .into_response();
    crate::web::security_headers(r.headers_mut());
    if let Some(c) = crate::web::session_cookie(&config, &token) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    if let Some(c) = flow_cookie(&config, "", 0) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}
