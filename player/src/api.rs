//! The HTTP API (axum, JSON) the report view and other tools use.
//!
//! ```text
//! GET  /api/sessions                    list: user, machine, company, location, computer,
//!                                       from, to (RFC 3339), status, q (text), order, after, limit
//! GET  /api/sessions/{id}               one session with its init segments, chunks, first events
//! GET  /api/sessions/{id}/events        more events: after_seq, after_idx, limit (pages)
//! GET  /api/sessions/{id}/flags         one rule's matches: rule, after_seq, after_idx, limit
//! GET  /api/sessions/{id}/init/{n}.mp4  init segment        (Range supported)
//! GET  /api/sessions/{id}/chunks/{n}.m4s media segment      (Range supported)
//! GET  /api/sessions/{id}/playlist.m3u8 HLS (fMP4) playlist
//! GET  /api/sessions/{id}/thumbs/{n}.png the filmstrip's picture of chunk n (a keyframe chunk)
//! GET  /api/sessions/{id}/export.mp4    the session as one MP4 (`?part=N` after a size change)
//! POST /api/sessions/{id}/verify        re-check the session in the bucket, update its status
//! POST /api/notify                      fast path: `{"session": id}` or empty, index now
//! GET  /api/status                      indexer progress and sessions per status
//! ```
//!
//! Media is served from the bucket, but only for chunks and init segments the index knows, so
//! the API cannot be used to read arbitrary objects. The index and the bucket are blocking
//! APIs; every handler reaches them through `spawn_blocking`.
//!
//! `serve` puts these routes behind sign-in ([`crate::web`]); a signed-in user's views,
//! searches, exports and verifications are written to the audit log, and a request whose audit
//! record cannot be written is refused rather than served unrecorded.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use jitrec_format::{ObjectKey, SessionId};
use serde::{Deserialize, Serialize};

use crate::auth::Login;
use crate::index::{ChunkRow, EventRow, Index, InitRow, MAX_PAGE, Query, SessionRow};
use crate::indexer::{IndexerHandle, IndexerStats};
use crate::range::{RangeAnswer, parse_range};
use jitrec_bucket::BucketReader;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub index: Arc<dyn Index>,
    pub src: Arc<dyn BucketReader>,
    pub indexer: IndexerHandle,
    /// Write access to the bucket for legal holds (`None`: holds are the job's alone).
    pub bucket_admin: Option<Arc<dyn jitrec_bucket::BucketAdmin>>,
    /// The player's age identities, to serve and export encrypted sessions.
    pub keyring: Option<Arc<crate::unseal::Keyring>>,
    /// The retention schedule's supervisor, when `serve` runs the job.
    pub retention: Option<Arc<crate::retention::Supervisor>>,
    /// Who may review whose sessions ([`crate::review`]).
    pub review: crate::review::ReviewPolicy,
    /// The filmstrip's decoder and the pictures it made ([`crate::thumbs`]); `None` turns the
    /// filmstrip off (503).
    pub filmstrip: Option<Arc<crate::thumbs::Filmstrip>>,
}

/// Which sign-ins have already been recorded watching which sessions, so that the first media
/// or playlist request of a session per sign-in writes a `play` audit record and the hundreds
/// after it (a chunk every two seconds) do not. In memory and bounded: when full it starts
/// again, which records a watcher twice, never not at all.
#[derive(Debug, Default)]
pub struct PlayLog(std::sync::Mutex<std::collections::HashSet<(String, SessionId)>>);

/// Sessions remembered by [`PlayLog`] before it starts again.
const PLAY_LOG_MAX: usize = 100_000;

impl PlayLog {
    fn seen(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, SessionId)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this sign-in (named by its CSRF token, unique per sign-in) has a `play` record
    /// of the session already.
    fn recorded(&self, login: &Login, id: SessionId) -> bool {
        self.seen().contains(&(login.csrf.clone(), id))
    }

    /// Notes the `play` record as written.
    fn mark(&self, login: &Login, id: SessionId) {
        let mut seen = self.seen();
        if seen.len() >= PLAY_LOG_MAX {
            seen.clear();
        }
        seen.insert((login.csrf.clone(), id));
    }
}

/// Writes the `play` record of a session's media or playlist, the first time this sign-in
/// fetches any of it. Media is not served unrecorded: the record is noted only once written,
/// so requests racing the first one each write their own (a record too many, never one too
/// few), and a failed write refuses the request.
async fn audit_play(
    st: &AppState,
    login: &Option<Extension<Login>>,
    plays: &Option<Extension<Arc<PlayLog>>>,
    id: SessionId,
    what: String,
) -> Result<(), ApiError> {
    let (Some(Extension(l)), Some(Extension(plays))) = (login, plays) else {
        return Ok(());
    };
    if plays.recorded(l, id) {
        return Ok(());
    }
    audit(
        st,
        login,
        "play",
        id.to_string(),
        format!("first fetch: {what}"),
    )
    .await?;
    plays.mark(l, id);
    Ok(())
}

/// The API's routes, without sign-in (tests of the API alone; `serve` uses [`crate::web::app`]).
pub fn router(state: AppState) -> Router {
    routes().with_state(state)
}

/// The API's routes, for a caller that adds its own layers and state.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", get(list))
        .route("/api/sessions/{id}", get(session))
        .route("/api/sessions/{id}/events", get(events_page))
        .route("/api/sessions/{id}/flags", get(flags_page))
        .route("/api/sessions/{id}/init/{name}", get(init_segment))
        .route("/api/sessions/{id}/chunks/{name}", get(media_segment))
        .route("/api/sessions/{id}/playlist.m3u8", get(playlist))
        .route("/api/sessions/{id}/thumbs/{name}", get(thumbnail))
        .route("/api/sessions/{id}/export.mp4", get(export_mp4))
        .route("/api/sessions/{id}/verify", post(verify))
        .route("/api/notify", post(notify))
        .route("/api/status", get(status))
}

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(m: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, m.into())
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, m.into())
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "API request failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Runs blocking index/bucket work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// Writes an audit record for a signed-in request (none when the router runs without sign-in,
/// as in tests of the API alone).
async fn audit(
    st: &AppState,
    login: &Option<Extension<Login>>,
    action: &'static str,
    target: String,
    detail: String,
) -> Result<(), ApiError> {
    let Some(Extension(l)) = login else {
        return Ok(());
    };
    let (index, user) = (Arc::clone(&st.index), l.user.clone());
    blocking(move || {
        crate::auth::audit(index.as_ref(), &user, action, &target, &detail)
            .map_err(ApiError::internal)
    })
    .await
}

fn session_id(s: &str) -> Result<SessionId, ApiError> {
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("session id {s:?}: {e}")))
}

/// Query parameters of the session list.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    pub user: Option<String>,
    pub machine: Option<String>,
    pub company: Option<String>,
    pub location: Option<String>,
    pub computer: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub status: Option<String>,
    /// Sessions with a flag at least this severe (`low` .. `critical`).
    pub risk: Option<String>,
    pub q: Option<String>,
    pub after: Option<String>,
    pub limit: Option<u32>,
    /// `newest` (default) or `oldest` first.
    pub order: Option<String>,
}

impl ListParams {
    /// The filters set, in words, for the audit log (empty if none).
    fn described(&self) -> String {
        let fields = [
            ("user", &self.user),
            ("machine", &self.machine),
            ("company", &self.company),
            ("location", &self.location),
            ("computer", &self.computer),
            ("from", &self.from),
            ("to", &self.to),
            ("status", &self.status),
            ("risk", &self.risk),
        ];
        fields
            .iter()
            .filter_map(|(n, v)| {
                v.as_deref()
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("{n}={v:?}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn query(self) -> Result<Query, ApiError> {
        let time = |name: &str, v: Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
            v.filter(|s| !s.is_empty())
                .map(|s| {
                    DateTime::parse_from_rfc3339(&s)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| {
                            ApiError::bad_request(format!(
                                "{name} {s:?} is not an RFC 3339 time: {e}"
                            ))
                        })
                })
                .transpose()
        };
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(Query {
            user: nonempty(self.user),
            machine: nonempty(self.machine),
            company: nonempty(self.company),
            location: nonempty(self.location),
            computer: nonempty(self.computer),
            from: time("from", self.from)?,
            to: time("to", self.to)?,
            status: nonempty(self.status)
                .map(|s| {
                    crate::scan::Status::parse(&s).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "status {s:?}: expected recording, silent, complete, gap, interrupted or tampered"
                        ))
                    })
                })
                .transpose()?,
            risk: nonempty(self.risk)
                .map(|s| {
                    crate::rules::Severity::parse(&s).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "risk {s:?}: expected info, low, medium, high or critical"
                        ))
                    })
                })
                .transpose()?,
            text: nonempty(self.q),
            after: nonempty(self.after).map(|a| session_id(&a)).transpose()?,
            limit: self.limit.unwrap_or(50).clamp(1, MAX_PAGE),
            oldest_first: match self.order.as_deref() {
                None | Some("") | Some("newest") => false,
                Some("oldest") => true,
                Some(o) => {
                    return Err(ApiError::bad_request(format!(
                        "order {o:?}: expected newest or oldest"
                    )));
                }
            },
        })
    }
}

async fn list(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    let filters = p.described();
    let q = p.query()?;
    let text = q.text.clone();
    let index = Arc::clone(&st.index);
    let page = blocking(move || {
        let page = index.list(&q).map_err(ApiError::internal)?;
        // Each row says how far its signatures vouch for it, beside its status.
        let labels = page
            .sessions
            .iter()
            .map(|s| trust(index.as_ref(), s.session.id, s.session.status).map(|(a, _)| a))
            .collect::<Result<Vec<_>, _>>()?;
        // And its risk (the most severe flag) and review state.
        let ids: Vec<SessionId> = page.sessions.iter().map(|s| s.session.id).collect();
        let risks = index.risks(&ids).map_err(ApiError::internal)?;
        let reviews = crate::review::latest(index.as_ref(), &ids).map_err(ApiError::internal)?;
        let mut v = serde_json::to_value(&page).map_err(ApiError::internal)?;
        if let Some(rows) = v.get_mut("sessions").and_then(|r| r.as_array_mut()) {
            for ((row, a), id) in rows.iter_mut().zip(labels).zip(&ids) {
                row["authenticity"] = serde_json::json!(a.label());
                row["risk"] = serde_json::json!(risks.get(id).map(|r| r.as_str()));
                row["review"] = serde_json::json!(reviews.get(id));
            }
        }
        Ok((page.sessions.len(), v))
    })
    .await?;
    // A text search and a filtered listing say what a reviewer was looking for: both are
    // audited (the plain first page of everything is not).
    let detail = format!("{} sessions on this page", page.0);
    match (text, filters) {
        (Some(t), f) => {
            let detail = if f.is_empty() {
                detail
            } else {
                format!("{detail}; {f}")
            };
            audit(&st, &login, "search", t, detail).await?;
        }
        (None, f) if !f.is_empty() => audit(&st, &login, "list", f, detail).await?,
        _ => {}
    }
    Ok(Json(page.1).into_response())
}

/// One session, as `GET /api/sessions/{id}` answers.
#[derive(Debug, Serialize)]
pub struct SessionDetail {
    pub session: SessionRow,
    /// The policy governing the session, when it expires, and any legal hold.
    pub retention: RetentionInfo,
    pub inits: Vec<InitRow>,
    pub chunks: Vec<ChunkRow>,
    /// The first [`crate::index::MAX_EVENTS_PAGE`] events; more through
    /// `GET /api/sessions/{id}/events` when `events_more` says so.
    pub events: Vec<EventRow>,
    /// More events follow the ones here.
    pub events_more: bool,
    /// Whether the signatures vouch for the session (see `docs/player.md`, "Enrolment").
    pub authenticity: crate::enroll::Authenticity,
    /// Who or what ended the recording (format v2), from its close record.
    pub stopped_by: Option<jitrec_format::StopCause>,
    /// The same elevation's sessions, when the recorder died and was restarted during it: the
    /// one this session continues and the ones that continue it. Only sessions of the same
    /// machine are linked (the claim is the endpoint's).
    pub elevation: Elevation,
    /// What the detection rules flagged, in order ([`crate::rules`]): the first
    /// [`FLAGS_PER_RULE`] matches of each rule.
    pub flags: Vec<crate::rules::FlagRow>,
    /// How often each rule matched in the session, and how severe it is.
    pub flag_counts: Vec<crate::index::FlagCount>,
    /// Some rule matched more often than `flags` holds: the rest through
    /// `GET /api/sessions/{id}/flags?rule=RULE`.
    pub flags_more: bool,
    /// The most severe flag's severity; `None` when nothing was flagged.
    pub risk: Option<crate::rules::Severity>,
    /// Every review of the session, oldest first ([`crate::review`]).
    pub reviews: Vec<crate::review::Review>,
}

/// Sessions of one elevation split by recorder restarts.
#[derive(Debug, Default, Serialize)]
pub struct Elevation {
    pub continues: Option<SessionId>,
    pub continued_by: Vec<SessionId>,
}

fn elevation(index: &dyn Index, s: &SessionRow) -> Result<Elevation, ApiError> {
    use crate::index::SqlValue;
    let continues = match s.continues {
        Some(c) => index
            .session(c)
            .map_err(ApiError::internal)?
            // The claim is the endpoint's: linked only to an earlier session of the same
            // machine and user.
            .filter(|p| {
                p.machine_id == s.machine_id
                    && !s.machine_id.is_empty()
                    && p.user_name == s.user_name
                    && p.started_at <= s.started_at
            })
            .map(|p| p.id),
        None => None,
    };
    let rows = index
        .query(
            "SELECT id FROM sessions WHERE continues = $1 AND machine_id = $2 AND user_name = $3 \
             AND started_at >= $4 ORDER BY id LIMIT 100",
            &[
                SqlValue::Text(s.id.to_string()),
                SqlValue::Text(s.machine_id.clone()),
                SqlValue::Text(s.user_name.clone()),
                SqlValue::Int(s.started_at.timestamp_micros()),
            ],
        )
        .map_err(ApiError::internal)?;
    let continued_by = rows
        .iter()
        .filter_map(|r| r.first().and_then(SqlValue::text))
        .filter_map(|t| t.parse().ok())
        .collect();
    Ok(Elevation {
        continues,
        continued_by,
    })
}

/// The retention view of one session.
#[derive(Debug, Serialize)]
pub struct RetentionInfo {
    /// The governing policy in words; `None` if no policy matches (then it is never deleted).
    pub policy: Option<String>,
    /// When the retention job may delete it; `None` while recording, kept forever or unresolved.
    pub expires_at: Option<DateTime<Utc>>,
    pub hold: Option<crate::retention::Hold>,
}

fn retention_info(index: &dyn Index, s: &SessionRow) -> Result<RetentionInfo, ApiError> {
    use crate::retention as r;
    let policies = r::policies(index).map_err(ApiError::internal)?;
    let p = policies.resolve(
        s.company.as_deref(),
        s.location.as_deref(),
        s.computer.as_deref(),
    );
    let hold = r::hold_of(index, s.id).map_err(ApiError::internal)?;
    // As the retention job counts: from when the player first saw the close record.
    let at = crate::locate::key_of(index, s.id).map_err(ApiError::internal)?;
    let closed_seen = crate::witness::lookup(index, &ObjectKey::SessionClosed(at).to_string())
        .map_err(ApiError::internal)?
        .map(|w| w.seen_at);
    let expires_at = match (p.and_then(|p| p.keep_days), s.closed, closed_seen) {
        (Some(d), true, Some(seen)) => {
            chrono::Duration::try_days(i64::from(d)).and_then(|d| seen.checked_add_signed(d))
        }
        _ => None,
    };
    Ok(RetentionInfo {
        policy: p.map(ToString::to_string),
        expires_at,
        hold,
    })
}

async fn session(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    audit(&st, &login, "view", id.to_string(), String::new()).await?;
    let d = blocking(move || {
        let session = st
            .index
            .session(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no session {id} in the index")))?;
        let (authenticity, stopped_by) = trust(st.index.as_ref(), id, session.status)?;
        let bounded = st
            .index
            .flags_bounded(id, FLAGS_PER_RULE)
            .map_err(ApiError::internal)?;
        Ok(SessionDetail {
            risk: bounded.counts.iter().map(|c| c.severity).max(),
            flags_more: bounded
                .counts
                .iter()
                .any(|c| c.count > u64::from(FLAGS_PER_RULE)),
            flags: bounded.flags,
            flag_counts: bounded.counts,
            reviews: crate::review::history(st.index.as_ref(), id).map_err(ApiError::internal)?,
            authenticity,
            stopped_by,
            elevation: elevation(st.index.as_ref(), &session)?,
            retention: retention_info(st.index.as_ref(), &session)?,
            session,
            inits: st.index.inits(id).map_err(ApiError::internal)?,
            chunks: st.index.chunks(id).map_err(ApiError::internal)?,
            events_more: false,
            events: st
                .index
                .events_page(id, None, crate::index::MAX_EVENTS_PAGE)
                .map_err(ApiError::internal)?,
        })
        .map(|mut d| {
            d.events_more = d.events.len() >= crate::index::MAX_EVENTS_PAGE as usize;
            d
        })
    })
    .await?;
    Ok(Json(d).into_response())
}

/// Matches of one rule a session's detail carries; the rest come page by page.
pub const FLAGS_PER_RULE: u32 = 100;

/// Query parameters of a page of one rule's flags.
#[derive(Debug, Default, Deserialize)]
struct FlagsParams {
    rule: String,
    after_seq: Option<u64>,
    after_idx: Option<u32>,
    limit: Option<u32>,
}

/// `GET /api/sessions/{id}/flags?rule=RULE`: the next page of one rule's matches in a session
/// (the detail carries the first [`FLAGS_PER_RULE`] of each). Audited as a view.
async fn flags_page(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<FlagsParams>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    if p.rule.is_empty() || p.rule.len() > 64 {
        return Err(ApiError::bad_request("rule: a rule id (1-64 characters)"));
    }
    audit(
        &st,
        &login,
        "view",
        id.to_string(),
        format!("flags of {}", crate::auth::bounded(&p.rule, 64)),
    )
    .await?;
    let after = p.after_seq.map(|s| (s, p.after_idx.unwrap_or(u32::MAX)));
    let limit = p
        .limit
        .unwrap_or(crate::index::MAX_EVENTS_PAGE)
        .clamp(1, crate::index::MAX_EVENTS_PAGE);
    let flags = blocking(move || {
        st.index
            .flags_page(id, &p.rule, after, limit)
            .map_err(ApiError::internal)
    })
    .await?;
    #[derive(Serialize)]
    struct FlagsAnswer {
        more: bool,
        flags: Vec<crate::rules::FlagRow>,
    }
    let more = flags.len() >= limit as usize;
    Ok(Json(FlagsAnswer { more, flags }).into_response())
}

/// Query parameters of an events page.
#[derive(Debug, Default, Deserialize)]
struct EventsParams {
    after_seq: Option<u64>,
    after_idx: Option<u32>,
    limit: Option<u32>,
}

/// `GET /api/sessions/{id}/events`: the next page of a session's events, so that no answer of
/// the player carries more than a page of them. Audited as watching.
async fn events_page(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    plays: Option<Extension<Arc<PlayLog>>>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<EventsParams>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    audit_play(&st, &login, &plays, id, "events".into()).await?;
    let after = p.after_seq.map(|s| (s, p.after_idx.unwrap_or(u32::MAX)));
    let limit = p
        .limit
        .unwrap_or(crate::index::MAX_EVENTS_PAGE)
        .clamp(1, crate::index::MAX_EVENTS_PAGE);
    let events = blocking(move || {
        st.index
            .events_page(id, after, limit)
            .map_err(ApiError::internal)
    })
    .await?;
    // Serialised as a struct: the events' data stays the JSON text it is, never a parsed tree.
    #[derive(Serialize)]
    struct EventsAnswer {
        more: bool,
        events: Vec<EventRow>,
    }
    let more = events.len() >= limit as usize;
    Ok(Json(EventsAnswer { more, events }).into_response())
}

/// A session's authenticity and stop cause, from the enrolment and witness records.
fn trust(
    index: &dyn Index,
    id: SessionId,
    status: crate::scan::Status,
) -> Result<
    (
        crate::enroll::Authenticity,
        Option<jitrec_format::StopCause>,
    ),
    ApiError,
> {
    let at = crate::locate::key_of(index, id).map_err(ApiError::internal)?;
    let first_seen = |k: ObjectKey| {
        crate::witness::lookup(index, &k.to_string())
            .map(|w| w.map(|w| w.seen_at))
            .map_err(ApiError::internal)
    };
    let seen = crate::enroll::Seen {
        header: first_seen(ObjectKey::SessionHeader(at))?,
        close: first_seen(ObjectKey::SessionClosed(at))?,
    };
    let a = crate::enroll::authenticity(index, id, seen)
        .map_err(ApiError::internal)?
        .given(status);
    let stop = crate::enroll::session_key(index, id)
        .map_err(ApiError::internal)?
        .and_then(|s| s.stopped_by);
    Ok((a, stop))
}

fn number(name: &str, ext: &str) -> Result<u64, ApiError> {
    name.strip_suffix(ext)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::not_found(format!("{name}: expected <number>{ext}")))
}

async fn init_segment(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    plays: Option<Extension<Arc<PlayLog>>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let n = number(&name, ".mp4")?;
    audit_play(&st, &login, &plays, id, format!("init segment {n}")).await?;
    let at = located(&st, id).await?;
    if !known(&st, ObjectKey::Init(at, n)).await? {
        return Err(ApiError::not_found(format!(
            "session {id} has no init segment {n}"
        )));
    }
    serve_object(st, ObjectKey::Init(at, n), &headers).await
}

async fn media_segment(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    plays: Option<Extension<Arc<PlayLog>>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let n = number(&name, ".m4s")?;
    audit_play(&st, &login, &plays, id, format!("chunk {n}")).await?;
    let at = located(&st, id).await?;
    if !known(&st, ObjectKey::ChunkVideo(at, n)).await? {
        return Err(ApiError::not_found(format!(
            "session {id} has no chunk {n}"
        )));
    }
    serve_object(st, ObjectKey::ChunkVideo(at, n), &headers).await
}

/// The bytes a reviewer is served: decrypted for an encrypted session (once they were checked,
/// as ciphertext, against the witness record).
fn plaintext(
    index: &dyn Index,
    keyring: Option<&crate::unseal::Keyring>,
    key: ObjectKey,
    stored: Vec<u8>,
) -> Result<Vec<u8>, ApiError> {
    let encrypted = crate::enroll::session_key(index, key.session())
        .map_err(ApiError::internal)?
        .is_some_and(|s| s.encrypted);
    if !encrypted {
        return Ok(stored);
    }
    let k = keyring.ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session is encrypted and this player has no age identity (--age-identity)".into(),
        )
    })?;
    k.open(&stored).map_err(|e| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{key}: cannot be decrypted with this player's identities: {e}"),
        )
    })
}

/// Where the session lives in the bucket (see [`crate::locate`]).
async fn located(st: &AppState, id: SessionId) -> Result<jitrec_format::SessionKey, ApiError> {
    let index = Arc::clone(&st.index);
    blocking(move || crate::locate::key_of(index.as_ref(), id).map_err(ApiError::internal)).await
}

async fn known(st: &AppState, key: ObjectKey) -> Result<bool, ApiError> {
    let index = Arc::clone(&st.index);
    blocking(move || index.knows(key).map_err(ApiError::internal)).await
}

/// The largest media object served. A response is verified whole before a byte of it is sent,
/// so it is held in memory: real segments are well under 1 MiB (2 s of screen), init segments a
/// few hundred bytes.
pub const MAX_SERVED_OBJECT: u64 = 64 * 1024 * 1024;

/// The most bytes of media held for checking at once, across all requests, in MiB: one object
/// of the largest size served, or many real segments (well under 1 MiB each) side by side.
pub const MEDIA_BUDGET_MIB: u32 = 64;

/// The media budget, one per process (the memory it bounds is the process's).
static MEDIA_BUDGET: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(MEDIA_BUDGET_MIB as usize)));

/// A response body that keeps its share of the media budget until it has been sent (or the
/// client went away): the bytes are in memory that long, however slowly the client reads.
struct Budgeted {
    data: Option<bytes::Bytes>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for Budgeted {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Budget permits for an object of `size` bytes: whole MiB, at least one.
fn media_permits(size: u64) -> u32 {
    u32::try_from(size.div_ceil(1024 * 1024).max(1))
        .unwrap_or(MEDIA_BUDGET_MIB)
        .min(MEDIA_BUDGET_MIB)
}

/// Maps a bucket error of a media request: an object the bucket refuses for what it is (a link,
/// a FIFO, a directory) is the endpoint's doing, answered 502 without its target's bytes.
fn media_error(e: jitrec_bucket::BucketError) -> ApiError {
    if e.is_refused_object() {
        tracing::warn!(error = %e, "media request refused: the stored object is not a plain object");
        ApiError(StatusCode::BAD_GATEWAY, e.to_string())
    } else {
        ApiError::internal(e)
    }
}

/// Serves an object's bytes, honouring a single `Range` (browsers fetch media by range).
///
/// Only bytes the player's witness record vouches for are served ([`witnessed`]); the
/// response (whole or the requested range) is cut from those very bytes, so nothing read
/// separately from what was checked reaches the client.
async fn serve_object(
    st: AppState,
    key: ObjectKey,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (bytes, budget) = witnessed(&st, key).await?;
    let total = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| parse_range(r, total));
    let (start, end, partial) = match range {
        None | Some(RangeAnswer::Whole) => (0, total, false),
        Some(RangeAnswer::Part(a, b)) => (a, b + 1, true),
        Some(RangeAnswer::Unsatisfiable) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{total}")),
            );
            return Ok(r);
        }
    };
    let body = bytes::Bytes::from(bytes).slice(start as usize..end as usize);
    let mut resp = Response::new(Body::new(Budgeted {
        data: Some(body),
        _permit: budget,
    }));
    if partial {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{}/{total}", end - 1)),
        );
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_LENGTH,
        header_value(&(end - start).to_string()),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(key.content_type()),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Recorded screens stay on no disk but the bucket's: nothing is cached, so nothing is
    // readable from the browser's cache after sign-out.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The bytes of `key` as the player's witness record vouches for them (decrypted for an
/// encrypted session), with their share of the media budget: read once, whole, bounded by the
/// witnessed size, hashed and compared. Other bytes are refused (409) and the session is
/// verified again, which marks it tampered.
async fn witnessed(
    st: &AppState,
    key: ObjectKey,
) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit), ApiError> {
    let (src, index) = (Arc::clone(&st.src), Arc::clone(&st.index));
    let keyring = st.keyring.clone();
    let w = {
        let index = Arc::clone(&index);
        blocking(move || {
            let k = key.to_string();
            let w = crate::witness::lookup(index.as_ref(), &k)
                .map_err(ApiError::internal)?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "{k} is not in the player's witness record (indexed before it existed: run `jitrec-player reindex`)"
                    ))
                })?;
            if w.size > MAX_SERVED_OBJECT {
                return Err(ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!("{k} is {} bytes, more than the {MAX_SERVED_OBJECT} the player serves", w.size),
                ));
            }
            Ok(w)
        })
        .await?
    };
    // Every object served is held whole while it is checked: their sum is bounded, so many
    // requests for large objects wait their turn instead of exhausting the player's memory.
    // An encrypted object is held twice while it is decrypted: budgeted for both.
    let encrypted_copy = st.keyring.is_some();
    let permits = media_permits(w.size.saturating_mul(if encrypted_copy { 2 } else { 1 }));
    let budget = Arc::clone(&MEDIA_BUDGET)
        .acquire_many_owned(permits)
        .await
        .map_err(ApiError::internal)?;
    // The budget goes with the read onto its blocking thread (a cancelled request must not free
    // it while the read still holds the bytes), and comes back with them for the body.
    blocking(move || {
        let held = budget;
        let k = key.to_string();
        let reverify = || {
            // Once marked tampered, a session is not read whole again for every request of
            // its replaced media.
            let marked = index
                .session(key.session())
                .ok()
                .flatten()
                .is_some_and(|r| r.status == crate::scan::Status::Tampered);
            if marked {
                return;
            }
            if let Err(v) =
                crate::verify::verify_and_record(src.as_ref(), index.as_ref(), key.session())
            {
                tracing::warn!(error = %v, "re-verifying a session with refused media failed");
            }
        };
        let stored = match src.get(&key, w.size) {
            Ok(d) => d,
            // A store that failed to answer is not evidence of anything: 500, and the client
            // retries. An object the bucket refuses for what it is (a link, a FIFO, a
            // directory, larger than witnessed) is.
            Err(e) if !e.is_refused_object() => return Err(media_error(e)),
            Err(e) => {
                reverify();
                return Err(media_error(e));
            }
        };
        match stored {
            Some(b) if b.len() as u64 == w.size && jitrec_format::Sha256Digest::of(&b) == w.sha256 => {
                plaintext(index.as_ref(), keyring.as_deref(), key, b).map(|b| (b, held))
            }
            None => Err(ApiError::not_found(format!("{k} is missing from the bucket"))),
            Some(_) => {
                tracing::warn!(key = %k, "media refused: the stored bytes are not the ones the player witnessed");
                reverify();
                Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "{k}: the stored bytes are not the ones the player first saw at {}; the session is marked tampered",
                        w.seen_at
                    ),
                ))
            }
        }
    })
    .await
}

/// The filmstrip's picture of chunk `n`, which must start with a keyframe: made from the
/// witnessed init segment and chunk by a confined child process, then kept (and so is a
/// failure to make one: a chunk the decoder cannot take costs its CPU once).
async fn thumbnail(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    plays: Option<Extension<Arc<PlayLog>>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    use crate::thumbs::{MAX_INPUT, QUEUE_WAIT};
    let id = session_id(&id)?;
    let n = number(&name, ".png")?;
    // A picture of the screen is a view of it, recorded as playing is.
    audit_play(&st, &login, &plays, id, format!("thumbnail {n}")).await?;
    let at = located(&st, id).await?;
    // Only chunks the index knows (a session deleted since is not pictured from the cache).
    if !known(&st, ObjectKey::ChunkVideo(at, n)).await? {
        return Err(ApiError::not_found(format!(
            "session {id} has no chunk {n}"
        )));
    }
    let strip = st.filmstrip.clone().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this player makes no thumbnails".into(),
        )
    })?;
    let made = match strip.cache.get(id, n) {
        Some(m) => m,
        None => {
            let index = Arc::clone(&st.index);
            let (chunk, init) = blocking(move || {
                let chunk = index
                    .chunks(id)
                    .map_err(ApiError::internal)?
                    .into_iter()
                    .find(|c| c.seq == n)
                    .ok_or_else(|| ApiError::not_found(format!("session {id} has no chunk {n}")))?;
                let init = index
                    .inits(id)
                    .map_err(ApiError::internal)?
                    .into_iter()
                    .find(|i| i.id == chunk.init_id);
                Ok((chunk, init))
            })
            .await?;
            if !chunk.keyframe {
                return Err(ApiError::not_found(format!(
                    "chunk {n} of session {id} does not start with a keyframe: it has no picture"
                )));
            }
            let init_bytes = init.map_or(u64::MAX, |i| i.bytes);
            if chunk.video_bytes > MAX_INPUT || init_bytes > MAX_INPUT {
                return Err(ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!("chunk {n} is larger than the {MAX_INPUT} bytes a picture is made of"),
                ));
            }
            let _child = tokio::time::timeout(QUEUE_WAIT, strip.cache.children.acquire())
                .await
                .map_err(|_| {
                    ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the player is busy making thumbnails; try again".into(),
                    )
                })?
                .map_err(ApiError::internal)?;
            // Made by another request while this one waited.
            if let Some(m) = strip.cache.get(id, n) {
                m
            } else {
                // Both are small (above), so their budget shares are too.
                let (init, _a) = witnessed(&st, ObjectKey::Init(at, chunk.init_id)).await?;
                let (video, _b) = witnessed(&st, ObjectKey::ChunkVideo(at, n)).await?;
                let made = crate::thumbs::render_confined(&strip.program, &init, &video).await;
                // What the decoder made of these bytes is kept, a failure too; a child that ran
                // out of time or could not be started may do better on a quieter machine.
                let lasting = !matches!(
                    made,
                    Err(crate::thumbs::ThumbError::TimedOut(_) | crate::thumbs::ThumbError::Io(_))
                );
                let m: crate::thumbs::Made = Arc::new(made.map_err(|e| {
                    tracing::warn!(session = %id, chunk = n, error = %e, "no thumbnail");
                    e.to_string()
                }));
                if lasting {
                    strip.cache.put(id, n, Arc::clone(&m));
                }
                m
            }
        }
    };
    match made.as_ref() {
        Ok(picture) => Ok((
            [
                (header::CONTENT_TYPE, "image/png".to_owned()),
                (header::CONTENT_LENGTH, picture.len().to_string()),
                // As media: nothing of the screen stays in the browser's cache after sign-out.
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            Body::from(picture.clone()),
        )
            .into_response()),
        Err(e) => Err(ApiError(StatusCode::BAD_GATEWAY, format!("chunk {n}: {e}"))),
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn playlist(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    plays: Option<Extension<Arc<PlayLog>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    audit_play(&st, &login, &plays, id, "playlist".into()).await?;
    let (row, chunks) = blocking(move || {
        let row = st
            .index
            .session(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no session {id} in the index")))?;
        Ok((row, st.index.chunks(id).map_err(ApiError::internal)?))
    })
    .await?;
    let body = hls_playlist(&chunks, row.closed);
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// An HLS (version 7, fMP4) playlist over the session's chunks, with URIs relative to the
/// playlist. A new init segment (screen-size change) or missing chunks start a discontinuity.
/// Open sessions get an `EVENT` playlist without `ENDLIST`, so players keep polling it.
pub fn hls_playlist(chunks: &[ChunkRow], closed: bool) -> String {
    let target = chunks
        .iter()
        .map(|c| (c.media_end_us - c.media_start_us).div_ceil(1_000_000))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut out = String::new();
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:7");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:0");
    let _ = writeln!(
        out,
        "#EXT-X-PLAYLIST-TYPE:{}",
        if closed { "VOD" } else { "EVENT" }
    );
    let mut prev: Option<&ChunkRow> = None;
    for c in chunks {
        let new_init = prev.is_none_or(|p| p.init_id != c.init_id);
        let gap = prev.is_some_and(|p| p.seq + 1 != c.seq);
        if prev.is_some() && (new_init || gap) {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
        }
        if new_init {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"init/{}.mp4\"", c.init_id);
        }
        let secs = (c.media_end_us - c.media_start_us) as f64 / 1e6;
        let _ = writeln!(out, "#EXTINF:{secs:.6},");
        let _ = writeln!(out, "chunks/{}.m4s", c.seq);
        prev = Some(c);
    }
    if closed {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    }
    out
}

async fn verify(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    audit(&st, &login, "verify", id.to_string(), String::new()).await?;
    let report = blocking(move || {
        crate::verify::verify_and_record(st.src.as_ref(), st.index.as_ref(), id)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(serde_json::json!({
        "session": report.session,
        "verdict": format!("{:?}", report.verdict).to_lowercase(),
        "status": report.status,
        "chunks_verified": report.chunks_verified,
        "problems": report.problems,
        "authenticity": report.authenticity,
        "verified": report.is_verified(),
        "text": report.to_string(),
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct ExportParams {
    part: Option<usize>,
    /// Export even if the session does not verify (the file is then named so).
    #[serde(default)]
    unverified: bool,
}

/// The session as one MP4, remuxed on the fly into a temporary directory and streamed.
async fn export_mp4(
    State(st): State<AppState>,
    login: Option<Extension<Login>>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<ExportParams>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let part = p.part.unwrap_or(1).max(1);
    let detail = format!(
        "part {part}{}",
        if p.unverified { ", unverified" } else { "" }
    );
    audit(&st, &login, "export", id.to_string(), detail).await?;
    let src = Arc::clone(&st.src);
    let at = located(&st, id).await?;
    let index = Arc::clone(&st.index);
    let keyring = st.keyring.clone();
    let (file, len, verified) = blocking(move || {
        let dir = tempfile::tempdir().map_err(ApiError::internal)?;
        let out = dir.path().join("export.mp4");
        let opts = crate::export::ExportOptions {
            allow_unverified: p.unverified,
            witness: Some(Arc::clone(&index)),
            keyring: keyring.clone(),
            rules: None,
        };
        let done = crate::export::export(src.as_ref(), at, &out, &opts).map_err(|e| match e {
            crate::export::ExportError::NotIntact { .. } => {
                ApiError(StatusCode::CONFLICT, e.to_string())
            }
            crate::export::ExportError::Empty(_) => ApiError::not_found(e.to_string()),
            e => ApiError::internal(e),
        })?;
        let path = done
            .parts
            .get(part - 1)
            .map(|p| p.path.clone())
            .ok_or_else(|| {
                ApiError::not_found(format!("the export has {} parts", done.parts.len()))
            })?;
        // Open, then let the directory go: the open file stays readable until streamed.
        let f = std::fs::File::open(&path).map_err(ApiError::internal)?;
        let len = f.metadata().map_err(ApiError::internal)?.len();
        Ok((f, len, done.report.is_verified()))
    })
    .await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let name = crate::export::file_name(id, part, verified);
    Ok((
        [
            (header::CONTENT_TYPE, "video/mp4".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct NotifyBody {
    session: Option<String>,
}

async fn notify(State(st): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let b: NotifyBody = if body.is_empty() {
        NotifyBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("notify body: {e}")))?
    };
    let session = b.session.map(|s| session_id(&s)).transpose()?;
    st.indexer.notify(session);
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub index: &'static str,
    pub bucket: String,
    pub indexer: IndexerStats,
    pub sessions: std::collections::BTreeMap<String, u64>,
    /// The retention schedule's runs and last error; `None` when `serve` does not run it.
    pub retention: Option<crate::retention::JobState>,
}

async fn status(State(st): State<AppState>) -> Result<Response, ApiError> {
    let stats = st.indexer.stats();
    let s = blocking(move || {
        let counts = st.index.counts().map_err(ApiError::internal)?;
        Ok(ServiceStatus {
            index: st.index.backend(),
            bucket: st.src.describe(),
            indexer: stats,
            retention: st.retention.as_ref().map(|r| r.state()),
            sessions: counts
                .into_iter()
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect(),
        })
    })
    .await?;
    Ok(Json(s).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, init_id: u64, start_s: u64) -> ChunkRow {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        ChunkRow {
            seq,
            init_id,
            media_start_us: start_s * 1_000_000,
            media_end_us: (start_s + 2) * 1_000_000,
            utc_start: t,
            utc_end: t,
            keyframe: true,
            frames: 10,
            video_bytes: 1,
            events_bytes: 1,
            events: 0,
            verified: true,
        }
    }

    #[test]
    fn playlist_marks_new_init_segments_gaps_and_the_end() {
        let chunks = [
            chunk(0, 0, 0),
            chunk(1, 0, 2),
            chunk(3, 0, 6),
            chunk(4, 1, 8),
        ];
        let p = hls_playlist(&chunks, true);
        let expected = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n\
            #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"init/0.mp4\"\n\
            #EXTINF:2.000000,\nchunks/0.m4s\n#EXTINF:2.000000,\nchunks/1.m4s\n\
            #EXT-X-DISCONTINUITY\n#EXTINF:2.000000,\nchunks/3.m4s\n\
            #EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init/1.mp4\"\n#EXTINF:2.000000,\n\
            chunks/4.m4s\n#EXT-X-ENDLIST\n";
        assert_eq!(p, expected);
        let open = hls_playlist(&chunks[..2], false);
        assert!(open.contains("#EXT-X-PLAYLIST-TYPE:EVENT"));
        assert!(!open.contains("ENDLIST"));
    }
}
