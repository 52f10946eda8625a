//! The review workflow: who looked at which session, what they concluded, and what is still
//! waiting for a look.
//!
//! A reviewer marks a session **reviewed** (looked at, nothing to follow up) or **flagged**
//! (looked at, needs follow-up), with a comment; each mark is kept (a session's history is every
//! mark, its state the latest), and audited. The **queue** is every session without a mark,
//! oldest or riskiest first, with counts; **coverage** is, per day, week or month, the share of
//! the sessions started then that were reviewed or flagged.
//!
//! Separation of duties (`serve --review-separation`): the person who authorised an elevation,
//! and the person elevated, cannot review it. Both names come from the session header, which
//! the endpoint wrote: the rule keeps an honest authoriser from approving their own grant, but
//! an endpoint's root can name someone else. Names compare without case, without the `oidc:`
//! prefix, and an e-mail-like name also by its part before `@` (refusing too often is the safe
//! side).
//!
//! Reviews are records ([`crate::record`]): `reindex` never touches them.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use jitrec_format::SessionId;
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::auth::Login;
use crate::index::{Index, IndexError, SessionRow, SqlValue};

/// The review tables' forward migrations ([`crate::record::migrate`]).
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS reviews (session_id TEXT NOT NULL, at BIGINT NOT NULL, \
     reviewer TEXT NOT NULL, state TEXT NOT NULL, comment TEXT NOT NULL, \
     PRIMARY KEY (session_id, at, reviewer))",
        "CREATE INDEX IF NOT EXISTS reviews_at ON reviews (at)",
    ],
    // v2: whether the session was still being recorded when it was marked. Such a mark covers what
    // was recorded until then: once the session closes, it is back in the queue.
    &["ALTER TABLE reviews ADD COLUMN while_open BIGINT NOT NULL DEFAULT 0"],
];

/// A review that covers its session: made after it closed, or while it is still open (the
/// session's `closed` is the player's own sight of its close record, never an endpoint's time).
const COVERS: &str = "(r.while_open = 0 OR s.closed = 0)";

/// The longest comment kept.
pub const COMMENT_MAX: usize = 2_000;

/// The most sessions a queue page lists.
pub const QUEUE_MAX: u32 = 200;

/// The most periods a coverage report covers.
pub const PERIODS_MAX: u32 = 120;

/// Why a review could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("no session {0} in the index")]
    NotFound(SessionId),
}

/// A reviewer's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    /// Looked at; nothing to follow up.
    Reviewed,
    /// Looked at; needs follow-up.
    Flagged,
}

impl ReviewState {
    fn as_str(self) -> &'static str {
        match self {
            ReviewState::Reviewed => "reviewed",
            ReviewState::Flagged => "flagged",
        }
    }

    fn parse(s: &str) -> Option<ReviewState> {
        match s {
            "reviewed" => Some(ReviewState::Reviewed),
            "flagged" => Some(ReviewState::Flagged),
            _ => None,
        }
    }
}

/// One mark on a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    pub at: DateTime<Utc>,
    pub reviewer: String,
    pub state: ReviewState,
    pub comment: String,
}

/// Who may review whose sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReviewPolicy {
    /// The authoriser and the elevated user cannot review the session.
    pub separation: bool,
}

pub fn init(index: &dyn Index) -> Result<(), ReviewError> {
    crate::record::migrate(index, "review", "reviews", MIGRATIONS).map_err(|e| match e {
        crate::record::RecordError::Index(e) => ReviewError::Index(e),
        e => ReviewError::Invalid(e.to_string()),
    })
}

/// The names a person may go by, for comparing a reviewer with a header's names.
fn identities(name: &str) -> Vec<String> {
    let n = name.trim().to_lowercase();
    let n = n.strip_prefix("oidc:").unwrap_or(&n).to_owned();
    let mut out = vec![n.clone()];
    if let Some((local, _)) = n.split_once('@')
        && !local.is_empty()
    {
        out.push(local.to_owned());
    }
    // A Windows account as `DOMAIN\user` (or `.\user`, a local one) is also `user`.
    if let Some((_, user)) = n.rsplit_once('\\')
        && !user.is_empty()
    {
        out.push(user.to_owned());
    }
    out
}

fn same_person(a: &str, b: &str) -> bool {
    let b = identities(b);
    !a.trim().is_empty() && identities(a).iter().any(|x| b.contains(x))
}

/// Why `reviewer` may not review `session` under `policy`, if they may not.
pub fn refusal(policy: ReviewPolicy, session: &SessionRow, reviewer: &str) -> Option<String> {
    if !policy.separation {
        return None;
    }
    if let Some(by) = session.authorized_by.as_deref()
        && same_person(reviewer, by)
    {
        return Some(format!(
            "{reviewer} authorised this elevation ({by}), and the person who authorised an \
             elevation cannot review it"
        ));
    }
    if same_person(reviewer, &session.user_name) {
        return Some(format!(
            "{reviewer} is the elevated user of this session, who cannot review it"
        ));
    }
    None
}

/// Records `reviewer`'s mark on `id` (after the policy's check).
pub fn mark(
    index: &dyn Index,
    policy: ReviewPolicy,
    id: SessionId,
    reviewer: &str,
    state: ReviewState,
    comment: &str,
) -> Result<Review, ReviewError> {
    if comment.chars().count() > COMMENT_MAX {
        return Err(ReviewError::Invalid(format!(
            "a comment of at most {COMMENT_MAX} characters"
        )));
    }
    if comment
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ReviewError::Invalid(
            "a comment without control characters".into(),
        ));
    }
    if state == ReviewState::Flagged && comment.trim().is_empty() {
        return Err(ReviewError::Invalid(
            "say in the comment what needs following up".into(),
        ));
    }
    let session = index.session(id)?.ok_or(ReviewError::NotFound(id))?;
    if let Some(why) = refusal(policy, &session, reviewer) {
        return Err(ReviewError::Refused(why));
    }
    let review = Review {
        at: Utc::now(),
        reviewer: reviewer.to_owned(),
        state,
        comment: comment.to_owned(),
    };
    index.exec(
        "INSERT INTO reviews (session_id, at, reviewer, state, comment, while_open) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            SqlValue::Text(id.to_string()),
            SqlValue::Int(review.at.timestamp_micros()),
            SqlValue::Text(review.reviewer.clone()),
            SqlValue::Text(state.as_str().into()),
            SqlValue::Text(review.comment.clone()),
            SqlValue::Int(i64::from(!session.closed)),
        ],
    )?;
    Ok(review)
}

fn review_of(r: &[SqlValue]) -> Option<Review> {
    Some(Review {
        at: DateTime::from_timestamp_micros(r.first()?.int()?)?,
        reviewer: r.get(1)?.text()?.to_owned(),
        state: ReviewState::parse(r.get(2)?.text()?)?,
        comment: r.get(3)?.text()?.to_owned(),
    })
}

/// Every mark on `id`, oldest first.
pub fn history(index: &dyn Index, id: SessionId) -> Result<Vec<Review>, IndexError> {
    let rows = index.query(
        "SELECT at, reviewer, state, comment FROM reviews WHERE session_id = $1 \
         ORDER BY at, reviewer LIMIT 1000",
        &[SqlValue::Text(id.to_string())],
    )?;
    Ok(rows.iter().filter_map(|r| review_of(r)).collect())
}

/// The latest mark of each of `ids` that has one.
pub fn latest(
    index: &dyn Index,
    ids: &[SessionId],
) -> Result<HashMap<SessionId, Review>, IndexError> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(100) {
        let marks = crate::index::placeholders(chunk.len());
        let params: Vec<SqlValue> = chunk
            .iter()
            .map(|i| SqlValue::Text(i.to_string()))
            .collect();
        let rows = index.query(
            &format!(
                "SELECT r.session_id, r.at, r.reviewer, r.state, r.comment FROM reviews r \
                 WHERE r.session_id IN ({marks}) AND r.at = (SELECT MAX(x.at) FROM reviews x \
                 WHERE x.session_id = r.session_id)"
            ),
            &params,
        )?;
        for r in rows {
            if let (Some(id), Some(rev)) = (
                r.first()
                    .and_then(|v| v.text())
                    .and_then(|t| t.parse().ok()),
                review_of(&r[1..]),
            ) {
                out.insert(id, rev);
            }
        }
    }
    Ok(out)
}

/// How the queue is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOrder {
    /// Oldest first.
    #[default]
    Oldest,
    /// Most severe flag first, then oldest.
    Risk,
}

/// A session waiting for review.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub id: SessionId,
    pub started_at: DateTime<Utc>,
    pub user_name: String,
    pub hostname: String,
    pub authorized_by: Option<String>,
    pub status: String,
    pub closed: bool,
    pub risk: Option<crate::rules::Severity>,
}

/// The queue's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub unreviewed: u64,
    /// Of those, with a flag of severity high or above.
    pub unreviewed_high_risk: u64,
    /// Sessions whose latest mark is `flagged`.
    pub flagged: u64,
    pub reviewed: u64,
}

/// The queue: sessions without a mark, in `order`, at most `limit`; and the counts.
pub fn queue(
    index: &dyn Index,
    order: QueueOrder,
    limit: u32,
) -> Result<(Vec<Waiting>, Counts), IndexError> {
    const RISK: &str = "(SELECT MAX(f.rank) FROM flags f WHERE f.session_id = s.id)";
    const UNREVIEWED: &str = "NOT EXISTS (SELECT 1 FROM reviews r WHERE r.session_id = s.id AND (r.while_open = 0 OR s.closed = 0))";
    let order_by = match order {
        QueueOrder::Oldest => "s.started_at, s.id".to_owned(),
        QueueOrder::Risk => format!("COALESCE({RISK}, -1) DESC, s.started_at, s.id"),
    };
    let rows = index.query(
        &format!(
            "SELECT s.id, s.started_at, s.user_name, s.hostname, s.authorized_by, s.status, \
             s.closed, {RISK} FROM sessions s WHERE {UNREVIEWED} ORDER BY {order_by} LIMIT $1"
        ),
        &[SqlValue::Int(i64::from(limit.clamp(1, QUEUE_MAX)))],
    )?;
    let waiting = rows
        .iter()
        .filter_map(|r| {
            Some(Waiting {
                id: r.first()?.text()?.parse().ok()?,
                started_at: DateTime::from_timestamp_micros(r.get(1)?.int()?)?,
                user_name: r.get(2)?.text()?.to_owned(),
                hostname: r.get(3)?.text()?.to_owned(),
                authorized_by: r
                    .get(4)?
                    .text()
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
                status: r.get(5)?.text()?.to_owned(),
                closed: r.get(6)?.int()? != 0,
                risk: r
                    .get(7)
                    .and_then(SqlValue::int)
                    .and_then(crate::rules::Severity::from_rank),
            })
        })
        .collect();
    let count = |sql: &str, params: &[SqlValue]| -> Result<u64, IndexError> {
        Ok(index
            .query(sql, params)?
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::int)
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    };
    let latest_is = |state: &str| {
        format!(
            "SELECT COUNT(*) FROM reviews r JOIN sessions s ON s.id = r.session_id \
             WHERE r.state = '{state}' AND {COVERS} AND r.at = \
             (SELECT MAX(x.at) FROM reviews x WHERE x.session_id = r.session_id)"
        )
    };
    let counts = Counts {
        unreviewed: count(
            &format!("SELECT COUNT(*) FROM sessions s WHERE {UNREVIEWED}"),
            &[],
        )?,
        unreviewed_high_risk: count(
            &format!(
                "SELECT COUNT(*) FROM sessions s WHERE {UNREVIEWED} AND EXISTS \
                 (SELECT 1 FROM flags f WHERE f.session_id = s.id AND f.rank >= $1)"
            ),
            &[SqlValue::Int(crate::rules::Severity::High.rank())],
        )?,
        flagged: count(&latest_is("flagged"), &[])?,
        reviewed: count(&latest_is("reviewed"), &[])?,
    };
    Ok((waiting, counts))
}

/// The length of a coverage period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    #[default]
    Week,
    Month,
}

/// Coverage of one period: of the sessions started in it, how many have been looked at.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Coverage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sessions: u64,
    pub reviewed: u64,
    pub flagged: u64,
    pub unreviewed: u64,
    /// (reviewed + flagged) / sessions; `None` for a period without sessions.
    pub share_reviewed: Option<f64>,
}

/// The start of the period holding `t` (UTC; weeks start on Monday).
fn period_start(p: Period, t: DateTime<Utc>) -> DateTime<Utc> {
    let d = t.date_naive();
    let first = match p {
        Period::Day => d,
        Period::Week => d - Duration::days(i64::from(d.weekday().num_days_from_monday())),
        Period::Month => d.with_day(1).unwrap_or(d),
    };
    Utc.from_utc_datetime(&first.and_hms_opt(0, 0, 0).unwrap_or_default())
}

fn next_period(p: Period, start: DateTime<Utc>) -> DateTime<Utc> {
    match p {
        Period::Day => start + Duration::days(1),
        Period::Week => start + Duration::days(7),
        Period::Month => start
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(start + Duration::days(31)),
    }
}

/// Coverage of the last `periods` periods up to `now`, newest first.
pub fn coverage(
    index: &dyn Index,
    period: Period,
    periods: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Coverage>, IndexError> {
    let periods = periods.clamp(1, PERIODS_MAX);
    let mut starts = vec![period_start(period, now)];
    for _ in 1..periods {
        let newest_first = *starts.last().unwrap_or(&now);
        // The period before: the start of the period holding the instant before this one.
        starts.push(period_start(
            period,
            newest_first - Duration::microseconds(1),
        ));
    }
    let from = *starts.last().unwrap_or(&now);
    let rows = index.query(
        &format!(
            "SELECT s.started_at, (SELECT r.state FROM reviews r WHERE r.session_id = s.id \
             AND {COVERS} ORDER BY r.at DESC LIMIT 1) FROM sessions s WHERE s.started_at >= $1"
        ),
        &[SqlValue::Int(from.timestamp_micros())],
    )?;
    let mut out: Vec<Coverage> = starts
        .iter()
        .map(|s| Coverage {
            from: *s,
            to: next_period(period, *s),
            ..Coverage::default()
        })
        .collect();
    for r in rows {
        let Some(t) = r
            .first()
            .and_then(SqlValue::int)
            .and_then(DateTime::from_timestamp_micros)
        else {
            continue;
        };
        let Some(c) = out.iter_mut().find(|c| c.from <= t && t < c.to) else {
            continue; // started after now (an endpoint clock ahead): not in a period yet
        };
        c.sessions += 1;
        match r
            .get(1)
            .and_then(SqlValue::text)
            .and_then(ReviewState::parse)
        {
            Some(ReviewState::Reviewed) => c.reviewed += 1,
            Some(ReviewState::Flagged) => c.flagged += 1,
            None => c.unreviewed += 1,
        }
    }
    for c in &mut out {
        c.share_reviewed =
            (c.sessions > 0).then(|| (c.reviewed + c.flagged) as f64 / c.sessions as f64);
    }
    Ok(out)
}

// --- HTTP ------------------------------------------------------------------------------------

/// The review routes (behind sign-in; both roles review).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/review", get(|| crate::web::page(REVIEW_HTML)))
        .route("/api/sessions/{id}/review", post(post_review))
        .route("/api/review/queue", get(get_queue))
        .route("/api/review/coverage", get(get_coverage))
}

const REVIEW_HTML: &str = include_str!("../web/review.html");

fn answer(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        code,
        Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

async fn in_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReviewError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ReviewError::Invalid(m))) => Err(answer(StatusCode::BAD_REQUEST, m)),
        Ok(Err(ReviewError::Refused(m))) => Err(answer(StatusCode::FORBIDDEN, m)),
        Ok(Err(e @ ReviewError::NotFound(_))) => Err(answer(StatusCode::NOT_FOUND, e)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a review request failed");
            Err(answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the index failed",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "a review request panicked");
            Err(answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request failed",
            ))
        }
    }
}

#[derive(Deserialize)]
struct MarkBody {
    state: String,
    #[serde(default)]
    comment: String,
}

/// `POST /api/sessions/{id}/review` `{"state": "reviewed"|"flagged", "comment": ...}`. Audited,
/// refusals too (an attempt to review what one may not is worth knowing about).
async fn post_review(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    Path(id): Path<String>,
    Json(b): Json<MarkBody>,
) -> Response {
    let Ok(session) = id.parse::<SessionId>() else {
        return answer(StatusCode::BAD_REQUEST, format!("session id {id:?}"));
    };
    let Some(state) = ReviewState::parse(&b.state) else {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("state {:?}: reviewed or flagged", b.state),
        );
    };
    let (index, policy, user) = (std::sync::Arc::clone(&st.index), st.review, login.user);
    let r = in_blocking(move || {
        let r = mark(index.as_ref(), policy, session, &user, state, &b.comment);
        let (action, detail) = match &r {
            Ok(_) => ("review", format!("{}: {}", state.as_str(), b.comment)),
            Err(e) => ("review_refused", format!("{}: {e}", state.as_str())),
        };
        crate::auth::audit(index.as_ref(), &user, action, &session.to_string(), &detail)
            .map_err(|e| ReviewError::Index(IndexError::Other(e.to_string())))?;
        r
    })
    .await;
    match r {
        Ok(review) => Json(review).into_response(),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
struct QueueParams {
    #[serde(default)]
    order: QueueOrder,
    limit: Option<u32>,
}

/// `GET /api/review/queue?order=oldest|risk&limit=N`: audited as a listing.
async fn get_queue(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    Query(p): Query<QueueParams>,
) -> Response {
    let index = std::sync::Arc::clone(&st.index);
    let r = in_blocking(move || {
        let (waiting, counts) = queue(index.as_ref(), p.order, p.limit.unwrap_or(50))?;
        crate::auth::audit(
            index.as_ref(),
            &login.user,
            "review_queue",
            "",
            &format!("{} sessions listed", waiting.len()),
        )
        .map_err(|e| ReviewError::Index(IndexError::Other(e.to_string())))?;
        Ok(serde_json::json!({ "sessions": waiting, "counts": counts }))
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
struct CoverageParams {
    #[serde(default)]
    period: Period,
    periods: Option<u32>,
}

/// `GET /api/review/coverage?period=day|week|month&periods=N`.
async fn get_coverage(
    State(st): State<AppState>,
    Extension(login): Extension<Login>,
    Query(p): Query<CoverageParams>,
) -> Response {
    let index = std::sync::Arc::clone(&st.index);
    let r = in_blocking(move || {
        let c = coverage(index.as_ref(), p.period, p.periods.unwrap_or(8), Utc::now())?;
        crate::auth::audit(index.as_ref(), &login.user, "review_coverage", "", "")
            .map_err(|e| ReviewError::Index(IndexError::Other(e.to_string())))?;
        Ok(serde_json::json!({ "period": p.period, "periods": c }))
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, by: Option<&str>) -> SessionRow {
        let mut r = SessionRow::unknown(jitrec_format::fixtures::session_id(1), Utc::now());
        r.user_name = user.into();
        r.authorized_by = by.map(str::to_owned);
        r
    }

    #[test]
    fn the_authoriser_and_the_elevated_user_cannot_review() {
        let on = ReviewPolicy { separation: true };
        let s = row("alice", Some("Bob@Example.com"));
        assert!(refusal(on, &s, "bob").is_some());
        assert!(refusal(on, &s, "oidc:bob@example.com").is_some());
        // A Windows account, `DOMAIN\\user` or `.\\user`, is its user.
        let w = row("CORP\\Bob", None);
        assert!(refusal(on, &w, "bob").is_some());
        assert!(refusal(on, &w, "oidc:bob@corp.example").is_some());
        let w = row(".\\alice", None);
        assert!(refusal(on, &w, "alice").is_some());
        assert!(refusal(on, &w, "bob").is_none());
        assert!(refusal(on, &s, "BOB@example.com").is_some());
        assert!(refusal(on, &s, "alice").is_some());
        assert!(refusal(on, &s, "carol").is_none());
        assert!(refusal(ReviewPolicy::default(), &s, "bob").is_none());
        // No authoriser named: only the elevated user is kept out.
        assert!(refusal(on, &row("alice", None), "bob").is_none());
        // An empty authoriser matches no one.
        assert!(refusal(on, &row("alice", Some("")), "").is_none());
    }

    #[test]
    fn periods_start_on_day_monday_and_the_first() {
        let t = Utc.with_ymd_and_hms(2026, 12, 2, 17, 5, 0).unwrap(); // a Wednesday
        assert_eq!(
            period_start(Period::Week, t),
            Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()
        );
        assert_eq!(
            period_start(Period::Month, t),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            period_start(Period::Day, t),
            Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap()
        );
        let m = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        assert_eq!(
            next_period(Period::Month, period_start(Period::Month, m)),
            Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()
        );
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use crate::index::{Batch, SessionRow};

    #[test]
    fn a_mark_made_while_recording_stops_covering_once_the_session_closes() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::index::open(dir.path().join("i.sqlite3").to_str().unwrap()).unwrap();
        let index = index.as_ref();
        init(index).unwrap();
        let id = jitrec_format::fixtures::session_id(3);
        let mut row = SessionRow::unknown(id, Utc::now());
        row.user_name = "alice".into();
        let put = |row: &SessionRow| {
            index
                .apply(&Batch {
                    sessions: vec![row.clone()],
                    ..Batch::default()
                })
                .unwrap();
        };
        put(&row);
        let waiting = |index: &dyn Index| {
            let (w, c) = queue(index, QueueOrder::Oldest, 10).unwrap();
            (w.len(), c.unreviewed, c.reviewed)
        };
        assert_eq!(waiting(index), (1, 1, 0));
        let policy = ReviewPolicy::default();
        mark(
            index,
            policy,
            id,
            "carol",
            ReviewState::Reviewed,
            "live, fine so far",
        )
        .unwrap();
        assert_eq!(waiting(index), (0, 0, 1), "covers the open session");
        // It goes on after the mark, and closes: what came after was not reviewed.
        row.closed = true;
        put(&row);
        assert_eq!(waiting(index), (1, 1, 0), "back in the queue");
        mark(
            index,
            policy,
            id,
            "carol",
            ReviewState::Reviewed,
            "all of it",
        )
        .unwrap();
        assert_eq!(waiting(index), (0, 0, 1));
        assert_eq!(history(index, id).unwrap().len(), 2, "both marks kept");
    }
}
