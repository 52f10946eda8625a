//! A real syslog daemon for the tests: Debian's rsyslog (`rsyslog` and, for TLS,
//! `rsyslog-openssl`, which `scripts/test.sh` installs), started with a private configuration,
//! work directory and output file in a temporary directory, listening on 127.0.0.1 only.
//!
//! It receives RFC 5424 over TCP (octet-counted or LF-framed, as rsyslog's `imtcp` detects),
//! or over TLS with a certificate for 127.0.0.1 signed by a test CA of its own (made with the
//! `openssl` program), parses each message's structured data with `mmpstrucdata`, and writes
//! one JSON object per message: `app`, `host`, `procid`, `msgid`, `pri`, `time`, `msg` and `sd`
//! (the structured data as rsyslog parsed it: what a SIEM behind it would see). The daemon is
//! a [`Reaped`] child: killed when the test ends, or by [`Rsyslog::stop`] (SIGKILL, as a
//! crashed daemon), and started again on the same port by [`Rsyslog::restart`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::child::Reaped;

/// rsyslog starts in well under a second here; CI machines are loaded.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// A running (or stopped) rsyslog.
#[derive(Debug)]
pub struct Rsyslog {
    pub port: u16,
    /// The CA that signed its certificate (TLS only).
    pub ca: Option<PathBuf>,
    dir: tempfile::TempDir,
    child: Option<Reaped>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Rsyslog {
    /// rsyslog receiving plain TCP on a free port.
    pub fn start() -> Result<Rsyslog> {
        Self::start_with(false)
    }

    /// rsyslog receiving TLS (RFC 5425) on a free port; its CA is [`Rsyslog::ca`].
    pub fn start_tls() -> Result<Rsyslog> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Rsyslog> {
        let dir = tempfile::tempdir()?;
        let ca = if tls {
            Some(make_certificates(dir.path())?)
        } else {
            None
        };
        let mut me = Rsyslog {
            port: 0,
            ca,
            dir,
            child: None,
        };
        // The port is found by binding port 0 and letting it go: another process may take it
        // first, so a daemon that cannot listen is started again on another.
        for attempt in 1..=5 {
            me.port = free_port()?;
            match me.spawn() {
                Ok(()) => return Ok(me),
                Err(_) if attempt < 5 => {}
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Where it writes what it received (one JSON object per line).
    pub fn output(&self) -> PathBuf {
        self.dir.path().join("received.jsonl")
    }

    /// Its own log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Every message received so far, parsed.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.output())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("rsyslog wrote a line that is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Kills it (SIGKILL: the daemon crashes) and waits until its port refuses connections.
    pub fn stop(&mut self) {
        self.child = None;
        let started = Instant::now();
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
            assert!(
                started.elapsed() < READY_LIMIT,
                "rsyslog's port still open after its kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port, appending to the same output.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        let (global_tls, module_tls) = match &self.ca {
            Some(_) => (
                format!(
                    " DefaultNetstreamDriver=\"ossl\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                     DefaultNetstreamDriverCertFile=\"{d}/server.pem\" \
                     DefaultNetstreamDriverKeyFile=\"{d}/server.key\""
                ),
                " StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\"",
            ),
            None => (String::new(), ""),
        };
        format!(
            r#"global(workDirectory="{d}/work" maxMessageSize="64k"{global_tls})
module(load="imtcp"{module_tls})
module(load="mmpstrucdata")
template(name="jitrecJson" type="list") {{
  constant(value="{{\"app\":\"") property(name="app-name" format="json")
  constant(value="\",\"host\":\"") property(name="hostname" format="json")
  constant(value="\",\"procid\":\"") property(name="procid" format="json")
  constant(value="\",\"msgid\":\"") property(name="msgid" format="json")
  constant(value="\",\"pri\":\"") property(name="pri" format="json")
  constant(value="\",\"time\":\"") property(name="timereported" dateFormat="rfc3339" format="json")
  constant(value="\",\"msg\":\"") property(name="msg" format="json")
  constant(value="\",\"sd\":") property(name="$!rfc5424-sd")
  constant(value="}}\n")
}}
ruleset(name="jitrec") {{
  action(type="mmpstrucdata")
  action(type="omfile" file="{d}/received.jsonl" template="jitrecJson")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="jitrec")
"#,
            port = self.port
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let d = self.dir.path();
        std::fs::create_dir_all(d.join("work"))?;
        let conf = d.join("rsyslog.conf");
        std::fs::write(&conf, self.config())?;
        let pid = d.join("rsyslogd.pid");
        let _ = std::fs::remove_file(&pid);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("rsyslogd.log"))?;
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("run rsyslogd (apt-get install rsyslog rsyslog-openssl)")?;
        let mut child = Reaped(child);
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("rsyslogd exited ({status}):\n{}", self.log());
            }
            if started.elapsed() > READY_LIMIT {
                bail!(
                    "rsyslogd not listening on {} after {READY_LIMIT:?}:\n{}",
                    self.addr(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A CA and a certificate for 127.0.0.1 it signs, in `d`; returns the CA's path.
fn make_certificates(d: &Path) -> Result<PathBuf> {
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=jitrec test syslog CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    )?;
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )?;
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    )?;
    Ok(d.join("ca.pem"))
}
