//! Debian's Chromium, headless, driven over WebDriver by Debian's `chromedriver` (packages
//! `chromium` and `chromium-driver`, which `scripts/test.sh` installs).
//!
//! WebDriver is JSON over HTTP, so this speaks it with the tests' own small HTTP client instead
//! of a client library. Test logic lives in small scripts run in the page
//! ([`Browser::eval`]); the driver types, clicks and takes screenshots. Each browser has a fresh
//! profile and its own driver on a free port, stopped when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::http;

/// The browser binary itself (the `/usr/bin/chromium` wrapper prints noise and reads config).
pub const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// Generous: a cold Chromium start on a loaded 2-core machine takes seconds.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running headless Chromium with one WebDriver session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a window of `width`x`height`.
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver (apt-get install chromium-driver)")?;
        let profile = tempfile::tempdir()?;
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = http::get(addr, "/status")
                && r.json().is_ok_and(|j| j["value"]["ready"] == true)
            {
                break;
            }
            if started.elapsed() > START_LIMIT {
                bail!("chromedriver not ready after {START_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}
        });
        let v = b.call("POST", "/session", &caps)?;
        b.session = v["sessionId"]
            .as_str()
            .context("no sessionId in the new-session answer")?
            .to_owned();
        Ok(b)
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let bytes = serde_json::to_vec(body)?;
        let r = http::request(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            if method == "GET" { &[] } else { &bytes },
        )?;
        let j = r.json()?;
        if r.status != 200 {
            bail!("WebDriver {method} {path}: {} {}", r.status, j["value"]);
        }
        Ok(j["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Loads `url` and waits for the document to load.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", &json!({ "url": url }))?;
        Ok(())
    }

    /// The page's current URL.
    pub fn url(&self) -> Result<String> {
        Ok(self
            .session_call("GET", "/url", &json!({}))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns what it returns.
    pub fn eval(&self, script: &str, args: Value) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            &json!({ "script": script, "args": args }),
        )
    }

    /// Runs an async function body (`await` allowed) and returns its result.
    pub fn eval_async(&self, script: &str) -> Result<Value> {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1];\
             (async () => {{ {script} }})().then(done, (e) => done({{__error: String(e)}}));"
        );
        let v = self.session_call(
            "POST",
            "/execute/async",
            &json!({ "script": wrapped, "args": [] }),
        )?;
        if let Some(e) = v.get("__error") {
            bail!("script failed: {e}");
        }
        Ok(v)
    }

    /// Polls `expr` (a JavaScript expression) until it is truthy; returns its value.
    pub fn wait_for(&self, expr: &str, limit: Duration, what: &str) -> Result<Value> {
        let started = Instant::now();
        let script = format!("try {{ return ({expr}); }} catch (e) {{ return null; }}");
        loop {
            let v = self.eval(&script, json!([]))?;
            let truthy =
                !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return Ok(v);
            }
            if started.elapsed() > limit {
                bail!("timed out after {limit:?} waiting for {what} ({expr})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The WebDriver id of the first element matching `css`.
    pub fn find(&self, css: &str) -> Result<String> {
        let v = self.session_call(
            "POST",
            "/element",
            &json!({ "using": "css selector", "value": css }),
        )?;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no element {css}"))
    }

    /// Clicks the element as a user would (the driver scrolls it into view first).
    pub fn click(&self, element: &str) -> Result<()> {
        self.session_call("POST", &format!("/element/{element}/click"), &json!({}))?;
        Ok(())
    }

    /// Types `text` into the element.
    pub fn type_into(&self, element: &str, text: &str) -> Result<()> {
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            &json!({ "text": text }),
        )?;
        Ok(())
    }

    /// Saves a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let v = self.session_call("GET", "/screenshot", &json!({}))?;
        let b64 = v.as_str().context("screenshot is not a string")?;
        let png = decode_base64(b64)?;
        std::fs::File::create(path)?.write_all(&png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), &json!({}));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (WebDriver screenshots), without a dependency for one use.
fn decode_base64(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("invalid base64 byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(super::decode_base64("aGk=").unwrap(), b"hi");
    }
}
