//! The Windows service's decisions, as a state machine with time as an input.
//!
//! Windows runs services in session 0, which has no view of the user's desktop: a service can
//! neither capture the screen nor hook the user's windows. So the service (running as
//! LocalSystem) only supervises; the recording is done by an **agent**, the same executable
//! started by the service as LocalSystem inside the console session. The agent records exactly
//! as the Linux recorder does (JIT trigger, capture, events, spool) and ends its session cleanly,
//! committing the last chunk, when the service closes the agent's standard input.
//!
//! [`Supervisor`] decides, from service-control and session-change notifications, agent exits
//! and the clock, when to start an agent in which session, when to ask it to finish, when to
//! kill it, and what to report to the service control manager. The Windows glue
//! ([`super::service`]) only carries those out; this part is tested on every platform.

use std::time::{Duration, Instant};

/// How long an agent may take to commit its last chunk and exit before it is killed. Generous:
/// encoding the last partial chunk of a 4K screen and an fsync on a slow disk fit easily.
pub const AGENT_STOP_GRACE: Duration = Duration::from_secs(20);
/// Wait before starting an agent again after it failed, doubling up to [`RESTART_MAX`] while
/// it keeps failing soon after starting.
pub const RESTART_MIN: Duration = Duration::from_secs(1);
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// An agent that ran this long before exiting counts as healthy: the next restart is quick.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What the service control manager is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Running,
    /// Stopping; the hint is how long until the next report at most.
    StopPending(Duration),
    Stopped,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The service started; `console` is the session at the console, if anyone's.
    Started { console: Option<u32> },
    /// A user signed in to `session` (at the console or switched to it).
    Logon(u32),
    /// The user of `session` signed out.
    Logoff(u32),
    /// `session` was connected to the console (fast user switching, unlock of another user).
    ConsoleConnect(u32),
    /// `session` left the console.
    ConsoleDisconnect(u32),
    /// The agent in `session` exited (code as the process reported it).
    AgentExited { session: u32, code: u32 },
    /// Stop, shutdown or pre-shutdown: finish recording and stop.
    Stop,
    /// Time passed (the glue ticks at least every second).
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an agent in `session`.
    StartAgent(u32),
    /// Ask the agent in `session` to end its recording and exit (close its stdin).
    StopAgent(u32),
    /// The agent ignored the request: terminate it.
    KillAgent(u32),
    Report(Reported),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Agent {
    Running { session: u32, since: Instant },
    Stopping { session: u32, deadline: Instant },
}

/// The service's state.
#[derive(Debug)]
pub struct Supervisor {
    agent: Option<Agent>,
    /// The session whose agent should run (the console's, when someone is signed in there).
    wanted: Option<u32>,
    stopping: bool,
    stopped: bool,
    restart_at: Option<Instant>,
    backoff: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            agent: None,
            wanted: None,
            stopping: false,
            stopped: false,
            restart_at: None,
            backoff: RESTART_MIN,
        }
    }

    /// Whether the service has reported `Stopped` (the glue then returns from its main).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The session of the agent running or stopping, if any.
    pub fn agent_session(&self) -> Option<u32> {
        match self.agent {
            Some(Agent::Running { session, .. } | Agent::Stopping { session, .. }) => Some(session),
            None => None,
        }
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        match input {
            Input::Started { console } => {
                self.wanted = console;
                out.push(Action::Report(Reported::Running));
            }
            Input::Logon(s) | Input::ConsoleConnect(s) => self.wanted = Some(s),
            Input::Logoff(s) | Input::ConsoleDisconnect(s) => {
                if self.wanted == Some(s) {
                    self.wanted = None;
                }
            }
            Input::AgentExited { session, code } => {
                if self.agent_session() == Some(session) {
                    let since = match self.agent.take() {
                        Some(Agent::Running { since, .. }) => Some(since),
                        _ => None,
                    };
                    if let Some(since) = since {
                        // Exited on its own: restart it after a pause that grows while it keeps
                        // failing soon after starting.
                        if now.duration_since(since) >= HEALTHY_RUN {
                            self.backoff = RESTART_MIN;
                        }
                        self.restart_at = Some(now + self.backoff);
                        self.backoff = (self.backoff * 2).min(RESTART_MAX);
                        tracing::warn!(session, code, "recording agent exited; restarting it");
                    }
                }
            }
            Input::Stop => {
                self.stopping = true;
            }
            Input::Tick => {}
        }
        self.converge(now, &mut out);
        out
    }

    fn converge(&mut self, now: Instant, out: &mut Vec<Action>) {
        let want = if self.stopping { None } else { self.wanted };
        match self.agent.clone() {
            Some(Agent::Running { session, .. }) if want != Some(session) => {
                out.push(Action::StopAgent(session));
                self.agent = Some(Agent::Stopping {
                    session,
                    deadline: now + AGENT_STOP_GRACE,
                });
            }
            Some(Agent::Stopping { session, deadline }) if now >= deadline => {
                out.push(Action::KillAgent(session));
                // Killed agents are gone once TerminateProcess returns; their exit notice is
                // not awaited.
                self.agent = None;
            }
            None => {
                if let Some(s) = want
                    && self.restart_at.is_none_or(|at| now >= at)
                {
                    self.restart_at = None;
                    out.push(Action::StartAgent(s));
                    self.agent = Some(Agent::Running {
                        session: s,
                        since: now,
                    });
                }
            }
            _ => {}
        }
        if self.stopping {
            match &self.agent {
                None => {
                    self.stopped = true;
                    out.push(Action::Report(Reported::Stopped));
                }
                Some(Agent::Stopping { deadline, .. }) => {
                    let left = deadline.saturating_duration_since(now) + Duration::from_secs(5);
                    out.push(Action::Report(Reported::StopPending(left)));
                }
                Some(Agent::Running { .. }) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(console: Option<u32>) -> (Supervisor, Instant, Vec<Action>) {
        let t0 = Instant::now();
        let mut s = Supervisor::new();
        let a = s.handle(Input::Started { console }, t0);
        (s, t0, a)
    }

    #[test]
    fn an_agent_runs_in_the_console_session() {
        let (s, _, a) = started(Some(1));
        assert_eq!(
            a,
            [Action::Report(Reported::Running), Action::StartAgent(1)]
        );
        assert_eq!(s.agent_session(), Some(1));
        let (s, _, a) = started(None);
        assert_eq!(a, [Action::Report(Reported::Running)]);
        assert_eq!(s.agent_session(), None);
    }

    #[test]
    fn logoff_stops_the_agent_and_logon_starts_the_next() {
        let (mut s, t0, _) = started(Some(1));
        assert_eq!(s.handle(Input::Logoff(1), t0), [Action::StopAgent(1)]);
        // Nothing new while it finishes its last chunk.
        assert!(
            s.handle(Input::Tick, t0 + Duration::from_secs(1))
                .is_empty()
        );
        assert!(
            s.handle(Input::Logon(2), t0 + Duration::from_secs(2))
                .is_empty(),
            "one agent at a time: the next waits for the first to finish"
        );
        let a = s.handle(
            Input::AgentExited {
                session: 1,
                code: 0,
            },
            t0 + Duration::from_secs(3),
        );
        assert_eq!(a, [Action::StartAgent(2)]);
        assert_eq!(s.agent_session(), Some(2));
    }

    #[test]
    fn an_agent_that_ignores_the_request_is_killed_after_the_grace() {
        let (mut s, t0, _) = started(Some(1));
        s.handle(Input::Logoff(1), t0);
        assert!(
            s.handle(
                Input::Tick,
                t0 + AGENT_STOP_GRACE - Duration::from_millis(1)
            )
            .is_empty()
        );
        assert_eq!(
            s.handle(Input::Tick, t0 + AGENT_STOP_GRACE),
            [Action::KillAgent(1)]
        );
        assert_eq!(s.agent_session(), None);
    }

    #[test]
    fn service_stop_waits_for_the_last_chunk() {
        let (mut s, t0, _) = started(Some(1));
        let a = s.handle(Input::Stop, t0);
        assert_eq!(a[0], Action::StopAgent(1));
        assert!(matches!(a[1], Action::Report(Reported::StopPending(h)) if h >= AGENT_STOP_GRACE));
        assert!(!s.is_stopped());
        // A logon during shutdown does not start anything.
        let a = s.handle(Input::Logon(2), t0 + Duration::from_secs(1));
        assert!(
            a.iter().all(|x| !matches!(x, Action::StartAgent(_))),
            "{a:?}"
        );
        let a = s.handle(
            Input::AgentExited {
                session: 1,
                code: 0,
            },
            t0 + Duration::from_secs(2),
        );
        assert_eq!(a, [Action::Report(Reported::Stopped)]);
        assert!(s.is_stopped());
        assert!(
            s.handle(Input::Logon(3), t0 + Duration::from_secs(3))
                .is_empty()
        );
    }

    #[test]
    fn stop_with_no_agent_stops_at_once() {
        let (mut s, t0, _) = started(None);
        assert_eq!(
            s.handle(Input::Stop, t0),
            [Action::Report(Reported::Stopped)]
        );
    }

    #[test]
    fn a_crashing_agent_is_restarted_with_growing_pauses() {
        let (mut s, t0, _) = started(Some(1));
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            now += Duration::from_millis(100);
            assert!(
                s.handle(
                    Input::AgentExited {
                        session: 1,
                        code: 1
                    },
                    now
                )
                .is_empty()
            );
            let died = now;
            loop {
                now += Duration::from_millis(100);
                if s.handle(Input::Tick, now) == [Action::StartAgent(1)] {
                    break;
                }
            }
            pauses.push(now.duration_since(died));
        }
        assert!(
            pauses[0] >= RESTART_MIN && pauses[0] < RESTART_MIN * 2,
            "{pauses:?}"
        );
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert!(*pauses.last().unwrap() <= RESTART_MAX + Duration::from_millis(100));
        assert!(*pauses.last().unwrap() >= RESTART_MAX - Duration::from_millis(100));
        // After a healthy run the next restart is quick again.
        now += HEALTHY_RUN;
        s.handle(
            Input::AgentExited {
                session: 1,
                code: 1,
            },
            now,
        );
        assert!(
            s.handle(Input::Tick, now + RESTART_MIN)
                .contains(&Action::StartAgent(1))
        );
    }

    #[test]
    fn switching_users_moves_the_agent() {
        let (mut s, t0, _) = started(Some(1));
        assert_eq!(
            s.handle(Input::ConsoleDisconnect(1), t0),
            [Action::StopAgent(1)]
        );
        s.handle(Input::ConsoleConnect(2), t0);
        let a = s.handle(
            Input::AgentExited {
                session: 1,
                code: 0,
            },
            t0 + Duration::from_secs(1),
        );
        assert_eq!(a, [Action::StartAgent(2)]);
        // A stale exit notice of an old agent changes nothing.
        assert!(
            s.handle(
                Input::AgentExited {
                    session: 1,
                    code: 0
                },
                t0 + Duration::from_secs(2)
            )
            .is_empty()
        );
        assert_eq!(s.agent_session(), Some(2));
    }
}
