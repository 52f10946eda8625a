//! Syslog: each alert one RFC 5424 message over TCP (RFC 6587) or TLS (RFC 5425).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME jitrec-player PROCID MSGID [jitrec@32473 ...] MSG`: the MSGID is
//! the alert's type, the structured data element carries the alert's fields (names in
//! `docs/alerts.md`; values escaped as RFC 5424 6.3.3 says: `"`, `\` and `]` behind a
//! backslash), and MSG is the alert's sentence (UTF-8, without a BOM, as rsyslog's own RFC 5424
//! output). Control characters never reach a message (replaced by U+FFFD), so each message is
//! one line whatever the framing. 32473 is the enterprise number RFC 5612 reserves for
//! documentation: jitrec has none of its own yet, and receivers match the SD-ID by its name.
//!
//! **The loss window.** Syslog over TCP has no acknowledgement: a message counts as delivered
//! once written to the connection. Before each write the connection is checked for the
//! receiver having closed it (a restarted daemon), and when a connection breaks, the messages
//! written on it in the last [`REPLAY_WINDOW`] are sent again on the next one (duplicates,
//! with the same id). A receiver that vanishes without closing (its host lost) can still lose
//! what was written to it until the write times out; webhooks do not have this window.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Alert, AlertError};

/// The SD-ID of the alert's fields.
pub const SD_ID: &str = "jitrec@32473";
/// The APP-NAME.
pub const APP_NAME: &str = "jitrec-player";
/// How long a connection may take to open (TLS handshake included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write may block (a receiver that stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages written this recently on a connection that then breaks are sent again.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(5);

/// How messages are delimited on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Framing {
    /// `<length> <message>` (RFC 6587 3.4.1; RFC 5425's framing).
    #[default]
    OctetCounting,
    /// `<message>\n` (RFC 6587 3.4.2).
    Lf,
}

/// A syslog receiver.
#[derive(Clone)]
pub(crate) struct SyslogTarget {
    pub(crate) name: String,
    host: String,
    port: u16,
    framing: Framing,
    facility: u8,
    /// Set for tls://.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The HOSTNAME field: this machine's name.
    hostname: String,
}

impl std::fmt::Debug for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The facility named `s` (RFC 5424 6.2.1's numbers; the names of syslog.conf).
pub(crate) fn parse_facility(s: &str) -> Result<u8, AlertError> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    if let Ok(n) = s.parse::<u8>()
        && n < 24
    {
        return Ok(n);
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s))
        .map(|n| n as u8)
        .ok_or_else(|| {
            AlertError::Config(format!(
                "--syslog-facility {s:?}: a name ({}) or 0-23",
                NAMES.join(", ")
            ))
        })
}

/// The TLS client settings: only the CAs in `ca` when given, else the system's roots.
pub(crate) fn tls_config(
    ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, AlertError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |what: String| AlertError::Config(format!("syslog TLS: {what}"));
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(format!("{} holds no certificate", path.display())));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot use is skipped, as the system's own tools do.
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// This machine's name as the HOSTNAME field allows it (printable ASCII, at most 255).
fn own_hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if clean.is_empty() { "-".into() } else { clean }
}

impl SyslogTarget {
    /// Checks a `--syslog` URL: `tcp://HOST:PORT` or `tls://HOST:PORT` (`tls` given with it).
    pub(crate) fn parse(
        url: &str,
        framing: Framing,
        facility: u8,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, AlertError> {
        let bad = |why: String| AlertError::Config(format!("--syslog {url:?}: {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let tls = match parsed.scheme() {
            "tcp" => None,
            "tls" => Some(tls.ok_or_else(|| bad("no TLS settings".into()))?),
            s => return Err(bad(format!("scheme {s}: use tcp:// or tls://"))),
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed
            .port()
            .ok_or_else(|| bad("no port (tcp://HOST:PORT; 6514 is syslog over TLS)".into()))?;
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err(bad("only tcp://HOST:PORT or tls://HOST:PORT".into()));
        }
        Ok(Self {
            name: format!("syslog {}://{host}:{port}", parsed.scheme()),
            host,
            port,
            framing,
            facility,
            tls,
            hostname: own_hostname(),
        })
    }
}

/// `v` as an RFC 5424 PARAM-VALUE: `"`, `\` and `]` escaped, control characters replaced.
pub fn escape_param(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The RFC 5424 message of `alert` (without framing).
pub fn format_message(alert: &Alert, facility: u8, hostname: &str, procid: u32) -> String {
    let pri = u16::from(facility) * 8 + u16::from(super::syslog_severity(alert));
    let s = &alert.session;
    let mut params: Vec<(&str, String)> = vec![
        ("id", alert.id.clone()),
        ("type", alert.kind.as_str().to_owned()),
        ("session", s.id.clone()),
        ("user", s.user.clone()),
        ("host", s.machine.hostname.clone()),
        ("machine_id", s.machine.id.clone()),
        ("status", s.status.clone()),
        ("started_at", rfc3339(s.started_at)),
        ("closed", s.closed.to_string()),
    ];
    if let Some(v) = &s.authorized_by {
        params.push(("authorized_by", v.clone()));
    }
    if let Some(v) = &s.reason {
        params.push(("reason", v.clone()));
    }
    if let Some(v) = s.ended_at {
        params.push(("ended_at", rfc3339(v)));
    }
    if let Some(c) = &alert.status {
        params.push(("from", c.from.clone()));
        params.push(("to", c.to.clone()));
    }
    if let Some(f) = &alert.flag {
        params.push(("rule", f.rule.clone()));
        params.push(("severity", f.severity.as_str().to_owned()));
        params.push(("sentence", f.sentence.clone()));
        params.push(("seq", f.seq.to_string()));
        params.push(("idx", f.idx.to_string()));
        params.push(("media_us", f.media_us.to_string()));
        if let Some(u) = f.utc {
            params.push(("utc", rfc3339(u)));
        }
        params.push(("text", f.text.clone()));
    }
    if let Some(u) = &alert.url {
        params.push(("url", u.clone()));
    }
    let mut sd = format!("[{SD_ID}");
    for (k, v) in params {
        sd.push_str(&format!(" {k}=\"{}\"", escape_param(&v)));
    }
    sd.push(']');
    let msg: String = alert
        .message
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    format!(
        "<{pri}>1 {} {hostname} {APP_NAME} {procid} {} {sd} {msg}",
        rfc3339(alert.at),
        alert.kind.as_str()
    )
}

/// RFC 5424's TIMESTAMP: RFC 3339 in UTC with microseconds.
fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `message` framed.
pub fn frame(message: &str, framing: Framing) -> Vec<u8> {
    match framing {
        Framing::OctetCounting => format!("{} {message}", message.len()).into_bytes(),
        Framing::Lf => format!("{message}\n").into_bytes(),
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Whether the receiver is still there: it never sends us anything, so anything readable
    /// is its close (or, over TLS, a record such as a session ticket, read and dropped).
    fn alive(&mut self) -> Result<(), String> {
        let sock = self.socket().try_clone().map_err(|e| e.to_string())?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let result = match self {
            Stream::Plain(s) => {
                let mut b = [0u8; 256];
                loop {
                    match s.read(&mut b) {
                        Ok(0) => break Err("the receiver closed the connection".to_owned()),
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                        Err(e) => break Err(e.to_string()),
                    }
                }
            }
            Stream::Tls(s) => loop {
                match s.conn.read_tls(&mut s.sock) {
                    Ok(0) => break Err("the receiver closed the connection".to_owned()),
                    Ok(_) => match s.conn.process_new_packets() {
                        Err(e) => break Err(format!("TLS: {e}")),
                        Ok(st) if st.peer_has_closed() => {
                            break Err("the receiver closed the TLS session".to_owned());
                        }
                        Ok(st) => {
                            let mut sink = vec![0u8; st.plaintext_bytes_to_read()];
                            let _ = s.conn.reader().read(&mut sink);
                        }
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) => break Err(e.to_string()),
                }
            },
        };
        sock.set_nonblocking(false).map_err(|e| e.to_string())?;
        result
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => {
                s.write_all(b)?;
                s.flush()
            }
            Stream::Tls(s) => {
                s.write_all(b)?;
                s.flush()
            }
        }
    }
}

/// A syslog connection and what was written on it lately.
pub(crate) struct Sender {
    target: SyslogTarget,
    stream: Option<Stream>,
    /// Alerts written on this connection, with when, for [`REPLAY_WINDOW`].
    recent: std::collections::VecDeque<(Instant, String)>,
    pid: u32,
}

/// What one attempt came to.
pub(crate) enum Outcome {
    Delivered,
    /// Not sent: try again later; `requeue` were written on the broken connection lately.
    Retry {
        error: String,
        requeue: Vec<String>,
    },
}

impl Sender {
    pub(crate) fn new(target: SyslogTarget) -> Self {
        Self {
            target,
            stream: None,
            recent: Default::default(),
            pid: std::process::id(),
        }
    }

    /// Drops the connection (this player does not lead).
    pub(crate) fn close(&mut self) {
        self.stream = None;
        self.recent.clear();
    }

    fn connect(&self) -> Result<Stream, String> {
        let t = &self.target;
        let addrs: Vec<_> = (t.host.as_str(), t.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", t.host))?
            .collect();
        let mut last = format!("{} resolves to no address", t.host);
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(sock) => {
                    sock.set_write_timeout(Some(WRITE_TIMEOUT))
                        .map_err(|e| e.to_string())?;
                    let _ = sock.set_nodelay(true);
                    let Some(tls) = &t.tls else {
                        return Ok(Stream::Plain(sock));
                    };
                    let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                        .map_err(|e| format!("{}: {e}", t.host))?;
                    let conn = rustls::ClientConnection::new(Arc::clone(tls), name)
                        .map_err(|e| format!("TLS: {e}"))?;
                    sock.set_read_timeout(Some(CONNECT_TIMEOUT))
                        .map_err(|e| e.to_string())?;
                    let mut s = rustls::StreamOwned::new(conn, sock);
                    // The handshake now, so a certificate the CA does not vouch for is a
                    // connection error, not a lost message.
                    while s.conn.is_handshaking() {
                        s.conn
                            .complete_io(&mut s.sock)
                            .map_err(|e| format!("TLS handshake with {a}: {e}"))?;
                    }
                    return Ok(Stream::Tls(Box::new(s)));
                }
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        Err(last)
    }

    fn broken(&mut self, error: String) -> Outcome {
        self.stream = None;
        let cutoff = Instant::now().checked_sub(REPLAY_WINDOW);
        let requeue = self
            .recent
            .drain(..)
            .filter(|(t, _)| cutoff.is_none_or(|c| *t >= c))
            .map(|(_, id)| id)
            .collect();
        Outcome::Retry { error, requeue }
    }

    /// Writes one alert (`payload` is its JSON).
    pub(crate) fn send(&mut self, id: &str, payload: &str) -> Result<Outcome, AlertError> {
        let alert: Alert = serde_json::from_str(payload)
            .map_err(|e| AlertError::Corrupt(format!("a queued alert: {e}")))?;
        if let Some(s) = self.stream.as_mut()
            && let Err(e) = s.alive()
        {
            tracing::info!(target_name = %self.target.name, error = %e,
                "alerts: the syslog connection was closed; reconnecting");
            // What was written on it lately may not have been read: sent again first (the
            // worker puts it back in the queue, ahead of this one).
            if let Outcome::Retry { requeue, .. } = self.broken(e.clone())
                && !requeue.is_empty()
            {
                return Ok(Outcome::Retry { error: e, requeue });
            }
        }
        if self.stream.is_none() {
            match self.connect() {
                Ok(s) => self.stream = Some(s),
                Err(e) => return Ok(self.broken(e)),
            }
        }
        let message = format_message(
            &alert,
            self.target.facility,
            &self.target.hostname,
            self.pid,
        );
        let bytes = frame(&message, self.target.framing);
        let Some(stream) = self.stream.as_mut() else {
            return Ok(self.broken("not connected".into()));
        };
        if let Err(e) = stream.write_all(&bytes) {
            return Ok(self.broken(format!("writing: {e}")));
        }
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > REPLAY_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, id.to_owned()));
        Ok(Outcome::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{FlagInfo, Kind, Machine, SessionInfo, Severity, StatusChange};

    fn alert() -> Alert {
        let t = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        Alert {
            version: 1,
            id: "0123456789abcdef0123456789abcdef".into(),
            kind: Kind::RuleMatch,
            at: t,
            message: "Rule useradd (high) matched: a \"user\" was added".into(),
            session: SessionInfo {
                id: "0190a1b2-0000-7000-8000-000000000001".into(),
                user: r#"eve"] [x@1 y="z"#.into(),
                machine: Machine {
                    hostname: "ws\\01".into(),
                    id: "m1".into(),
                },
                authorized_by: Some("boss".into()),
                reason: None,
                status: "recording".into(),
                started_at: t,
                ended_at: None,
                closed: false,
            },
            status: Some(StatusChange {
                from: "recording".into(),
                to: "tampered".into(),
            }),
            flag: Some(FlagInfo {
                rule: "useradd".into(),
                severity: Severity::High,
                sentence: "a user was added".into(),
                seq: 3,
                idx: 0,
                media_us: 1_000,
                utc: Some(t),
                text: "useradd temp3\nrm -rf /".into(),
            }),
            url: None,
        }
    }

    #[test]
    fn escapes_the_three_characters_rfc_5424_names() {
        assert_eq!(escape_param(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(escape_param("[x=y]"), "[x=y\\]");
        assert_eq!(
            escape_param("line\nbreak\r\0"),
            "line\u{fffd}break\u{fffd}\u{fffd}"
        );
        assert_eq!(escape_param("héllo"), "héllo");
    }

    #[test]
    fn a_message_is_rfc_5424_with_one_sd_element_the_sender_cannot_break_out_of() {
        let m = format_message(&alert(), 10, "player1", 42);
        // authpriv (10) * 8 + err (3: a high rule match).
        assert!(
            m.starts_with(
                "<83>1 2023-11-14T22:13:20.123456Z player1 jitrec-player 42 rule_match [jitrec@32473 id=\"0123456789abcdef0123456789abcdef\" type=\"rule_match\" "
            ),
            "{m}"
        );
        // The injected `"] [x@1 y="z` stays inside the user's value.
        assert!(m.contains(r#" user="eve\"\] [x@1 y=\"z" "#), "{m}");
        assert!(m.contains(r#" host="ws\\01" "#), "{m}");
        assert!(m.contains(" text=\"useradd temp3\u{fffd}rm -rf /\""), "{m}");
        assert!(!m.contains('\n'));
        assert!(
            m.ends_with("] Rule useradd (high) matched: a \"user\" was added"),
            "{m}"
        );
        // One SD element: its only unescaped `]` is the last before MSG.
        let sd_end = unescaped_close(&m);
        assert_eq!(&m[sd_end..sd_end + 7], "] Rule ");
        assert!(!m.contains("reason="), "absent values are left out");
    }

    /// The byte offset of the first `]` not escaped by a backslash, outside quotes.
    fn unescaped_close(m: &str) -> usize {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in m.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = !quoted,
                ']' if !quoted => return i,
                _ => {}
            }
        }
        panic!("no end of the SD element in {m}");
    }

    #[test]
    fn framing() {
        assert_eq!(
            frame("<1>1 é", Framing::OctetCounting),
            "7 <1>1 é".as_bytes()
        );
        assert_eq!(frame("<1>1 x", Framing::Lf), b"<1>1 x\n");
    }

    #[test]
    fn facilities_and_urls() {
        assert_eq!(parse_facility("authpriv").unwrap(), 10);
        assert_eq!(parse_facility("LOCAL4").unwrap(), 20);
        assert_eq!(parse_facility("13").unwrap(), 13);
        assert!(parse_facility("24").is_err());
        assert!(parse_facility("nope").is_err());
        let t = SyslogTarget::parse("tcp://127.0.0.1:514", Framing::Lf, 4, None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.name.as_str()),
            ("127.0.0.1", 514, "syslog tcp://127.0.0.1:514")
        );
        let t = SyslogTarget::parse("tcp://[::1]:514", Framing::Lf, 4, None).unwrap();
        assert_eq!(t.host, "::1");
        assert!(SyslogTarget::parse("tcp://127.0.0.1", Framing::Lf, 4, None).is_err());
        assert!(SyslogTarget::parse("udp://127.0.0.1:514", Framing::Lf, 4, None).is_err());
        assert!(SyslogTarget::parse("tls://127.0.0.1:6514", Framing::Lf, 4, None).is_err());
        assert!(SyslogTarget::parse("tcp://127.0.0.1:514/x", Framing::Lf, 4, None).is_err());
    }
}
