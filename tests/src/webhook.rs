//! A webhook receiver for the tests: a plain HTTP/1.1 server on 127.0.0.1 (std only) that
//! keeps every request it is sent (method, path, headers, body) and answers each with the
//! status the test sets (200 unless told otherwise). [`Receiver::stop`] takes the listener
//! away (connections are then refused, as for a receiver that is down) and
//! [`Receiver::start_on`] brings it back on the same address. It checks nothing itself: the
//! test verifies the signatures, as a real receiver would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The largest request body kept (a bigger one fails the test: alerts are bounded).
const MAX_BODY: usize = 1 << 20;

/// One request received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
}

impl Request {
    /// What a connection that did not bring a readable request leaves: no method, the error
    /// as its body, answered 0.
    fn failed(error: String) -> Request {
        Request {
            method: String::new(),
            path: String::new(),
            headers: Vec::new(),
            body: error.into_bytes(),
            answered: 0,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running webhook receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Request>>>,
    status: Answer,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How the receiver answers a request (method, path, headers and body read): its status.
type Answer = Arc<Mutex<Box<dyn Fn(&Request) -> u16 + Send>>>;

impl Receiver {
    /// On a free loopback port.
    pub fn start() -> Result<Receiver> {
        Self::start_on("127.0.0.1:0".parse().context("an address")?)
    }

    /// On `addr` (a port given back after [`Receiver::stop`]).
    pub fn start_on(addr: SocketAddr) -> Result<Receiver> {
        let received = Arc::default();
        let status: Answer = Arc::new(Mutex::new(Box::new(|_: &Request| 200)));
        let (addr, stop, thread) = serve(addr, Arc::clone(&received), Arc::clone(&status))?;
        Ok(Receiver {
            addr,
            received,
            status,
            stop,
            thread: Some(thread),
        })
    }

    /// Answers every later request with `status`.
    pub fn answer(&self, status: u16) {
        self.answer_with(move |_| status);
    }

    /// Answers every later request with what `f` says of it.
    pub fn answer_with(&self, f: impl Fn(&Request) -> u16 + Send + 'static) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Box::new(f);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the listener away: from now on connections to its address are refused.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the webhook receiver's thread");
        }
    }

    /// Listens again on the same address, keeping what it received.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let (_, stop, thread) = serve(self.addr, self.received.clone(), self.status.clone())?;
        self.stop = stop;
        self.thread = Some(thread);
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `addr` and keeps what it receives in `received` until its stop flag is set.
fn serve(
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Request>>>,
    status: Answer,
) -> Result<(SocketAddr, Arc<AtomicBool>, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    // Polled, so that stop is seen without a connection to wake the accept.
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (received, status, stop) = (received.clone(), status.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => match handle(conn, &status) {
                        Ok(r) => received
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(r),
                        // Kept as a request without a method, for the test to see.
                        Err(e) => received
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Request::failed(format!("{e:#}"))),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => received
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Request::failed(format!("accept: {e}"))),
                }
            }
        })
    };
    Ok((addr, stop, thread))
}

/// Reads one request and answers it with `status`, closing the connection.
fn handle(mut conn: TcpStream, answer: &Answer) -> Result<Request> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("the connection closed before a request");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_BODY {
            bail!("a request head over {MAX_BODY} bytes");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        bail!("a body of {length} bytes");
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("the connection closed inside the body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let mut request = Request {
        method,
        path,
        headers,
        body,
        answered: 0,
    };
    let status = (answer.lock().unwrap_or_else(PoisonError::into_inner))(&request);
    request.answered = status;
    let reason = if status < 300 { "OK" } else { "Not OK" };
    conn.write_all(
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    Ok(request)
}
