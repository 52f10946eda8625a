//! Sign-in under attack: who may try a password now, and how many passwords are hashed at once.
//!
//! A password check is Argon2id, slow and memory-hard on purpose (19 MiB and tens of
//! milliseconds each), so an unthrottled sign-in page is a way to exhaust the player and to guess
//! passwords at leisure. [`SignInGuard`] answers both:
//!
//! - **Back-off.** Attempts are counted per account *and* address, per address (spraying many
//!   names from one place) and per account (one name from many places), as failures until they
//!   succeed. Past a few free failures each further one doubles the wait before the next
//!   attempt under that key is even considered, up to [`Limits::max_wait`]; an attempt during a
//!   wait is answered 429 with `Retry-After` and costs no hashing and no counting. A success
//!   clears the account's counters, not the address's.
//! - **Hashing bound.** At most [`Limits::hashing`] checks run at once, at most
//!   [`Limits::queued`] more wait for a turn; anything beyond is answered 429 at once.
//!
//! The state is in memory (a restart forgets it: the waits are short) and bounded
//! ([`Limits::tracked`] keys; the stalest is forgotten first). The address is the TCP peer's:
//! behind a reverse proxy every client shares the proxy's, and the per-account limits still hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How hard sign-in pushes back.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Failures of one account from one address before waits begin.
    pub pair_free: u32,
    /// Failures from one address, any account, before waits begin.
    pub address_free: u32,
    /// Failures of one account, any address, before waits begin.
    pub account_free: u32,
    /// The first wait; each further failure doubles it.
    pub first_wait: Duration,
    /// The longest wait.
    pub max_wait: Duration,
    /// A key with no failure for this long starts again from nothing.
    pub forget_after: Duration,
    /// Keys remembered at most.
    pub tracked: usize,
    /// Password checks running at once.
    pub hashing: usize,
    /// Sign-ins waiting for a check beyond those running.
    pub queued: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pair_free: 5,
            address_free: 20,
            account_free: 50,
            first_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            tracked: 10_000,
            // The machine's two cores; a check takes 19 MiB while it runs.
            hashing: 2,
            queued: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Pair(String, IpAddr),
    Address(IpAddr),
    Account(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

/// Why a sign-in attempt is not considered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures under one of its keys: try again after this long.
    BackOff(Duration),
    /// Too many password checks running and waiting.
    Busy,
}

impl Refusal {
    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Refusal::BackOff(d) => d.as_secs() + u64::from(d.subsec_nanos() > 0),
            Refusal::Busy => 1,
        }
        .max(1)
    }
}

/// The sign-in throttle and the password-check bound; one per service.
#[derive(Debug)]
pub struct SignInGuard {
    limits: Limits,
    failures: Mutex<HashMap<Key, Failures>>,
    /// Owned permits: a turn travels with the password check onto its blocking thread, so a
    /// client that hangs up (cancelling its request) cannot free a turn while the hash runs.
    hashing: std::sync::Arc<tokio::sync::Semaphore>,
    waiting: std::sync::Arc<AtomicUsize>,
}

/// Counts a sign-in waiting for a turn while it exists, so a waiter cancelled mid-wait is
/// uncounted too.
struct Waiting(std::sync::Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for SignInGuard {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// The account part of a key: bounded, whatever the client sent.
fn account_key(name: &str) -> String {
    if crate::auth::valid_user_name(name) {
        name.to_owned()
    } else {
        "(not a user name)".to_owned()
    }
}

impl SignInGuard {
    pub fn new(limits: Limits) -> Self {
        SignInGuard {
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.hashing.max(1))),
            limits,
            failures: Mutex::new(HashMap::new()),
            waiting: std::sync::Arc::new(AtomicUsize::new(0)),
        }
    }

    fn keys(name: &str, from: IpAddr) -> [Key; 3] {
        // One IPv6 host holds a whole /64: its addresses count as one.
        let from = match from {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
            v4 => v4,
        };
        let account = account_key(name);
        [
            Key::Pair(account.clone(), from),
            Key::Address(from),
            Key::Account(account),
        ]
    }

    fn free(&self, key: &Key) -> u32 {
        match key {
            Key::Pair(..) => self.limits.pair_free,
            Key::Address(_) => self.limits.address_free,
            Key::Account(_) => self.limits.account_free,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Failures>> {
        // The map holds counters only; one a panicking thread left half-updated is still a
        // usable map.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an attempt for `name` from `from` may be considered at `now`; if so it is counted
    /// at once, as a failure until [`SignInGuard::succeeded`] says otherwise. Counting before the
    /// password is checked is what makes a burst of concurrent attempts meet the limit: each one
    /// sees the ones before it. `Ok` carries the wait this attempt starts if it fails.
    pub fn attempt(
        &self,
        name: &str,
        from: IpAddr,
        now: Instant,
    ) -> Result<Option<Duration>, Refusal> {
        let keys = Self::keys(name, from);
        let mut table = self.table();
        let wait = keys
            .iter()
            .filter_map(|k| table.get(k))
            .filter(|f| now.duration_since(f.last) < self.limits.forget_after)
            .map(|f| f.until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(Refusal::BackOff(wait));
        }
        let mut longest = None::<Duration>;
        for key in keys {
            let free = self.free(&key);
            if !table.contains_key(&key) && table.len() >= self.limits.tracked {
                self.make_room(&mut table, now);
            }
            let f = table.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                until: now,
            });
            if now.duration_since(f.last) >= self.limits.forget_after {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if f.count > free {
                let doublings = (f.count - free - 1).min(30);
                let wait = self
                    .limits
                    .first_wait
                    .saturating_mul(1 << doublings)
                    .min(self.limits.max_wait);
                f.until = now + wait;
                longest = Some(longest.map_or(wait, |l| l.max(wait)));
            }
        }
        Ok(longest)
    }

    /// The attempt succeeded: the account's counters start again (the address's do not, so
    /// one known password does not reset a spray).
    pub fn succeeded(&self, name: &str, from: IpAddr) {
        let [pair, _, account] = Self::keys(name, from);
        let mut table = self.table();
        table.remove(&pair);
        table.remove(&account);
    }

    /// Forgets keys idle past `forget_after`, or else the stalest one.
    fn make_room(&self, table: &mut HashMap<Key, Failures>, now: Instant) {
        let forget = self.limits.forget_after;
        table.retain(|_, f| now.duration_since(f.last) < forget);
        if table.len() >= self.limits.tracked {
            let stalest = table
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                table.remove(&k);
            }
        }
    }

    /// A turn to check a password, waiting for one if few enough are waiting already. Hold it
    /// until the check has finished (move it into the blocking task that runs it).
    pub async fn hashing_turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        if let Ok(p) = std::sync::Arc::clone(&self.hashing).try_acquire_owned() {
            return Ok(p);
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(std::sync::Arc::clone(&self.waiting));
        if queued >= self.limits.queued {
            return Err(Refusal::Busy);
        }
        // The semaphore is never closed.
        std::sync::Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|_| Refusal::Busy)
    }

    /// Sign-ins waiting for a turn now (for tests of the bound).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Keys remembered now (for tests of the bound).
    pub fn tracked(&self) -> usize {
        self.table().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn waits_begin_after_the_free_failures_and_double() {
        let g = SignInGuard::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(g.attempt("eve", ip(1), t0), Ok(None));
        }
        assert_eq!(
            g.attempt("eve", ip(1), t0),
            Ok(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            g.attempt("eve", ip(1), t0),
            Err(Refusal::BackOff(Duration::from_secs(1)))
        );
        // Another address for the same account is not held up by this pair's failures.
        assert_eq!(g.attempt("eve", ip(2), t0), Ok(None));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            g.attempt("eve", ip(1), t1),
            Ok(Some(Duration::from_secs(2)))
        );
        assert!(g.attempt("eve", ip(1), t1).is_err());
        // A success clears the account, and the pair with it.
        g.succeeded("eve", ip(1));
        assert_eq!(g.attempt("eve", ip(1), t1), Ok(None));
    }

    #[test]
    fn a_refused_attempt_is_not_counted() {
        let g = SignInGuard::default();
        let t = Instant::now();
        for _ in 0..6 {
            g.attempt("eve", ip(1), t).unwrap();
        }
        for _ in 0..100 {
            assert!(g.attempt("eve", ip(1), t).is_err());
        }
        let t1 = t + Duration::from_secs(1);
        assert_eq!(
            g.attempt("eve", ip(1), t1),
            Ok(Some(Duration::from_secs(2)))
        );
    }

    #[test]
    fn spraying_names_from_one_address_is_held_up_by_the_address() {
        let g = SignInGuard::default();
        let t = Instant::now();
        for n in 0..20 {
            g.attempt(&format!("user{n}"), ip(7), t).unwrap();
        }
        assert!(g.attempt("fresh", ip(7), t).unwrap().is_some());
        assert!(matches!(
            g.attempt("another", ip(7), t),
            Err(Refusal::BackOff(_))
        ));
        assert_eq!(g.attempt("another", ip(8), t), Ok(None));
        // A success does not reset the address.
        g.succeeded("fresh", ip(7));
        assert!(g.attempt("another", ip(7), t).is_err());
    }

    #[test]
    fn waits_are_capped_and_counters_forgotten() {
        let g = SignInGuard::default();
        let mut t = Instant::now();
        let mut last = None;
        for _ in 0..100 {
            if let Ok(w) = g.attempt("eve", ip(1), t) {
                last = w;
            }
            t += Duration::from_secs(900);
        }
        assert_eq!(last, Some(Duration::from_secs(15 * 60)));
        let later = t + Duration::from_secs(3600);
        assert_eq!(g.attempt("eve", ip(1), later), Ok(None));
    }

    #[test]
    fn the_table_stays_within_its_bound() {
        let g = SignInGuard::new(Limits {
            tracked: 50,
            ..Limits::default()
        });
        let t = Instant::now();
        for n in 0..=255u8 {
            let _ = g.attempt(&"x".repeat(2000), IpAddr::from([10, 0, 0, n]), t);
        }
        assert!(g.tracked() <= 50, "{}", g.tracked());
    }

    #[tokio::test]
    async fn hashing_turns_are_bounded() {
        let g = SignInGuard::new(Limits {
            hashing: 1,
            queued: 1,
            ..Limits::default()
        });
        let first = g.hashing_turn().await.unwrap();
        let g2 = &g;
        let waiting = async move { g2.hashing_turn().await.map(drop) };
        tokio::pin!(waiting);
        // Start the waiter, then the one beyond the queue is refused at once.
        assert!(futures_poll_once(&mut waiting).await.is_none());
        assert_eq!(g.hashing_turn().await.err(), Some(Refusal::Busy));
        drop(first);
        assert_eq!(waiting.await, Ok(()));
        assert_eq!(g.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_frees_its_place() {
        let g = SignInGuard::new(Limits {
            hashing: 1,
            queued: 1,
            ..Limits::default()
        });
        let first = g.hashing_turn().await.unwrap();
        {
            // A client that hangs up while waiting: its request future is dropped.
            let waiting = g.hashing_turn();
            tokio::pin!(waiting);
            assert!(futures_poll_once(&mut waiting).await.is_none());
            assert_eq!(g.waiting(), 1);
        }
        assert_eq!(g.waiting(), 0);
        // Its place is free again: the next one may wait.
        let next = g.hashing_turn();
        tokio::pin!(next);
        assert!(futures_poll_once(&mut next).await.is_none());
        drop(first);
        assert!(next.await.is_ok());
    }

    /// Polls a future once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        use std::task::Poll;
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
