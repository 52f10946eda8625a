//! Derives alerts from the index: compares the sessions and the rules' flags with what the
//! alerter has alerted ([`super::store`]) and queues what is new.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::index::{Index, SqlValue};

use super::store;
use super::{
    Alert, AlertConfig, AlertError, FIELD_MAX, FlagInfo, Kind, Machine, PAYLOAD_VERSION,
    SENTENCE_MAX, SessionInfo, Severity, StatusChange, TEXT_MAX, alert_id, bounded_bytes,
};

/// Sessions read per query; a pass reads pages until none is left (bounded by
/// [`MAX_PAGES`]).
const PAGE: i64 = 500;

/// Pages of each kind one pass reads at most (the rest waits for the next pass, a poll later):
/// a backlog of 10,000 changes is worked off without one pass holding the index for long.
const MAX_PAGES: usize = 20;

/// Matches of one rule in one session sent one by one; the next is sent as a summary, and
/// the rest are recorded as seen without being sent.
pub(crate) const MAX_MATCHES: i64 = 5;

/// How far back (player clock) a quick pass looks at closed sessions' `last_change`: covers
/// a pass that failed or a lead that moved, and the clocks of several players sharing the
/// index; the full pass covers anything older.
const QUICK_WINDOW: Duration = Duration::from_secs(600);

/// The session columns the alerter reads, prefixed `s.`.
const SESSION_COLS: &str = "s.id, s.started_at, s.ended_at, s.user_name, s.machine_id, \
    s.hostname, s.authorized_by, s.reason, s.status, s.closed";

/// The derivation's state between passes.
pub(crate) struct Deriver {
    config: Arc<AlertConfig>,
    /// Set once the baseline is known to exist (read from the index after a lead change).
    ready: bool,
    /// The last outbox `seq` given.
    seq: i64,
    /// When done rows were last pruned.
    pruned: Option<std::time::Instant>,
}

impl Deriver {
    pub(crate) fn new(config: Arc<AlertConfig>) -> Self {
        Self {
            config,
            ready: false,
            seq: 0,
            pruned: None,
        }
    }

    /// Drops what it read of the index (another player leads and moves it on).
    pub(crate) fn forget(&mut self) {
        self.ready = false;
    }

    fn next_seq(&mut self, now: i64) -> i64 {
        self.seq = now.max(self.seq + 1);
        self.seq
    }

    /// One pass: sessions, then flags. `full`: every session, not only those open or changed
    /// lately. Returns how many alerts were queued.
    pub(crate) fn pass(&mut self, index: &dyn Index, full: bool) -> Result<usize, AlertError> {
        let now = store::now_us();
        if !self.ready {
            if store::baseline_at(index)?.is_none() {
                store::baseline(index, now)?;
                tracing::info!(
                    "alerts: first run against this index; what it holds now is taken as \
                     alerted, and only what changes from now on is sent"
                );
            }
            self.seq = store::last_seq(index)?;
            let dropped = store::drop_unconfigured(index, &self.config.target_names(), now)?;
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "alerts: queued alerts of targets no longer configured are dropped"
                );
            }
            self.ready = true;
            tracing::info!("alerts: following the index");
        }
        let mut queued = 0;
        let since = now - QUICK_WINDOW.as_micros() as i64;
        for _ in 0..MAX_PAGES {
            let (n, rows) = self.sessions(index, full, since, now)?;
            queued += n;
            if rows < PAGE as usize {
                break;
            }
        }
        if store::table_exists(index, "flags") {
            for _ in 0..MAX_PAGES {
                let (n, rows) = self.flags(index, full, since, now)?;
                queued += n;
                if rows < PAGE as usize {
                    break;
                }
            }
        }
        if queued > 0 {
            for t in self.config.target_names() {
                let b = store::bound(index, &t, super::MAX_PENDING, now)?;
                if b.dropped > 0 {
                    tracing::error!(
                        target_name = %t,
                        dropped = b.dropped,
                        max = super::MAX_PENDING,
                        "alerts: the outbox is full (the receiver has not taken alerts for long); \
                         the oldest undelivered matches of rules below high severity are dropped \
                         and will never be sent"
                    );
                }
                if b.over > 0 {
                    tracing::error!(
                        target_name = %t,
                        over = b.over,
                        max = super::MAX_PENDING,
                        "alerts: the outbox is past its bound with alerts it never drops (session \
                         start and end, status changes, high and critical matches); they are kept: \
                         bring the receiver back"
                    );
                }
            }
        }
        if self
            .pruned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
        {
            store::prune(index, now - super::KEEP_DONE.as_micros() as i64)?;
            self.pruned = Some(std::time::Instant::now());
        }
        Ok(queued)
    }

    /// Queues `alert` for every target.
    fn queue(&mut self, index: &dyn Index, alert: &Alert, now: i64) -> Result<(), AlertError> {
        let payload = alert.to_json();
        let seq = self.next_seq(now);
        // What a full outbox never drops: all but matches of rules below high severity.
        let keep = alert.kind != Kind::RuleMatch
            || alert
                .flag
                .as_ref()
                .is_some_and(|f| f.severity >= Severity::High);
        for t in &self.config.targets {
            let target = t.name();
            let q = store::Queued {
                id: &alert.id,
                kind: alert.kind.as_str(),
                target: &target,
                seq,
                payload: &payload,
                keep,
            };
            store::enqueue(index, &q, now)?;
        }
        tracing::info!(id = %alert.id, kind = alert.kind.as_str(), session = %alert.session.id,
            "alerts: {}", alert.message);
        Ok(())
    }

    fn alert(
        &self,
        kind: Kind,
        what: &str,
        session: SessionInfo,
        message: String,
        at: DateTime<Utc>,
    ) -> Alert {
        let url = self
            .config
            .public_url
            .as_ref()
            .map(|base| format!("{base}/session/{}", session.id));
        Alert {
            version: PAYLOAD_VERSION,
            id: alert_id(kind, &session.id, what),
            kind,
            at,
            message: bounded_bytes(&message, SENTENCE_MAX),
            session,
            status: None,
            flag: None,
            url,
        }
    }

    /// One page of sessions whose state differs from what was alerted.
    fn sessions(
        &mut self,
        index: &dyn Index,
        full: bool,
        since: i64,
        now: i64,
    ) -> Result<(usize, usize), AlertError> {
        let recent = if full {
            ""
        } else {
            "(s.closed = 0 OR s.last_change >= $1) AND "
        };
        let sql = format!(
            "SELECT {SESSION_COLS}, a.status, a.closed, a.changes FROM sessions s \
             LEFT JOIN alert_sessions a ON a.session_id = s.id \
             WHERE {recent}(a.session_id IS NULL OR a.status <> s.status OR a.closed <> s.closed) \
             ORDER BY s.id LIMIT {PAGE}"
        );
        let params = if full {
            vec![]
        } else {
            vec![SqlValue::Int(since)]
        };
        let rows = index.query(&sql, &params)?;
        let at = DateTime::from_timestamp_micros(now).unwrap_or_else(Utc::now);
        let mut queued = 0;
        for r in &rows {
            let info = session_info(&r[..10])?;
            let (known, old_status, old_closed, changes) = match &r[10..] {
                [SqlValue::Text(st), c, n] => (
                    true,
                    st.clone(),
                    c.int().unwrap_or(0) != 0,
                    n.int().unwrap_or(0),
                ),
                _ => (false, "recording".to_owned(), false, 0),
            };
            let who = format!(
                "{} on {} ({})",
                info.user, info.machine.hostname, info.machine.id
            );
            let mut changes = changes;
            if !known {
                let message = format!(
                    "JIT session started: {who}, authorised by {}, reason: {}",
                    info.authorized_by.as_deref().unwrap_or("unknown"),
                    info.reason.as_deref().unwrap_or("none given"),
                );
                let a = self.alert(Kind::SessionStart, "", info.clone(), message, at);
                self.queue(index, &a, now)?;
                queued += 1;
            }
            // recording -> complete is the normal end, which session_end says.
            if info.status != old_status
                && !(old_status == "recording" && info.status == "complete")
            {
                changes += 1;
                let what = format!("{changes}/{old_status}/{}", info.status);
                let message = format!(
                    "JIT session of {who} is now {} (was {old_status})",
                    info.status
                );
                let mut a = self.alert(Kind::StatusChange, &what, info.clone(), message, at);
                a.status = Some(StatusChange {
                    from: old_status.clone(),
                    to: info.status.clone(),
                });
                self.queue(index, &a, now)?;
                queued += 1;
            }
            if info.closed && !old_closed {
                let message = format!("JIT session ended: {who}, status {}", info.status);
                let a = self.alert(Kind::SessionEnd, "", info.clone(), message, at);
                self.queue(index, &a, now)?;
                queued += 1;
            }
            // Only now: a crash before this line queues the same alerts (same ids) again.
            store::save_session(
                index,
                &info.id,
                &info.status,
                info.closed || old_closed,
                changes,
                now,
            )?;
        }
        Ok((queued, rows.len()))
    }

    /// One page of flags not alerted yet, of sessions that were not closed at the baseline.
    fn flags(
        &mut self,
        index: &dyn Index,
        full: bool,
        since: i64,
        now: i64,
    ) -> Result<(usize, usize), AlertError> {
        let recent = if full {
            ""
        } else {
            "AND (s.closed = 0 OR s.last_change >= $1) "
        };
        let sql = format!(
            "SELECT {SESSION_COLS}, f.seq, f.idx, f.media_us, f.utc, f.rule, f.severity, \
             f.rank, f.sentence, f.text FROM flags f \
             JOIN sessions s ON s.id = f.session_id \
             JOIN alert_sessions a ON a.session_id = f.session_id \
             LEFT JOIN alert_flags d ON d.session_id = f.session_id AND d.seq = f.seq \
             AND d.idx = f.idx AND d.rule = f.rule \
             WHERE a.baseline = 0 AND d.session_id IS NULL {recent}\
             ORDER BY f.session_id, f.seq, f.idx, f.rule LIMIT {PAGE}"
        );
        let params = if full {
            vec![]
        } else {
            vec![SqlValue::Int(since)]
        };
        let rows = index.query(&sql, &params)?;
        let at = DateTime::from_timestamp_micros(now).unwrap_or_else(Utc::now);
        let mut queued = 0;
        // Matches already recorded per (session, rule), read once per pair and page.
        let mut seen: HashMap<(String, String), i64> = HashMap::new();
        for r in &rows {
            let info = session_info(&r[..10])?;
            let bad = || AlertError::Corrupt(format!("a flags row: {:?}", &r[10..]));
            let [
                seq,
                idx,
                media_us,
                utc,
                rule,
                severity,
                rank,
                sentence,
                event_text,
            ] = &r[10..]
            else {
                return Err(bad());
            };
            let (seq, idx) = (seq.int().ok_or_else(bad)?, idx.int().ok_or_else(bad)?);
            let rule_raw = rule.text().ok_or_else(bad)?.to_owned();
            // The rank decides; the severity's text is the rules' own word for it.
            let sev = match rank.int() {
                Some(r) => Severity::clamped(r),
                None => severity
                    .text()
                    .and_then(Severity::parse)
                    .unwrap_or_default(),
            };
            let pair = (info.id.clone(), rule_raw.clone());
            let before = match seen.get(&pair) {
                Some(n) => *n,
                None => store::flags_alerted(index, &info.id, &rule_raw)?,
            };
            seen.insert(pair, before + 1);
            // A rule below high severity matching again and again in one session (a loop, or
            // an admin flooding the receivers to push other alerts out) is sent MAX_MATCHES
            // times, then once more as a summary; the report view lists every match. A high or
            // critical match is always sent: harmless matches first must not hide the one that
            // matters behind a summary.
            let capped = sev < Severity::High;
            if sev >= self.config.min_severity && (!capped || before <= MAX_MATCHES) {
                let flag = FlagInfo {
                    rule: bounded_bytes(&rule_raw, FIELD_MAX),
                    severity: sev,
                    sentence: bounded_bytes(sentence.text().unwrap_or_default(), SENTENCE_MAX),
                    seq: u64::try_from(seq).unwrap_or(0),
                    idx: u64::try_from(idx).unwrap_or(0),
                    media_us: media_us
                        .int()
                        .and_then(|v| u64::try_from(v).ok())
                        .unwrap_or(0),
                    utc: utc.int().and_then(DateTime::from_timestamp_micros),
                    text: bounded_bytes(event_text.text().unwrap_or_default(), TEXT_MAX),
                };
                let more = capped && before == MAX_MATCHES;
                let message = if more {
                    format!(
                        "Rule {} ({}) matched more than {MAX_MATCHES} times in the JIT session of \
                         {} on {}: {}; its further matches in this session are not sent one by \
                         one (the report view lists them all)",
                        flag.rule,
                        sev.as_str(),
                        info.user,
                        info.machine.hostname,
                        flag.sentence
                    )
                } else {
                    format!(
                        "Rule {} ({}) matched in the JIT session of {} on {}: {}",
                        flag.rule,
                        sev.as_str(),
                        info.user,
                        info.machine.hostname,
                        flag.sentence
                    )
                };
                // The key of the flag, as the rules write it (the raw rule name: two rules
                // cut to the same bounded name are still two alerts); the summary's is the
                // rule's, once per session.
                let what = if more {
                    format!("more/{rule_raw}")
                } else {
                    format!("{seq}/{idx}/{rule_raw}")
                };
                let mut a = self.alert(Kind::RuleMatch, &what, info, message, at);
                a.flag = Some(flag);
                self.queue(index, &a, now)?;
                queued += 1;
            }
            store::save_flag(
                index,
                r[0].text().ok_or_else(bad)?,
                seq,
                idx,
                &rule_raw,
                now,
            )?;
        }
        Ok((queued, rows.len()))
    }
}

/// The session part of an alert from the columns of [`SESSION_COLS`], bounded.
fn session_info(r: &[SqlValue]) -> Result<SessionInfo, AlertError> {
    let bad = || AlertError::Corrupt(format!("a sessions row: {r:?}"));
    let t = |i: usize| -> Result<String, AlertError> {
        Ok(bounded_bytes(
            r.get(i).and_then(SqlValue::text).ok_or_else(bad)?,
            FIELD_MAX,
        ))
    };
    let opt = |i: usize| -> Result<Option<String>, AlertError> {
        let s = t(i)?;
        Ok((!s.is_empty()).then_some(s))
    };
    let int = |i: usize| r.get(i).and_then(SqlValue::int).ok_or_else(bad);
    let ended = int(2)?;
    Ok(SessionInfo {
        id: t(0)?,
        started_at: DateTime::from_timestamp_micros(int(1)?).ok_or_else(bad)?,
        ended_at: if ended < 0 {
            None
        } else {
            DateTime::from_timestamp_micros(ended)
        },
        user: t(3)?,
        machine: Machine {
            id: t(4)?,
            hostname: t(5)?,
        },
        authorized_by: opt(6)?,
        reason: opt(7)?,
        status: t(8)?,
        closed: int(9)? != 0,
    })
}

#[cfg(test)]
mod tests {
    //! The derivation against a real SQLite index, with a `flags` table as the rules make it.
    use super::*;
    use crate::alerts::store::text;
    use crate::index::{Batch, SessionRow};
    use crate::scan::Status;

    fn config() -> Arc<AlertConfig> {
        let secret: Arc<[u8]> = Arc::from(&b"0123456789abcdef"[..]);
        let client = super::super::webhook::client(None).unwrap();
        Arc::new(AlertConfig {
            targets: vec![super::super::TargetSpec::Webhook(
                super::super::webhook::WebhookTarget::parse(
                    "http://127.0.0.1:9/hook",
                    false,
                    secret,
                    client,
                )
                .unwrap(),
            )],
            min_severity: Severity::Low,
            public_url: Some("https://jitrec.example".into()),
            poll: Duration::from_millis(10),
            full_every: Duration::from_secs(300),
        })
    }

    fn row(n: u8, status: Status, closed: bool) -> SessionRow {
        let id = jitrec_format::SessionId::from_parts(1_700_000_000_000 + u64::from(n), [n; 10]);
        let mut r = SessionRow::unknown(id, Utc::now());
        r.user_name = format!("user{n}");
        r.hostname = format!("host{n}");
        r.machine_id = format!("m{n}");
        r.authorized_by = Some("boss".into());
        r.status = status;
        r.closed = closed;
        r
    }

    fn put(index: &dyn Index, rows: Vec<SessionRow>) {
        index
            .apply(&Batch {
                sessions: rows,
                ..Batch::default()
            })
            .unwrap();
    }

    /// Every queued alert: (kind, session id, payload).
    fn outbox(index: &dyn Index) -> Vec<(String, String, Alert)> {
        index
            .query("SELECT kind, payload FROM alert_outbox ORDER BY seq", &[])
            .unwrap()
            .into_iter()
            .map(|r| {
                let a: Alert = serde_json::from_str(r[1].text().unwrap()).unwrap();
                (r[0].text().unwrap().to_owned(), a.session.id.clone(), a)
            })
            .collect()
    }

    const FLAGS: &str = "CREATE TABLE IF NOT EXISTS flags (session_id TEXT NOT NULL, seq BIGINT NOT NULL, \
        idx BIGINT NOT NULL, media_us BIGINT NOT NULL, utc BIGINT NOT NULL, rule TEXT NOT NULL, \
        severity TEXT NOT NULL, rank BIGINT NOT NULL, sentence TEXT NOT NULL, text TEXT NOT NULL, \
        PRIMARY KEY (session_id, seq, idx, rule))";

    fn flag(index: &dyn Index, s: &SessionRow, seq: i64, rule: &str, rank: i64) {
        index
            .exec(
                "INSERT INTO flags VALUES ($1, $2, 0, 1000, 1700000000000000, $3, $4, $5, \
                 'a user was added', 'useradd temp1\n\u{1b}[2J')",
                &[
                    text(&s.id.to_string()),
                    SqlValue::Int(seq),
                    text(rule),
                    text(Severity::clamped(rank).as_str()),
                    SqlValue::Int(rank),
                ],
            )
            .unwrap();
    }

    #[test]
    fn baseline_then_start_status_end_and_rule_matches_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::index::open(dir.path().join("i.sqlite3").to_str().unwrap()).unwrap();
        let index = index.as_ref();
        store::init(index).unwrap();
        // There before the alerter: an old closed session with a flag, an open one.
        let old = row(1, Status::Complete, true);
        let open = row(2, Status::Recording, false);
        put(index, vec![old.clone(), open.clone()]);
        index.exec(FLAGS, &[]).unwrap();
        flag(index, &old, 0, "useradd", 3);
        let mut d = Deriver::new(config());
        assert_eq!(
            d.pass(index, true).unwrap(),
            0,
            "the baseline alerts nothing"
        );
        assert!(outbox(index).is_empty());

        // New: a session, started; the open one gets a flag and ends tampered; the old one
        // gets a new flag (rules applied again to history: quiet).
        let new = row(3, Status::Recording, false);
        put(index, vec![new.clone()]);
        flag(index, &old, 1, "useradd", 3);
        flag(index, &open, 0, "useradd", 3);
        flag(index, &open, 1, "too-low", 0);
        let mut ended = open.clone();
        ended.status = Status::Tampered;
        ended.closed = true;
        put(index, vec![ended]);
        assert_eq!(d.pass(index, false).unwrap(), 4);
        let got = outbox(index);
        let kinds: Vec<(&str, &str)> = got
            .iter()
            .map(|(k, s, _)| (k.as_str(), s.as_str()))
            .collect();
        let (o, n) = (open.id.to_string(), new.id.to_string());
        assert_eq!(
            kinds,
            vec![
                ("status_change", o.as_str()),
                ("session_end", o.as_str()),
                ("session_start", n.as_str()),
                ("rule_match", o.as_str()),
            ]
        );
        let change = &got[0].2;
        assert_eq!(
            change.status,
            Some(StatusChange {
                from: "recording".into(),
                to: "tampered".into()
            })
        );
        assert_eq!(
            change.url.as_deref(),
            Some(format!("https://jitrec.example/session/{o}").as_str())
        );
        let m = &got[3].2;
        let f = m.flag.as_ref().unwrap();
        assert_eq!(
            (f.rule.as_str(), f.severity, f.seq, f.media_us),
            ("useradd", Severity::High, 0, 1000)
        );
        assert!(
            !f.text.contains('\n') && !f.text.contains('\u{1b}'),
            "{:?}",
            f.text
        );
        assert_eq!(m.session.user, "user2");

        // Nothing twice: another pass, a full one, flags deleted and written again as rules
        // applied again do.
        assert_eq!(d.pass(index, true).unwrap(), 0);
        index.exec("DELETE FROM flags", &[]).unwrap();
        flag(index, &open, 0, "useradd", 3);
        assert_eq!(d.pass(index, true).unwrap(), 0);
        // A restarted alerter (same tables) does not resend, and status changes get new ids.
        let mut d = Deriver::new(config());
        assert_eq!(d.pass(index, true).unwrap(), 0);
        let mut silent = new.clone();
        silent.status = Status::Silent;
        put(index, vec![silent]);
        assert_eq!(d.pass(index, false).unwrap(), 1);
        put(index, vec![new.clone()]);
        assert_eq!(d.pass(index, false).unwrap(), 1);
        let got = outbox(index);
        let ids: std::collections::BTreeSet<&str> =
            got.iter().map(|(_, _, a)| a.id.as_str()).collect();
        assert_eq!(ids.len(), got.len(), "every alert its own id");
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn a_flood_of_one_low_rule_is_sent_five_times_then_summarised_high_ones_always() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::index::open(dir.path().join("i.sqlite3").to_str().unwrap()).unwrap();
        let index = index.as_ref();
        store::init(index).unwrap();
        index.exec(FLAGS, &[]).unwrap();
        let mut d = Deriver::new(config());
        d.pass(index, true).unwrap();
        let open = row(5, Status::Recording, false);
        put(index, vec![open.clone()]);
        d.pass(index, true).unwrap();
        for seq in 0..2000 {
            flag(index, &open, seq, "loop", 1);
        }
        flag(index, &open, 3000, "useradd", 4);
        for seq in 4000..4020 {
            flag(index, &open, seq, "sudoers", 3);
        }
        // Several passes: a page at a time.
        while d.pass(index, true).unwrap() > 0 {}
        let got: Vec<Alert> = outbox(index)
            .into_iter()
            .filter(|(k, _, _)| k == "rule_match")
            .map(|(_, _, a)| a)
            .collect();
        let of = |rule: &str| {
            got.iter()
                .filter(|a| a.flag.as_ref().unwrap().rule == rule)
                .count()
        };
        assert_eq!(
            of("loop"),
            MAX_MATCHES as usize + 1,
            "five, then the summary"
        );
        assert_eq!(
            of("useradd"),
            1,
            "another rule is not held back by the flood"
        );
        let summary = got
            .iter()
            .find(|a| a.message.contains("more than 5 times"))
            .unwrap();
        assert_eq!(summary.flag.as_ref().unwrap().rule, "loop");
        // Every match is recorded as seen: nothing is derived again.
        assert_eq!(d.pass(index, true).unwrap(), 0);
        let seen = store::flags_alerted(index, &open.id.to_string(), "loop").unwrap();
        assert_eq!(seen, 2000);
    }

    #[test]
    fn a_closed_session_changed_by_verify_is_found_by_the_full_pass() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::index::open(dir.path().join("i.sqlite3").to_str().unwrap()).unwrap();
        let index = index.as_ref();
        store::init(index).unwrap();
        let mut d = Deriver::new(config());
        d.pass(index, true).unwrap();
        let mut s = row(4, Status::Complete, true);
        // Closed long ago (last_change out of the quick window).
        s.last_change = Utc::now() - chrono::Duration::days(2);
        put(index, vec![s.clone()]);
        assert_eq!(d.pass(index, true).unwrap(), 2, "start and end");
        s.status = Status::Tampered;
        put(index, vec![s.clone()]);
        assert_eq!(
            d.pass(index, false).unwrap(),
            0,
            "a quick pass does not look"
        );
        assert_eq!(d.pass(index, true).unwrap(), 1, "the full pass does");
        let got = outbox(index);
        assert_eq!(got.last().unwrap().0, "status_change");
    }

    #[test]
    fn the_outbox_is_bounded_oldest_low_matches_dropped_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::index::open(dir.path().join("i.sqlite3").to_str().unwrap()).unwrap();
        let index = index.as_ref();
        store::init(index).unwrap();
        // Ten alerts: session starts at 1, 5 and 9 (never dropped), low matches the rest.
        for i in 0..10 {
            let id = format!("a{i}");
            let q = store::Queued {
                id: &id,
                kind: if i % 4 == 1 {
                    "session_start"
                } else {
                    "rule_match"
                },
                target: "t",
                seq: i,
                payload: "{}",
                keep: i % 4 == 1,
            };
            store::enqueue(index, &q, 0).unwrap();
        }
        let b = store::bound(index, "t", 4, 1).unwrap();
        assert_eq!((b.dropped, b.over), (6, 0));
        let left = |index: &dyn Index| -> Vec<String> {
            store::due(index, "t", 1, 100)
                .unwrap()
                .into_iter()
                .map(|o| o.id)
                .collect()
        };
        // The six oldest matches went; the session starts stayed.
        assert_eq!(left(index), ["a1", "a5", "a8", "a9"]);
        assert_eq!(store::count(index, "t", store::DROPPED).unwrap(), 6);
        assert_eq!(
            store::bound(index, "t", 4, 1).unwrap(),
            store::Bounded::default()
        );
        // Past the bound with rows it never drops: the droppable go, the rest stay.
        let b = store::bound(index, "t", 1, 1).unwrap();
        assert_eq!((b.dropped, b.over), (1, 2));
        assert_eq!(left(index), ["a1", "a5", "a9"]);
    }

    /// What a pass costs over many sessions (a measurement, not a check: run with
    /// `cargo test -p jitrec-player --release --lib alerts::derive -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement; prints its figures"]
    #[allow(clippy::print_stderr, reason = "its figures are its output")]
    fn pass_cost_over_100k_closed_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::index::open(dir.path().join("i.sqlite3").to_str().unwrap()).unwrap();
        let index = index.as_ref();
        store::init(index).unwrap();
        let old = Utc::now() - chrono::Duration::days(3);
        for page in 0..100u32 {
            let rows = (0..1000u32)
                .map(|i| {
                    let n = u64::from(page * 1000 + i);
                    let id = jitrec_format::SessionId::from_parts(1_700_000_000_000 + n, [7; 10]);
                    let mut r = SessionRow::unknown(id, old);
                    r.status = Status::Complete;
                    r.closed = true;
                    r.last_change = old;
                    r
                })
                .collect();
            put(index, rows);
        }
        put(
            index,
            (0..20).map(|n| row(n, Status::Recording, false)).collect(),
        );
        let mut d = Deriver::new(config());
        let t = std::time::Instant::now();
        d.pass(index, true).unwrap();
        eprintln!("baseline of 100,020 sessions: {:?}", t.elapsed());
        for full in [false, true] {
            let t = std::time::Instant::now();
            let runs = if full { 3 } else { 20 };
            for _ in 0..runs {
                assert_eq!(d.pass(index, full).unwrap(), 0);
            }
            eprintln!(
                "{} pass, nothing new: {:?}",
                if full { "full" } else { "quick" },
                t.elapsed() / runs
            );
        }
    }
}
