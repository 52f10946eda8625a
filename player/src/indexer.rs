//! Keeps the index up to date with the bucket.
//!
//! One stage, [`Indexer`], on a plain thread (the store and index APIs block). Each pass:
//!
//! 1. **Discovers** sessions by listing session prefixes (one entry per session, not per object)
//!    after a cursor: the newest session id seen, moved back by a window (default 1 h) because
//!    session ids carry the *endpoint's* clock and a skewed endpoint's session can sort before
//!    one already seen. Layout v1 has one list of sessions; layout v2 one per machine
//!    (`v2/machines/<machine>/sessions/`), each with its own cursor, so one endpoint's clock
//!    cannot hide another's sessions; the machines are listed every pass and their sessions up to
//!    [`IndexerConfig::machines_per_pass`] machines a pass, in turn. A session id found under a
//!    second prefix is reported and not indexed ([`crate::locate`]). A notify (HTTP fast path,
//!    naming a session or not) triggers a pass at once and catches sessions of any age. Behind
//!    the cursor, the [`crate::sweep`] lists every session prefix from the start, one page at a
//!    slow pace, so a session whose id sorts before the cursor is found within one sweep round.
//! 2. **Advances** every session whose close record has not been read: lists its objects after
//!    its last indexed chunk (`start-after`, no rescans), checks what is new with the same
//!    [`SessionScan`] `verify` uses, and writes sessions, chunks and events in one transaction.
//!    A closed session is final and dropped from the pass. Sessions with nothing new for
//!    `stale_after` are *interrupted* (chunks still missing then count as a gap) and are
//!    looked at only every [`STALE_EVERY`] passes. Before that, an open session with nothing
//!    new for three chunk lengths and a slack is *silent* ([`crate::silence`]): judged every
//!    pass from the scan's last arrival (a time comparison, no extra read), and the indexer
//!    wakes for the earliest such deadline rather than waiting out its interval.
//!
//! **One player leads.** Several `serve` processes may share one index (PostgreSQL); the
//! indexer runs passes only while its player holds the lead ([`Index::try_lead`]: an advisory
//! lock on PostgreSQL, a file lock beside a SQLite index), and the retention schedule runs only
//! there too ([`IndexerHandle::leads`]). The others serve the API from the shared index and try
//! to take the lead every [`LEAD_RETRY`]; the one that takes it resumes from the index.
//!
//! On start-up the unfinished sessions are read again from the start (the upserts converge);
//! `reindex` reads every session again from the beginning of the bucket, over the rows it finds.
//!
//! A session's failure is its own: a read or write that fails is logged when it starts (not
//! every pass), written to the session's row as an `unindexed` problem, and retried, every pass
//! up to [`MAX_QUICK_RETRIES`] and then every [`STALE_EVERY`] passes; every other session goes on.
//! What one advance read is committed to the scan state only with the index write: a failed
//! write puts the scan back, so the next pass reads it again (nothing is marked indexed that is
//! not). An advance reads at most [`CHUNKS_PER_BATCH`] chunks and writes them in one
//! transaction, so neither memory nor a transaction grows with a session's length.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jitrec_format::{
    LAYOUT_PREFIX, MACHINES_PREFIX, MachineId, SessionId, SessionKey, machine_sessions_prefix,
};
use serde::Serialize;

use crate::index::{Batch, ChunkRow, EventRow, Index, IndexError, InitRow, SessionRow};
use crate::scan::{Found, SessionScan};
use jitrec_bucket::{BucketError, BucketReader};

/// Stale sessions are advanced once every this many passes.
pub const STALE_EVERY: u64 = 30;

/// How often the indexer refreshes the index's planner statistics ([`Index::maintain`]).
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(600);

/// Bad names under the layout prefix remembered for the status page.
const MAX_ANOMALIES: usize = 100;

/// Sessions a notify may name for one pass.
const MAX_NOTIFIED: usize = 100;

/// The shortest time between the starts of two passes, however many notifies arrive.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(100);

/// How often a player that does not lead tries to take the lead: when the leader exits, its
/// lead is free at once (PostgreSQL: its connection closes; SQLite: its file lock goes), so
/// another player leads within this; a leader whose host died is let go of by PostgreSQL
/// within its keepalive bound (~11 s, `index/postgres.rs`).
pub const LEAD_RETRY: Duration = Duration::from_secs(1);

/// Whether this player indexes ([`Indexer::run`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not running, or not asked yet.
    #[default]
    Starting,
    /// Holds the lead: indexes and runs retention.
    Leader,
    /// Another player leads; this one serves the API.
    Follower,
}

/// Time between two pages of the sweep unless configured: a million sessions on 10,000
/// machines are then swept in about 6 h for 43,200 LIST requests a day.
pub const DEFAULT_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Settings of the indexer.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Time between passes when nothing notifies.
    pub interval: Duration,
    /// An unclosed session with nothing new for this long is shown as interrupted.
    pub stale_after: Duration,
    /// Added to three chunk lengths: an open session with nothing new for that long is silent
    /// ([`crate::silence::silent_after`]).
    pub silent_slack: Duration,
    /// How far before the newest session discovery lists again (endpoint clock skew).
    pub discovery_window: Duration,
    /// When a machine's key counts (see [`crate::enroll`]).
    pub enrolment: crate::enroll::Policy,
    /// The player's age identities, to index the events of encrypted sessions.
    pub keyring: Option<Arc<crate::unseal::Keyring>>,
    /// How many machines of layout v2 have their sessions listed per pass (in turn): with more
    /// machines than this, a machine's new session is found within
    /// `machines / machines_per_pass` passes (a notify finds it at once).
    pub machines_per_pass: usize,
    /// Time between two pages of the sweep ([`crate::sweep`]); `None`: no sweep, and a session
    /// dated before discovery's window is found only by a notify or a reindex.
    pub sweep_every: Option<Duration>,
    /// The detection rules evaluated on every event indexed ([`crate::rules`]).
    pub rules: Arc<crate::rules::RuleSet>,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            stale_after: Duration::from_secs(600),
            silent_slack: crate::silence::DEFAULT_SLACK,
            discovery_window: Duration::from_secs(3600),
            enrolment: crate::enroll::Policy::default(),
            machines_per_pass: 200,
            keyring: None,
            sweep_every: Some(DEFAULT_SWEEP_EVERY),
            rules: Arc::new(crate::rules::RuleSet::builtin()),
        }
    }
}

/// Why a pass failed (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Store(#[from] BucketError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// What the indexer has been doing, for `status` and `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexerStats {
    /// Whether this player indexes (several may share one index; one leads).
    pub role: Role,
    /// When this player last became leader or follower.
    pub role_since: Option<DateTime<Utc>>,
    pub passes: u64,
    pub last_pass: Option<DateTime<Utc>>,
    pub last_pass_ms: u64,
    /// Sessions whose close record has not been read yet.
    pub open_sessions: usize,
    pub failed_passes: u64,
    pub last_error: Option<String>,
    /// Names under the layout prefix that are not session ids.
    pub anomalies: Vec<String>,
    /// The sweep behind discovery's cursor (`None`: off).
    pub sweep: Option<crate::sweep::SweepStats>,
}

#[derive(Debug, Default)]
struct WakeState {
    pending: bool,
    sessions: BTreeSet<SessionId>,
    stop: bool,
}

/// Wakes the indexer (notify endpoint) and stops it. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct IndexerHandle {
    wake: Arc<(Mutex<WakeState>, Condvar)>,
    stats: Arc<Mutex<IndexerStats>>,
}

impl IndexerHandle {
    /// Asks for a pass now, looking at `session` even if discovery would not find it.
    pub fn notify(&self, session: Option<SessionId>) {
        let (m, cv) = &*self.wake;
        let mut w = m.lock().unwrap_or_else(PoisonError::into_inner);
        w.pending = true;
        // Bounded: a flood of notifies names at most this many sessions per pass (the rest are
        // found by discovery, or by a later notify).
        if w.sessions.len() < MAX_NOTIFIED {
            w.sessions.extend(session);
        }
        cv.notify_all();
    }

    /// Stops the indexer after its current pass.
    pub fn stop(&self) {
        let (m, cv) = &*self.wake;
        m.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        cv.notify_all();
    }

    /// Whether this player leads: indexing and retention are the leader's alone.
    pub fn leads(&self) -> bool {
        self.stats().role == Role::Leader
    }

    fn set_role(&self, role: Role) {
        let mut st = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        if st.role != role {
            st.role = role;
            st.role_since = Some(Utc::now());
        }
    }

    pub fn stats(&self) -> IndexerStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `timeout` for a notify or stop; returns (stop, sessions named).
    fn wait(&self, timeout: Duration) -> (bool, BTreeSet<SessionId>) {
        let (m, cv) = &*self.wake;
        let mut w = m.lock().unwrap_or_else(PoisonError::into_inner);
        if !w.pending && !w.stop {
            w = cv
                .wait_timeout(w, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        w.pending = false;
        (w.stop, std::mem::take(&mut w.sessions))
    }
}

struct Tracked {
    scan: SessionScan,
    row: SessionRow,
    /// When something new was last found (indexer clock).
    last_change: Instant,
    /// Not advanced yet.
    fresh: bool,
    /// Consecutive failed advances.
    failures: u32,
    last_error: Option<String>,
    /// Read again by a reindex over the row the index has: the row is written only once the
    /// whole session has been read, so a reindex stopped half-way leaves it as it was.
    rebuilding: bool,
    /// The session's processes so far, for detection rules on the parent.
    procs: crate::rules::Processes,
}

/// What an advance changes of a [`Tracked`], to put back when its write failed.
struct Saved {
    scan: SessionScan,
    row: SessionRow,
    last_change: Instant,
    fresh: bool,
    procs: crate::rules::Processes,
}

impl Tracked {
    fn clone_state(&self) -> Saved {
        Saved {
            scan: self.scan.clone(),
            row: self.row.clone(),
            last_change: self.last_change,
            fresh: self.fresh,
            procs: self.procs.clone(),
        }
    }

    fn restore(&mut self, s: Saved) {
        self.scan = s.scan;
        self.row = s.row;
        self.last_change = s.last_change;
        self.fresh = s.fresh;
        self.procs = s.procs;
    }
}

/// The indexer stage.
pub struct Indexer {
    src: Arc<dyn BucketReader>,
    index: Arc<dyn Index>,
    config: IndexerConfig,
    handle: IndexerHandle,
    open: BTreeMap<SessionId, Tracked>,
    /// Names discovery has already handled, so each pass only looks at new ones.
    seen: BTreeSet<String>,
    newest: Option<SessionId>,
    /// Layout v2: per machine, the names handled and the newest session id seen.
    machines: BTreeMap<MachineId, MachineCursor>,
    /// Where the turn of machines to list resumes.
    next_machine: Option<MachineId>,
    /// Names under the machines prefix that are not machine ids, reported once.
    bad_machines: BTreeSet<String>,
    passes: u64,
    maintained: Option<Instant>,
    /// A reindex is reading every session again, closed ones too.
    rebuilding: bool,
    sweep: Option<crate::sweep::Sweep>,
}

/// What a reindex did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReindexReport {
    /// Sessions found in the bucket and read again.
    pub sessions: usize,
    /// Sessions that could not be read or written completely (kept as they were, or as far
    /// as they were read), with the last error.
    pub failed: Vec<(SessionId, String)>,
    /// Sessions the index had that the bucket no longer lists: marked tampered.
    pub missing: Vec<SessionId>,
}

/// Discovery's state for one machine of layout v2.
#[derive(Debug, Default)]
struct MachineCursor {
    seen: BTreeSet<String>,
    newest: Option<SessionId>,
}

/// The lead as [`Indexer::run`] holds it.
#[derive(Default)]
struct Lead {
    lease: Option<Box<dyn crate::index::Lease>>,
    /// Past the first try: the indexer's state may be stale when it takes the lead.
    tried: bool,
    /// The last try failed (logged once, not every retry).
    failed: bool,
}

impl Lead {
    /// Whether `ix` leads now: checks the lease it holds, or tries to take one (and then
    /// resumes from the index, which another leader may have moved on).
    fn ensure(&mut self, ix: &mut Indexer) -> bool {
        if let Some(l) = self.lease.as_mut()
            && !l.held()
        {
            self.lease = None;
            ix.forget();
            ix.handle.set_role(Role::Follower);
            tracing::warn!("this player lost the lead; another player indexes now");
        }
        if self.lease.is_some() {
            return true;
        }
        let first = !std::mem::replace(&mut self.tried, true);
        match ix.index.try_lead() {
            Ok(Some(l)) => {
                self.failed = false;
                // Right after start the state is fresh; later it is not.
                let resumed = if first { Ok(()) } else { ix.resume() };
                match resumed {
                    Ok(()) => {
                        self.lease = Some(l);
                        ix.handle.set_role(Role::Leader);
                        tracing::info!("this player leads: it indexes and runs retention");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not resume indexing; trying again");
                    }
                }
            }
            Ok(None) => {
                if first {
                    // What `Indexer::new` loaded is of no use until this player leads, and is
                    // loaded again then.
                    ix.forget();
                    tracing::info!(
                        "another player leads; this one serves the API and takes the lead when it is free"
                    );
                }
                ix.handle.set_role(Role::Follower);
            }
            Err(e) => {
                if !self.failed {
                    tracing::warn!(error = %e, "could not ask the index for the lead; trying again");
                }
                self.failed = true;
            }
        }
        self.lease.is_some()
    }
}

impl Indexer {
    /// An indexer that resumes the sessions the index has not seen closed.
    pub fn new(
        src: Arc<dyn BucketReader>,
        index: Arc<dyn Index>,
        config: IndexerConfig,
    ) -> Result<Self, IndexerError> {
        let sweep = config.sweep_every.map(crate::sweep::Sweep::new);
        let mut me = Self {
            src,
            newest: index.newest()?,
            index,
            handle: IndexerHandle::default(),
            open: BTreeMap::new(),
            seen: BTreeSet::new(),
            machines: BTreeMap::new(),
            next_machine: None,
            bad_machines: BTreeSet::new(),
            passes: 0,
            maintained: None,
            rebuilding: false,
            config,
            sweep,
        };
        crate::retention::init(me.index.as_ref()).map_err(|e| match e {
            crate::retention::RetentionError::Index(e) => IndexerError::Index(e),
            e => IndexerError::Index(IndexError::Other(e.to_string())),
        })?;
        crate::witness::init(me.index.as_ref())
            .map_err(|e| IndexerError::Index(IndexError::Other(e.to_string())))?;
        crate::enroll::init(me.index.as_ref())
            .map_err(|e| IndexerError::Index(IndexError::Other(e.to_string())))?;
        crate::locate::init(me.index.as_ref())?;
        // The API lists review states beside sessions: the table exists wherever it serves.
        crate::review::init(me.index.as_ref())
            .map_err(|e| IndexerError::Index(IndexError::Other(e.to_string())))?;
        me.resume()?;
        Ok(me)
    }

    /// Loads what discovery and advance go on from: the newest sessions seen and the sessions
    /// whose close record has not been read (read again from their start; the upserts
    /// converge). On start, and each time this player takes the lead, since another leader may
    /// have indexed meanwhile.
    fn resume(&mut self) -> Result<(), IndexerError> {
        self.forget();
        self.newest = self.index.newest()?;
        for (m, newest) in crate::locate::newest_per_machine(self.index.as_ref())? {
            self.machines.entry(m).or_default().newest = Some(newest);
        }
        for id in self.index.unfinished()? {
            let key = crate::locate::key_of(self.index.as_ref(), id)?;
            self.track(key);
        }
        Ok(())
    }

    /// Drops discovery's and advance's state (on losing the lead: what another leader does
    /// meanwhile makes it stale).
    fn forget(&mut self) {
        self.open.clear();
        self.seen.clear();
        self.newest = None;
        self.machines.clear();
        self.next_machine = None;
    }

    pub fn handle(&self) -> IndexerHandle {
        self.handle.clone()
    }

    /// Reads the whole bucket again, every session from its start, over the index it finds:
    /// each session's rows are replaced as its new reading is written (chunk by chunk, in
    /// transactions), so a reindex that fails or is stopped half-way leaves every session as
    /// complete as it was or more, never less. A session that cannot be read or written is
    /// reported and passed over. A session the index has and the bucket no longer lists (and
    /// retention did not delete) is marked tampered: it was there, and is not now.
    pub fn reindex(&mut self) -> Result<ReindexReport, IndexerError> {
        self.open.clear();
        self.seen.clear();
        self.newest = None;
        self.machines.clear();
        self.next_machine = None;
        self.rebuilding = true;
        let discovered = self.discover_all();
        let sessions: BTreeSet<SessionId> = self.open.keys().copied().collect();
        let advanced = discovered.and_then(|_| self.advance_all(true));
        self.rebuilding = false;
        let mut report = ReindexReport {
            sessions: sessions.len(),
            ..ReindexReport::default()
        };
        for (id, t) in &self.open {
            if let Some(e) = &t.last_error {
                report.failed.push((*id, e.clone()));
            }
        }
        if let Err(e) = advanced {
            // A listing that failed leaves the rest unread: say so rather than report a full
            // reindex. Sessions already read stay written.
            if report.failed.is_empty() {
                return Err(e);
            }
        }
        for id in self.index_ids()? {
            if sessions.contains(&id)
                || crate::retention::is_deleted(self.index.as_ref(), id)
                    .map_err(|e| IndexerError::Index(IndexError::Other(e.to_string())))?
            {
                continue;
            }
            if let Some(mut row) = self.index.session(id)? {
                let message =
                    "no longer in the bucket: the player indexed it before, the bucket does not list it now"
                        .to_owned();
                if !row.problems.iter().any(|p| p.message == message) {
                    row.problems.push(crate::scan::Problem {
                        kind: crate::scan::ProblemKind::Tampered,
                        message,
                        silence: None,
                    });
                }
                row.status = crate::scan::Status::Tampered;
                self.index.apply(&Batch {
                    sessions: vec![row],
                    ..Batch::default()
                })?;
                report.missing.push(id);
            }
        }
        self.index.maintain()?;
        self.maintained = Some(Instant::now());
        Ok(report)
    }

    /// Every session id the index holds.
    fn index_ids(&self) -> Result<Vec<SessionId>, IndexerError> {
        Ok(self
            .index
            .query("SELECT id FROM sessions", &[])?
            .into_iter()
            .filter_map(|r| r.first()?.text()?.parse().ok())
            .collect())
    }

    /// Runs passes until [`IndexerHandle::stop`], while this player holds the lead
    /// ([`Index::try_lead`]); without it, tries to take it every [`LEAD_RETRY`] and otherwise
    /// only waits (the API is served all the same). A failed pass is logged and retried at the
    /// next interval: the bucket or the database being away must not stop the service.
    pub fn run(mut self) {
        let mut last_pass: Option<Instant> = None;
        let mut lead = Lead::default();
        loop {
            if !lead.ensure(&mut self) {
                // A follower ignores notifies: the leader's discovery and sweep find what
                // they name.
                if self.handle.wait(LEAD_RETRY).0 {
                    return;
                }
                continue;
            }
            // Notifies start passes at once, but no faster than this: a flood of them (any
            // signed-in client can send one) costs at most ten passes a second.
            if let Some(gap) = last_pass.and_then(|t| MIN_PASS_GAP.checked_sub(t.elapsed())) {
                std::thread::sleep(gap);
            }
            last_pass = Some(Instant::now());
            if let Err(e) = self.pass() {
                tracing::warn!(error = %e, "index pass failed; retrying");
                let mut st = self
                    .handle
                    .stats
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                st.failed_passes += 1;
                st.last_error = Some(e.to_string());
            }
            let (stop, named) = self.handle.wait(self.next_wait());
            if stop {
                return;
            }
            for id in named {
                if !self.open.contains_key(&id)
                    && let Err(e) = self.notified(id)
                {
                    tracing::warn!(session = %id, error = %e, "a notified session could not be looked at");
                }
            }
        }
    }

    /// How long to wait for the next pass: the interval, or less when an open session's silence
    /// deadline comes sooner, so that silence is shown when it begins and not up to an interval
    /// later. (The passes are still at least [`MIN_PASS_GAP`] apart.)
    fn next_wait(&self) -> Duration {
        let now = Utc::now();
        // Only deadlines still ahead: one already past was judged by the pass just run, or
        // belongs to a session that pass skipped (failing, stale), and must not make the loop
        // spin.
        self.open
            .values()
            .filter(|t| t.row.status == crate::scan::Status::Recording)
            .filter_map(|t| t.scan.silent_at(self.config.silent_slack))
            .filter_map(|at| (at - now).to_std().ok())
            .filter(|d| !d.is_zero())
            .min()
            .map_or(self.config.interval, |d| d.min(self.config.interval))
    }

    /// A session someone said has news (`POST /api/notify`): looked at only if it is in the
    /// bucket (wherever discovery would not reach it, e.g. dated far in the past), so a notify
    /// naming any id cannot make a session appear that does not exist.
    fn notified(&mut self, id: SessionId) -> Result<(), IndexerError> {
        if self.index.session(id)?.is_some_and(|r| r.closed) {
            return Ok(());
        }
        let key = match crate::locate::lookup(self.index.as_ref(), id)? {
            Some(k) => k,
            None => match crate::locate::find(self.src.as_ref(), id)? {
                Some(k) => k,
                None => {
                    tracing::debug!(session = %id, "a notify named a session that is not in the bucket");
                    return Ok(());
                }
            },
        };
        self.found(key)?;
        Ok(())
    }

    /// One pass: discover, then advance open sessions.
    pub fn pass(&mut self) -> Result<(), IndexerError> {
        let t = Instant::now();
        self.discover()?;
        self.sweep_page()?;
        self.advance_all(false)?;
        self.passes += 1;
        if self
            .maintained
            .is_none_or(|t| t.elapsed() >= MAINTAIN_EVERY)
        {
            self.index.maintain()?;
            self.maintained = Some(Instant::now());
        }
        let mut st = self
            .handle
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.passes = self.passes;
        st.last_pass = Some(Utc::now());
        st.last_pass_ms = t.elapsed().as_millis() as u64;
        st.open_sessions = self.open.len();
        st.sweep = self.sweep.as_ref().map(crate::sweep::Sweep::stats);
        Ok(())
    }

    /// One page of the sweep, when one is due; its sessions are found as discovery's are.
    fn sweep_page(&mut self) -> Result<usize, IndexerError> {
        let Some(sweep) = self.sweep.as_mut() else {
            return Ok(0);
        };
        let open = &self.open;
        let step = sweep.step(
            self.src.as_ref(),
            self.index.as_ref(),
            &self.machines,
            |id| open.contains_key(&id),
        )?;
        for what in step.anomalies {
            self.anomaly(what);
        }
        let mut new = 0;
        for key in step.keys {
            if self.found(key)? {
                tracing::info!(
                    session = %key.id,
                    prefix = %key.prefix(),
                    "the sweep found a session dated before discovery's window (an endpoint clock behind, or a late upload)"
                );
                new += 1;
            }
        }
        if let Some(s) = self.sweep.as_mut() {
            s.found(new);
        }
        Ok(new)
    }

    fn track(&mut self, key: SessionKey) {
        let id = key.id;
        self.open.entry(id).or_insert_with(|| Tracked {
            scan: SessionScan::new(key)
                .with_keyring(self.config.keyring.clone())
                .with_chunk_budget(CHUNKS_PER_BATCH),
            row: SessionRow::unknown(id, Utc::now()),
            last_change: Instant::now(),
            fresh: true,
            failures: 0,
            last_error: None,
            rebuilding: self.rebuilding,
            procs: crate::rules::Processes::default(),
        });
    }

    /// Discovers in both layouts (machines in turn); returns how many sessions are new.
    fn discover(&mut self) -> Result<usize, IndexerError> {
        let limit = self.config.machines_per_pass.max(1);
        Ok(self.discover_v1()? + self.discover_v2(limit)?)
    }

    /// Discovers in both layouts, every machine.
    fn discover_all(&mut self) -> Result<usize, IndexerError> {
        Ok(self.discover_v1()? + self.discover_v2(usize::MAX)?)
    }

    fn anomaly(&self, what: String) {
        tracing::warn!(what, "object outside the bucket layout");
        let mut st = self
            .handle
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if st.anomalies.len() < MAX_ANOMALIES {
            st.anomalies.push(what);
        }
    }

    /// Lists layout v1's session names after the cursor; starts tracking the new ones.
    fn discover_v1(&mut self) -> Result<usize, IndexerError> {
        let cursor = self.newest.map(|id| self.cursor(id));
        let names = self.src.list_sessions(cursor.as_deref())?;
        let mut new = 0;
        for name in names {
            if self.seen.contains(&name) {
                continue;
            }
            match name.parse::<SessionId>() {
                Ok(id) => {
                    if self.newest.is_none_or(|n| id > n) {
                        self.newest = Some(id);
                    }
                    new += usize::from(self.found(id.into())?);
                }
                Err(e) => self.anomaly(format!("{LAYOUT_PREFIX}{name}: not a session id ({e})")),
            }
            self.seen.insert(name);
        }
        // Forget names that discovery will no longer list.
        if let Some(c) = &cursor {
            self.seen = self.seen.split_off(c);
        }
        Ok(new)
    }

    /// Lists the machines of layout v2, then the sessions of up to `limit` of them (in turn,
    /// from where the last pass stopped), each after its own cursor.
    fn discover_v2(&mut self, limit: usize) -> Result<usize, IndexerError> {
        for name in self.src.list_names(MACHINES_PREFIX, None)? {
            match name.parse::<MachineId>() {
                Ok(m) => {
                    self.machines.entry(m).or_default();
                }
                Err(e) => {
                    if self.bad_machines.insert(name.clone()) {
                        self.anomaly(format!("{MACHINES_PREFIX}{name}: not a machine id ({e})"));
                    }
                }
            }
        }
        let all: Vec<MachineId> = self.machines.keys().copied().collect();
        let start = self
            .next_machine
            .and_then(|m| all.iter().position(|x| *x >= m))
            .unwrap_or(0);
        let n = all.len().min(limit);
        let turn: Vec<MachineId> = (0..n).map(|i| all[(start + i) % all.len()]).collect();
        self.next_machine = (n < all.len()).then(|| all[(start + n) % all.len()]);
        let mut new = 0;
        for m in turn {
            new += self.discover_machine(m)?;
        }
        Ok(new)
    }

    fn discover_machine(&mut self, m: MachineId) -> Result<usize, IndexerError> {
        let newest = self.machines.get(&m).and_then(|c| c.newest);
        let cursor = newest.map(|id| self.cursor(id));
        let prefix = machine_sessions_prefix(m);
        let names = self.src.list_names(&prefix, cursor.as_deref())?;
        let mut new = 0;
        for name in names {
            if self
                .machines
                .get(&m)
                .is_some_and(|c| c.seen.contains(&name))
            {
                continue;
            }
            match name.parse::<SessionId>() {
                Ok(id) => {
                    let c = self.machines.entry(m).or_default();
                    if c.newest.is_none_or(|n| id > n) {
                        c.newest = Some(id);
                    }
                    new += usize::from(self.found(SessionKey::v2(m, id))?);
                }
                Err(e) => self.anomaly(format!("{prefix}{name}: not a session id ({e})")),
            }
            self.machines.entry(m).or_default().seen.insert(name);
        }
        if let (Some(c), Some(cur)) = (self.machines.get_mut(&m), &cursor) {
            c.seen = c.seen.split_off(cur);
        }
        Ok(new)
    }

    /// Where listing resumes for a cursor at session `id`: the discovery window before it.
    ///
    /// Ids carry the endpoint's clock: an id dated in the future (a fast clock, or on purpose)
    /// must not move the cursor past the sessions that come after it in real time, so the
    /// cursor never goes beyond the player's own now.
    fn cursor(&self, id: SessionId) -> String {
        let window = self.config.discovery_window.as_millis() as u64;
        let now = Utc::now().timestamp_millis().max(0) as u64;
        cursor_before(id.unix_ms().min(now).saturating_sub(window))
    }

    /// A session discovery found at `key`: tracked unless it is closed in the index, being
    /// deleted, or a copy of a session id already found under another prefix.
    fn found(&mut self, key: SessionKey) -> Result<bool, IndexerError> {
        let id = key.id;
        if let Some(first) = crate::locate::record(self.index.as_ref(), key)? {
            self.anomaly(format!(
                "session {id} under {} is a second copy of a session id first found under {}; not indexed",
                key.prefix(),
                first.prefix()
            ));
            return Ok(false);
        }
        // A session the retention job is deleting (or deleted) must not come back from objects
        // a crashed deletion left behind.
        let deleted = crate::retention::is_deleted(self.index.as_ref(), id)
            .map_err(|e| IndexerError::Index(IndexError::Other(e.to_string())))?;
        match self.index.session(id)? {
            Some(r) if r.closed && !self.rebuilding => Ok(false),
            _ if deleted => Ok(false),
            _ => {
                self.track(key);
                Ok(true)
            }
        }
    }

    fn advance_all(&mut self, everything: bool) -> Result<(), IndexerError> {
        let ids: Vec<SessionId> = self.open.keys().copied().collect();
        let mut failed = None;
        for id in ids {
            let Some(t) = self.open.get_mut(&id) else {
                continue;
            };
            let stale = t.last_change.elapsed() >= self.config.stale_after;
            let rare = self.passes.is_multiple_of(STALE_EVERY);
            if !everything && !rare && (stale || t.failures >= MAX_QUICK_RETRIES) {
                continue;
            }
            // One session's failure is that session's: every other session is still advanced in
            // this pass. Each advance reads at most CHUNKS_PER_BATCH chunks and writes them in one
            // transaction; a session with more goes on, up to BATCHES_PER_PASS batches a pass
            // (a reindex reads it to its end), so one long session does not hold up the others.
            let mut batches = 0;
            loop {
                batches += 1;
                let before = t.clone_state();
                match advance_session(
                    self.src.as_ref(),
                    self.index.as_ref(),
                    &self.config,
                    id,
                    t,
                    stale,
                ) {
                    Ok(()) => {
                        if t.failures > 0 {
                            tracing::info!(session = %id, after = t.failures, "a session that failed to index is indexed again");
                            t.failures = 0;
                            t.last_error = None;
                        }
                        if !t.scan.has_more() || (!everything && batches >= BATCHES_PER_PASS) {
                            break;
                        }
                    }
                    Err((e, wrote)) => {
                        if !wrote {
                            // Nothing of this advance reached the index: the scan goes back to
                            // where the index is, and the next pass reads it all again.
                            t.restore(before);
                        }
                        note_failure(self.index.as_ref(), id, t, &e);
                        failed.get_or_insert(e);
                        break;
                    }
                }
            }
            if t.scan.is_closed() {
                tracing::info!(session = %id, status = %t.row.status, chunks = t.row.chunks, "session indexed");
                self.open.remove(&id);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// Consecutive failed advances after which a session is retried only every [`STALE_EVERY`]
/// passes (a session that cannot be read or written must not cost every pass).
pub const MAX_QUICK_RETRIES: u32 = 5;

/// Chunks read and written per index transaction.
pub const CHUNKS_PER_BATCH: u64 = 64;

/// Batches one session may take in one pass of `serve`'s indexer (the rest waits for the next).
pub const BATCHES_PER_PASS: u32 = 16;

/// Records a session's failure: logged when it first fails and when it reaches the retry bound
/// (not every pass), and written to the session's row as an `unindexed` problem where the index
/// takes that much.
fn note_failure(index: &dyn Index, id: SessionId, t: &mut Tracked, e: &IndexerError) {
    t.failures += 1;
    let text = e.to_string();
    let changed = t.last_error.as_deref() != Some(text.as_str());
    t.last_error = Some(text.clone());
    if t.failures == MAX_QUICK_RETRIES {
        tracing::error!(session = %id, error = %text, attempts = t.failures, "a session cannot be indexed; retrying it only every {STALE_EVERY} passes until it can");
    } else if changed {
        tracing::warn!(session = %id, error = %text, "indexing a session failed; retrying it");
    }
    let message = format!(
        "the player could not index all of this session yet ({} attempts): {}",
        t.failures,
        crate::auth::bounded(&text, 300)
    );
    // Marked on the row the index has, if it has one: a session read again from the start (a
    // reindex, a restart) must not be replaced by the little this attempt knew of it.
    let mut row = match index.session(id) {
        Ok(Some(r)) => r,
        _ => t.row.clone(),
    };
    row.problems
        .retain(|p| p.kind != crate::scan::ProblemKind::Unindexed);
    row.problems.push(crate::scan::Problem {
        kind: crate::scan::ProblemKind::Unindexed,
        message,
        silence: None,
    });
    let batch = Batch {
        sessions: vec![row],
        ..Batch::default()
    };
    // Best effort: when the index itself is what fails, this fails too, and the log has it.
    let _ = index.apply(&batch);
}

/// One advance of one session: reads what is new (at most a batch of chunks), then writes it in
/// one transaction. On failure, says whether what was read reached the index (a read that failed
/// half-way still writes what it read before the failure).
fn advance_session(
    src: &dyn BucketReader,
    index: &dyn Index,
    config: &IndexerConfig,
    id: SessionId,
    t: &mut Tracked,
    stale: bool,
) -> Result<(), (IndexerError, bool)> {
    let mut found = Vec::new();
    let (progressed, read_error) =
        match t
            .scan
            .advance_witnessed(src, Some(index), stale, &mut found)
        {
            Ok(p) => (p, None),
            Err(e) => (!found.is_empty(), Some(IndexerError::Store(e))),
        };
    let write = |t: &mut Tracked| -> Result<(), IndexerError> {
        let now = Utc::now();
        let mut last_utc = t.row.started_at;
        let mut batch = Batch::default();
        for f in found {
            match &f {
                Found::Chunk { manifest, .. } => last_utc = last_utc.max(manifest.utc_end),
                Found::Header(h) => crate::enroll::seen_header(index, id, h, config.enrolment, now)
                    .map_err(|e| IndexerError::Index(IndexError::Other(e.to_string())))?,
                Found::Close(c) => crate::enroll::seen_close(index, id, c.stopped_by.as_ref())
                    .map_err(|e| IndexerError::Index(IndexError::Other(e.to_string())))?,
                Found::Init(_) => {}
            }
            let whole = apply_found(&mut t.row, f, id, &mut batch);
            // The chunk's flags go in the same transaction as its events, so no session is
            // listed without them; the rules match the whole events, not only what the index
            // keeps of them.
            if let Some(whole) = whole
                && let Some((_, c, rows)) = batch.chunks.last()
            {
                let flags = config.rules.evaluate_whole(rows, &whole, &mut t.procs);
                batch.flags.push((id, c.seq, flags));
            }
        }
        if t.fresh {
            // First look at a session just discovered or restored from the index: judge
            // staleness by the recording's own clock, not by when we started watching it.
            t.fresh = false;
            let age = (now - last_utc).to_std().unwrap_or_default();
            t.last_change = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        } else if progressed {
            t.last_change = Instant::now();
        }
        if progressed {
            t.row.last_change = now;
        }
        let stale = t.last_change.elapsed() >= config.stale_after;
        // Silence is judged on the player's clock against the scan's last arrival (the witness
        // record's first sight), never on the endpoint's times; a stale session is interrupted
        // instead.
        let silence = (!stale)
            .then(|| t.scan.silence(now, config.silent_slack))
            .flatten();
        let status = t.scan.status_with(stale, silence.is_some());
        let mut problems = t.scan.problems().to_vec();
        problems.extend(silence.map(crate::scan::Problem::silent));
        // A read failure being retried stays on the row until an advance succeeds.
        if read_error.is_some() {
            problems.extend(
                t.row
                    .problems
                    .iter()
                    .filter(|p| p.kind == crate::scan::ProblemKind::Unindexed)
                    .cloned(),
            );
        }
        // After failures the index row carries an `unindexed` problem this row does not: written
        // again, so a success clears it.
        // A reindex writes the session's row once it has read all of it (chunks and events
        // are written batch by batch, as upserts over what the index has).
        let unfinished = t.rebuilding && t.scan.has_more();
        if !unfinished
            && (progressed
                || status != t.row.status
                || problems != t.row.problems
                || t.failures > 0)
        {
            t.row.status = status;
            t.row.problems = problems;
            batch.sessions.push(t.row.clone());
        }
        index.apply(&batch)?;
        Ok(())
    };
    match write(t) {
        Err(e) => Err((e, false)),
        Ok(()) => match read_error {
            Some(e) => Err((e, true)),
            None => Ok(()),
        },
    }
}

/// The smallest string sorting at or before every session id of a session started at
/// `unix_ms` (UUIDv7: the first 48 bits are the time in milliseconds).
fn cursor_before(unix_ms: u64) -> String {
    let hex = format!("{:012x}", unix_ms & 0xffff_ffff_ffff);
    format!("{}-{}", &hex[..8], &hex[8..])
}

/// Folds one accepted object into the session's row and the batch.
/// Applies what the scan found to the session's row and the batch; a chunk's events are
/// handed back once their rows are in the batch (the rules match them whole).
fn apply_found(
    row: &mut SessionRow,
    f: Found,
    id: SessionId,
    batch: &mut Batch,
) -> Option<Vec<jitrec_format::Event>> {
    match f {
        Found::Header(h) => {
            row.started_at = h.started_at;
            row.user_name = h.user.name;
            row.user_id = h.user.id;
            row.machine_id = h.machine.id;
            row.hostname = h.machine.hostname;
            row.company = h.labels.company;
            row.location = h.labels.location;
            row.computer = h.labels.computer;
            row.authorized_by = h.authorization.authorized_by;
            row.reason = h.authorization.reason;
            row.continues = h.continues;
            row.trigger = serde_json::to_value(h.authorization.trigger)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
        }
        Found::Init(i) => batch.inits.push((
            id,
            InitRow {
                id: i.id,
                width: i.width,
                height: i.height,
                codec: i.codec,
                bytes: i.size,
            },
        )),
        Found::Chunk {
            manifest: m,
            events,
            verified,
        } => {
            row.chunks += 1;
            row.bytes += m.video.size + m.events.size;
            row.duration_us = row.duration_us.max(m.media_end_us.as_micros());
            let rows = events
                .iter()
                .enumerate()
                .map(|(i, e)| EventRow::new(m.seq, i as u32, e))
                .collect();
            batch.chunks.push((
                id,
                ChunkRow {
                    seq: m.seq,
                    init_id: m.init.id,
                    media_start_us: m.media_start_us.as_micros(),
                    media_end_us: m.media_end_us.as_micros(),
                    utc_start: m.utc_start,
                    utc_end: m.utc_end,
                    keyframe: m.starts_with_keyframe,
                    frames: m.frames,
                    video_bytes: m.video.size,
                    events_bytes: m.events.size,
                    events: m.events.count,
                    verified,
                },
                rows,
            ));
            return Some(events);
        }
        Found::Close(c) => {
            row.ended_at = Some(c.ended_at);
            row.end_reason = serde_json::to_value(c.end_reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            row.closed = true;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discovery_cursor_sorts_before_every_id_of_that_millisecond() {
        let id = SessionId::from_parts(1_700_000_000_123, [0; 10]);
        let c = cursor_before(1_700_000_000_123);
        assert!(c.as_str() < id.to_string().as_str(), "{c} {id}");
        let earlier = SessionId::from_parts(1_700_000_000_122, [0xff; 10]);
        assert!(c.as_str() > earlier.to_string().as_str(), "{c} {earlier}");
    }
}
