//! A human-readable report of what waits in the spool.

use std::fmt::Write as _;
use std::time::SystemTime;

use jitrec_spool::Backlog;

/// Renders a backlog for a terminal.
pub fn render(b: &Backlog, now: SystemTime) -> String {
    let mut out = String::new();
    let age = b
        .oldest
        .and_then(|t| now.duration_since(t).ok())
        .map_or_else(|| "-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    // Writing to a String cannot fail.
    let _ = writeln!(out, "sessions with pending entries: {}", b.sessions);
    let _ = writeln!(out, "pending entries:               {}", b.entries);
    let _ = writeln!(out, "pending bytes:                 {}", b.bytes);
    let _ = writeln!(out, "oldest pending entry age:      {age}");
    let _ = writeln!(out, "quarantined entries:           {}", b.quarantined);
    let _ = writeln!(out, "spool size on disk:            {}", b.used_bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_age_of_oldest_entry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let b = Backlog {
            sessions: 1,
            entries: 3,
            bytes: 4096,
            oldest: Some(now - Duration::from_millis(2500)),
            quarantined: 1,
            used_bytes: 5000,
        };
        let text = render(&b, now);
        assert!(text.contains("pending entries:               3"), "{text}");
        assert!(text.contains("2.5 s"), "{text}");
        assert!(render(&Backlog::default(), now).contains("age:      -"));
    }
}
