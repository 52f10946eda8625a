//! The sweep: a slow, complete listing of every session prefix in the bucket, behind
//! discovery's fast cursor, so that no session is missed whatever its id says.
//!
//! Discovery lists after a cursor (the newest session id seen, less a window) because session
//! ids carry the endpoint's clock; a session whose id sorts before the cursor (an endpoint whose
//! clock is hours behind, a VM restored from a snapshot, a layout v1 session uploaded a day late)
//! is never listed by it. The sweep walks every listing from its beginning, one page
//! ([`PAGE`] names, one request on S3) every [`Sweep::every`], in turn: layout v1's session
//! list, then each machine's. It hands the indexer the ids on each page that the index does not
//! hold, and the indexer treats them as discovery's own finds (duplicate copies and deleted
//! sessions are refused there). The listing resumes after the last name of a page and ends where
//! the bucket says it ends (`more`), never where a page merely looks short, so objects an
//! endpoint writes cannot end a sweep early.
//!
//! Cost and bound: a round is one page per scope and one more per further thousand sessions in
//! it, so `(1 + machines + sessions / 1000)` requests at most; a session that lands is listed
//! within one round, plus the pass that reads it. With the default of one page every 2 s, a
//! million sessions on 10,000 machines is ~11,000 requests a round (~6 h; 43,200 LIST requests
//! a day whatever the bucket holds). `docs/player.md` has the table.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::{Duration, Instant};

use jitrec_bucket::BucketReader;
use jitrec_format::{LAYOUT_PREFIX, MachineId, SessionId, SessionKey, machine_sessions_prefix};
use serde::Serialize;

use crate::index::{Index, SqlValue};
use crate::indexer::IndexerError;

/// Names listed per page (S3 answers at most 1000 a request).
pub const PAGE: usize = 1000;

/// Ids looked up in the index per query (well below SQLite's bound on parameters).
const LOOKUP_BATCH: usize = 500;

/// Names outside the layout the sweep reports (once each).
const MAX_REPORTED: usize = 100;

/// Which listing the sweep is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Scope {
    /// Layout v1's list of sessions.
    #[default]
    V1,
    /// One machine's sessions in layout v2.
    Machine(MachineId),
}

/// What the sweep has done, for `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepStats {
    /// Seconds between two pages.
    pub every_secs: f64,
    /// Rounds completed (every listing walked to its end).
    pub rounds: u64,
    /// How long the last complete round took, and its pages: the bound on finding a session.
    pub last_round_secs: Option<f64>,
    pub last_round_pages: Option<u64>,
    /// Sessions the sweep found that discovery's cursor had not.
    pub found: u64,
}

/// What one page gave.
#[derive(Debug, Default)]
pub struct Step {
    /// Sessions on the page that the index does not hold and the indexer does not track.
    pub keys: Vec<SessionKey>,
    /// Names on the page that are not session ids (each reported once).
    pub anomalies: Vec<String>,
}

/// The sweep's position and pace (one per indexer).
#[derive(Debug)]
pub struct Sweep {
    every: Duration,
    scope: Scope,
    after: Option<String>,
    last_page: Option<Instant>,
    round_started: Option<Instant>,
    round_pages: u64,
    reported: BTreeSet<String>,
    stats: SweepStats,
}

impl Sweep {
    /// A sweep listing one page every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            scope: Scope::V1,
            after: None,
            last_page: None,
            round_started: None,
            round_pages: 0,
            reported: BTreeSet::new(),
            stats: SweepStats {
                every_secs: every.as_secs_f64(),
                ..SweepStats::default()
            },
        }
    }

    pub fn stats(&self) -> SweepStats {
        self.stats.clone()
    }

    /// Counts sessions the indexer took from a step.
    pub fn found(&mut self, n: usize) {
        self.stats.found += n as u64;
    }

    /// Whether a page is due.
    pub fn due(&self) -> bool {
        self.last_page.is_none_or(|t| t.elapsed() >= self.every)
    }

    /// Lists the next page if one is due. `machines` are the layout v2 machines discovery
    /// knows (their sessions are swept in id order); `tracked` says which sessions the indexer
    /// is reading already.
    pub fn step<V>(
        &mut self,
        src: &dyn BucketReader,
        index: &dyn Index,
        machines: &BTreeMap<MachineId, V>,
        tracked: impl Fn(SessionId) -> bool,
    ) -> Result<Step, IndexerError> {
        if !self.due() {
            return Ok(Step::default());
        }
        self.last_page = Some(Instant::now());
        self.round_started.get_or_insert_with(Instant::now);
        let prefix = match self.scope {
            Scope::V1 => LAYOUT_PREFIX.to_owned(),
            Scope::Machine(m) => machine_sessions_prefix(m),
        };
        let page = src.list_names_page(&prefix, self.after.as_deref(), PAGE)?;
        self.round_pages += 1;
        let mut step = Step::default();
        let mut candidates = Vec::new();
        for name in &page.names {
            match name.parse::<SessionId>() {
                Ok(id) if !tracked(id) => candidates.push(match self.scope {
                    Scope::V1 => SessionKey::from(id),
                    Scope::Machine(m) => SessionKey::v2(m, id),
                }),
                Ok(_) => {}
                Err(e) => {
                    let what = format!("{prefix}{name}: not a session id ({e})");
                    if self.reported.len() < MAX_REPORTED && self.reported.insert(what.clone()) {
                        step.anomalies.push(what);
                    }
                }
            }
        }
        let known = known(index, candidates.iter().map(|k| k.id))?;
        step.keys = candidates
            .into_iter()
            .filter(|k| !known.contains(&k.id))
            .collect();
        match page.names.last() {
            Some(last) if page.more => self.after = Some(last.clone()),
            last => {
                if page.more && last.is_none() {
                    // Cannot happen with pages of more than one entry (a page lists at most one
                    // name it then drops); moving on beats listing the same page for ever.
                    tracing::warn!(
                        prefix,
                        "the bucket said a listing goes on but gave no names; the sweep moves on"
                    );
                }
                self.next_scope(machines);
            }
        }
        Ok(step)
    }

    /// Moves to the listing after the current one; after the last machine, the round is over.
    fn next_scope<V>(&mut self, machines: &BTreeMap<MachineId, V>) {
        self.after = None;
        let next = match self.scope {
            Scope::V1 => machines.keys().next(),
            Scope::Machine(m) => machines
                .range((Bound::Excluded(m), Bound::Unbounded))
                .map(|(k, _)| k)
                .next(),
        };
        self.scope = match next {
            Some(m) => Scope::Machine(*m),
            None => {
                self.stats.rounds += 1;
                self.stats.last_round_secs =
                    self.round_started.take().map(|t| t.elapsed().as_secs_f64());
                self.stats.last_round_pages = Some(std::mem::take(&mut self.round_pages));
                tracing::debug!(stats = ?self.stats, "sweep round complete");
                Scope::V1
            }
        };
    }
}

/// Which of `ids` the index holds (in batches of [`LOOKUP_BATCH`]).
fn known(
    index: &dyn Index,
    ids: impl Iterator<Item = SessionId>,
) -> Result<BTreeSet<SessionId>, IndexerError> {
    let ids: Vec<SessionId> = ids.collect();
    let mut out = BTreeSet::new();
    for batch in ids.chunks(LOOKUP_BATCH) {
        let marks: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT id FROM sessions WHERE id IN ({})", marks.join(", "));
        let params: Vec<SqlValue> = batch
            .iter()
            .map(|id| SqlValue::Text(id.to_string()))
            .collect();
        for row in index.query(&sql, &params)? {
            if let Some(id) = row
                .first()
                .and_then(SqlValue::text)
                .and_then(|t| t.parse().ok())
            {
                out.insert(id);
            }
        }
    }
    Ok(out)
}
