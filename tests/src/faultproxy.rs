//! A fault-injecting TCP proxy on 127.0.0.1 that stands between the uploader and the S3 server.
//!
//! Each new connection rolls the dice: pass through (and be cut off after a random time), reset
//! after the request head, answer `503 SlowDown` or `500 InternalError` in S3's XML, or accept
//! the request and never answer (a stall past the client's timeout). An outage refuses every new
//! connection and severs every open one for a while. Every injected fault is counted, so a test
//! can prove it exercised what it claims to.
//!
//! A script ([`FaultProxy::script`]) makes faults exact instead of random: while one is set, the
//! proxy reads each request before deciding, gives the next scripted fault to the first request
//! whose request line contains its pattern, and passes every request through with
//! `Connection: close`, so that each request of the client comes on a connection of its own and
//! none slips past the script on a kept-alive one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Probabilities of each fault on a new connection (the rest pass through).
#[derive(Debug, Clone, Copy, Default)]
pub struct Plan {
    pub reset: f64,
    pub slow_down: f64,
    pub server_error: f64,
    pub stall: f64,
    /// Pass-through connections are cut after a random time up to this (None: never).
    pub cut_after: Option<Duration>,
    /// The first four connections get one of each fault (reset, SlowDown, 500, stall) in that
    /// order, so a test's coverage does not depend on the dice.
    pub lead_with_each: bool,
}

/// One scripted fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, then drop the connection unanswered.
    Reset,
    /// `503 Slow Down`.
    SlowDown,
    /// `500 Internal Error`.
    ServerError,
}

/// How many times each fault was injected.
#[derive(Debug, Default)]
pub struct Stats {
    pub passed: AtomicU64,
    pub resets: AtomicU64,
    pub slow_downs: AtomicU64,
    pub server_errors: AtomicU64,
    pub stalls: AtomicU64,
    pub refused: AtomicU64,
    pub cut: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    plan: Mutex<Plan>,
    /// Scripted faults, in order: (request-line pattern, fault). `None`: no script (random plan).
    script: Mutex<Option<Vec<(String, Fault)>>>,
    outage_until: Mutex<Option<Instant>>,
    stats: Stats,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Bumped to sever every open connection (an outage starting).
    sever: watch::Sender<u64>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.sever.send_modify(|v| *v += 1);
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr, plan: Plan) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (sever, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(plan),
            script: Mutex::new(None),
            outage_until: Mutex::new(None),
            stats: Stats::default(),
            accepted: AtomicU64::new(0),
            sever,
        });
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(handle(Arc::clone(&s), conn));
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_plan(&self, plan: Plan) {
        *self
            .shared
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = plan;
    }

    /// Refuses new connections and severs open ones for `d`.
    pub fn outage(&self, d: Duration) {
        *self
            .shared
            .outage_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + d);
        self.shared.sever.send_modify(|v| *v += 1);
    }

    /// From now on, faults come from this script alone (see the module's documentation): each
    /// `(pattern, fault)` goes to the next request whose request line contains `pattern`.
    pub fn script(&self, faults: &[(&str, Fault)]) {
        *self
            .shared
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(faults.iter().map(|(p, f)| ((*p).to_owned(), *f)).collect());
        // Connections kept alive from before would carry requests past the script.
        self.shared.sever.send_modify(|v| *v += 1);
    }

    /// Scripted faults not yet given to a request.
    pub fn script_left(&self) -> usize {
        self.shared
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, Vec::len)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Reads one request head (and its body, if it declares a length), returning the bytes read.
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

async fn respond(conn: &mut TcpStream, status: &str, code: &str) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// A connection under a script: one request, its fault or its pass-through with
/// `Connection: close`.
async fn handle_scripted(s: Arc<Shared>, mut conn: TcpStream) {
    let Ok(request) = read_request(&mut conn).await else {
        return;
    };
    let line_end = request
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(request.len());
    let line = String::from_utf8_lossy(&request[..line_end]).into_owned();
    let fault = {
        let mut script = s.script.lock().unwrap_or_else(PoisonError::into_inner);
        let script = script.get_or_insert_with(Vec::new);
        script
            .iter()
            .position(|(p, _)| line.contains(p.as_str()))
            .map(|i| script.remove(i).1)
    };
    match fault {
        Some(Fault::Reset) => {
            count(&s.stats.resets);
            return;
        }
        Some(Fault::SlowDown) => {
            count(&s.stats.slow_downs);
            respond(&mut conn, "503 Slow Down", "SlowDown").await;
            return;
        }
        Some(Fault::ServerError) => {
            count(&s.stats.server_errors);
            respond(&mut conn, "500 Internal Server Error", "InternalError").await;
            return;
        }
        None => {}
    }
    let Ok(mut up) = TcpStream::connect(s.upstream).await else {
        return;
    };
    count(&s.stats.passed);
    // The request line, our Connection header, the client's other headers, then its body.
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(request.len(), |i| i + 4);
    let mut forwarded = request[..line_end].to_vec();
    forwarded.extend_from_slice(b"\r\nConnection: close\r\n");
    let headers = String::from_utf8_lossy(&request[(line_end + 2).min(head_end)..head_end]);
    for h in headers.split("\r\n").filter(|h| !h.is_empty()) {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            forwarded.extend_from_slice(h.as_bytes());
            forwarded.extend_from_slice(b"\r\n");
        }
    }
    forwarded.extend_from_slice(b"\r\n");
    forwarded.extend_from_slice(&request[head_end..]);
    if up.write_all(&forwarded).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
}

async fn handle(s: Arc<Shared>, mut conn: TcpStream) {
    if s.script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
    {
        return handle_scripted(s, conn).await;
    }
    let mut sever = s.sever.subscribe();
    let in_outage = s
        .outage_until
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some_and(|t| Instant::now() < t);
    if in_outage {
        count(&s.stats.refused);
        return;
    }
    let plan = *s.plan.lock().unwrap_or_else(PoisonError::into_inner);
    let n = s.accepted.fetch_add(1, Ordering::Relaxed);
    // The scripted lead-in picks each fault once by rolling into the start of its band (so
    // it needs every fault's probability above zero).
    let roll: f64 = match n {
        0..=3 if plan.lead_with_each => {
            let bands = [
                0.0,
                plan.reset,
                plan.reset + plan.slow_down,
                plan.reset + plan.slow_down + plan.server_error,
            ];
            bands[n as usize] + f64::EPSILON
        }
        _ => rand::random(),
    };
    let mut edge = plan.reset;
    if roll < edge {
        let _ = read_request(&mut conn).await;
        count(&s.stats.resets);
        // Dropping with unread or unanswered data makes the client see a reset or an early close.
        return;
    }
    edge += plan.slow_down;
    if roll < edge {
        let _ = read_request(&mut conn).await;
        count(&s.stats.slow_downs);
        respond(&mut conn, "503 Slow Down", "SlowDown").await;
        return;
    }
    edge += plan.server_error;
    if roll < edge {
        let _ = read_request(&mut conn).await;
        count(&s.stats.server_errors);
        respond(&mut conn, "500 Internal Server Error", "InternalError").await;
        return;
    }
    edge += plan.stall;
    if roll < edge {
        let _ = read_request(&mut conn).await;
        count(&s.stats.stalls);
        // Hold the connection, answering nothing, until an outage or the proxy's end.
        let _ = sever.changed().await;
        return;
    }
    let Ok(mut up) = TcpStream::connect(s.upstream).await else {
        return;
    };
    count(&s.stats.passed);
    let cut = plan
        .cut_after
        .map(|max| max.mul_f64(rand::random::<f64>().max(0.05)));
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
        _ = sever.changed() => {}
        _ = async {
            match cut {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        } => count(&s.stats.cut),
    }
}
