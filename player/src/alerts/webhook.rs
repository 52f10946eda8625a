//! Webhooks: each alert `POST`ed as JSON, signed with the shared secret.
//!
//! The body is the alert's JSON exactly as queued; `X-Jitrec-Timestamp` is the Unix time of
//! the attempt and `X-Jitrec-Signature` is `sha256=` and the hex HMAC-SHA256 of
//! `<timestamp>.<body>` ([`super::sign`]), so a receiver that checks the signature and the
//! timestamp's age knows the alert came from a holder of the secret, unchanged, recently.
//! Redirects are not followed (a redirect would carry a signed alert to wherever the receiver,
//! or whoever answers in its place, points); a request that does not complete within
//! [`REQUEST_TIMEOUT`] is retried.
//!
//! What an answer means ([`classify`]): 2xx delivered; 408 and 429 retried (after
//! `Retry-After`, bounded, when given); any other 4xx refused for good (the receiver says the
//! request itself is wrong: retrying the same bytes cannot help; logged as an ERROR, as the
//! alert is lost); everything else, and every connection failure, retried.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::AlertError;

/// The longest a request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The header carrying a webhook's signature: `sha256=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-Jitrec-Signature";
/// The header carrying the Unix time (seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "X-Jitrec-Timestamp";
/// The header carrying the alert's id (also in the body), for receivers that dedupe early.
pub const ID_HEADER: &str = "X-Jitrec-Alert-Id";

/// The signature of a webhook request: `sha256=` and the hex HMAC-SHA256, keyed with the
/// shared secret, of `<timestamp>.<body>` (the timestamp as sent in [`TIMESTAMP_HEADER`]).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a receiver does with a request: true when `signature` is the signature of `body` at
/// `timestamp` with `secret` (compared in constant time) and `timestamp` is within
/// `tolerance` of `now` (a captured request replayed later is refused).
pub fn verify_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: DateTime<Utc>,
    tolerance: Duration,
) -> bool {
    use hmac::{KeyInit, Mac};
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if now.timestamp().abs_diff(ts) > tolerance.as_secs() {
        return false;
    }
    let Some(given) = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// A webhook receiver.
#[derive(Clone)]
pub(crate) struct WebhookTarget {
    pub(crate) name: String,
    pub(crate) url: reqwest::Url,
    pub(crate) secret: Arc<[u8]>,
    pub(crate) client: reqwest::Client,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the URL (it may carry a token) nor the secret.
        f.debug_struct("WebhookTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The HTTP client of every webhook: no redirects, bounded times, rustls, and with `ca` only
/// that CA's certificates trusted.
pub(crate) fn client(ca: Option<&std::path::Path>) -> Result<reqwest::Client, AlertError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("jitrec-player/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| {
            AlertError::Config(format!("reading --webhook-ca {}: {e}", ca.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| AlertError::Config(format!("--webhook-ca {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(AlertError::Config(format!(
                "--webhook-ca {} holds no certificate",
                ca.display()
            )));
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| AlertError::Config(format!("the webhook client: {}", chain(&e))))
}

/// Whether the URL's host is a loopback address (or `localhost`).
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

impl WebhookTarget {
    /// Checks a `--webhook` URL: https, or http to loopback unless `allow_plain_http`.
    pub(crate) fn parse(
        url: &str,
        allow_plain_http: bool,
        secret: Arc<[u8]>,
        client: reqwest::Client,
    ) -> Result<Self, AlertError> {
        let bad = |why: &str| AlertError::Config(format!("--webhook: {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "https" => {}
            "http" if allow_plain_http || is_loopback(&parsed) => {}
            "http" => {
                return Err(bad(&format!(
                    "http:// to {} (not loopback) would send alerts unencrypted: use https://, \
                     or --webhook-allow-plain-http",
                    parsed.host_str().unwrap_or("?")
                )));
            }
            s => {
                return Err(bad(&format!(
                    "scheme {s}: use https:// (or http:// to loopback)"
                )));
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "credentials in the URL would be logged and sent on every redirect target; \
                 the signature authenticates the player",
            ));
        }
        // Named by scheme, host and port, and a digest of the whole URL (two paths on one
        // host are two targets; the path itself may be a token and is never logged).
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(url.as_bytes()));
        let name = format!(
            "webhook {}://{}:{} #{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port_or_known_default().unwrap_or(0),
            &digest[..8]
        );
        Ok(Self {
            name,
            url: parsed,
            secret,
            client,
        })
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    /// The receiver will never take it.
    Refused(String),
    /// Try again, after this if the receiver said.
    Retry(String, Option<Duration>),
}

/// What an HTTP status means for the alert (see the module's docs).
pub(crate) fn classify(status: u16, retry_after: Option<&str>) -> Outcome {
    let after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 => Outcome::Retry(format!("HTTP {status}"), after),
        400..=499 => Outcome::Refused(format!("HTTP {status}")),
        _ => Outcome::Retry(format!("HTTP {status}"), after),
    }
}

/// An error and its causes in one line, without the URL (it may carry a token): what kind
/// of failure, then the causes (hyper's and the system's, which do not name the URL).
fn chain(e: &reqwest::Error) -> String {
    let mut s = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_builder() {
        "could not build the client or request"
    } else if e.is_body() {
        "the body failed"
    } else if e.is_request() {
        "the request failed"
    } else {
        "failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// Sends one alert (its JSON `payload`, alert `id`).
pub(crate) fn send(
    t: &WebhookTarget,
    rt: &tokio::runtime::Handle,
    id: &str,
    payload: &str,
) -> Outcome {
    let ts = chrono::Utc::now().timestamp();
    let signature = super::sign(&t.secret, ts, payload.as_bytes());
    let request = t
        .client
        .post(t.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(super::TIMESTAMP_HEADER, ts.to_string())
        .header(super::SIGNATURE_HEADER, signature)
        .header(super::ID_HEADER, id)
        .body(payload.to_owned());
    rt.block_on(async move {
        match request.send().await {
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                classify(resp.status().as_u16(), retry_after.as_deref())
            }
            Err(e) => Outcome::Retry(chain(&e), None),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // The expected value computed independently, with OpenSSL:
        // `printf '12.what do ya want for nothing?' | openssl dgst -sha256 -hmac Jefe`.
        let sig = sign(b"Jefe", 12, b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=884f387af4fab053210fff358c2ae1ceb946a70c677f05c2b731ca65c7769498",
        );
    }

    #[test]
    fn a_changed_body_timestamp_or_secret_does_not_verify() {
        let secret = b"0123456789abcdef0123";
        let now = Utc::now();
        let ts = now.timestamp();
        let body = br#"{"id":"x","type":"session_start"}"#;
        let sig = sign(secret, ts, body);
        let tol = Duration::from_secs(300);
        assert!(verify_signature(
            secret,
            &ts.to_string(),
            body,
            &sig,
            now,
            tol
        ));
        let changed = br#"{"id":"y","type":"session_start"}"#;
        assert!(!verify_signature(
            secret,
            &ts.to_string(),
            changed,
            &sig,
            now,
            tol
        ));
        assert!(!verify_signature(
            secret,
            &(ts + 1).to_string(),
            body,
            &sig,
            now,
            tol
        ));
        assert!(!verify_signature(
            b"another secret!!",
            &ts.to_string(),
            body,
            &sig,
            now,
            tol
        ));
        // Replayed later than the tolerance: refused though the signature is right.
        let old = ts - 301;
        let sig_old = sign(secret, old, body);
        assert!(!verify_signature(
            secret,
            &old.to_string(),
            body,
            &sig_old,
            now,
            tol
        ));
        assert!(!verify_signature(secret, "soon", body, &sig, now, tol));
        assert!(!verify_signature(
            secret,
            &ts.to_string(),
            body,
            "sha256=zz",
            now,
            tol
        ));
        assert!(!verify_signature(
            secret,
            &ts.to_string(),
            body,
            &sig[7..],
            now,
            tol
        ));
    }

    fn target(url: &str, plain: bool) -> Result<WebhookTarget, AlertError> {
        WebhookTarget::parse(url, plain, Arc::from(&b"x"[..]), client(None).unwrap())
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(200, None), Outcome::Delivered);
        assert_eq!(classify(204, None), Outcome::Delivered);
        assert!(matches!(classify(400, None), Outcome::Refused(_)));
        assert!(matches!(classify(401, None), Outcome::Refused(_)));
        assert!(matches!(classify(404, None), Outcome::Refused(_)));
        assert_eq!(
            classify(429, Some("7")),
            Outcome::Retry("HTTP 429".into(), Some(Duration::from_secs(7)))
        );
        assert_eq!(
            classify(503, Some("999999")),
            Outcome::Retry("HTTP 503".into(), Some(MAX_RETRY_AFTER))
        );
        assert!(matches!(classify(408, None), Outcome::Retry(_, None)));
        assert!(matches!(classify(500, None), Outcome::Retry(_, None)));
        assert!(matches!(classify(302, None), Outcome::Retry(_, None)));
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        assert!(target("https://siem.example/hook", false).is_ok());
        assert!(target("http://127.0.0.1:8080/hook", false).is_ok());
        assert!(target("http://[::1]:8080/hook", false).is_ok());
        assert!(target("http://localhost/hook", false).is_ok());
        let e = target("http://siem.example/hook", false).unwrap_err();
        assert!(e.to_string().contains("unencrypted"), "{e}");
        assert!(target("http://siem.example/hook", true).is_ok());
        assert!(target("ftp://siem.example/hook", true).is_err());
        assert!(target("https://user:pw@siem.example/hook", false).is_err());
    }

    #[test]
    fn names_hide_the_path() {
        let t = target("https://siem.example/services/T0K3N", false).unwrap();
        assert!(!t.name.contains("T0K3N"), "{}", t.name);
        assert!(
            t.name.starts_with("webhook https://siem.example:443 #"),
            "{}",
            t.name
        );
        assert!(!format!("{t:?}").contains("T0K3N"));
        let other = target("https://siem.example/services/other", false).unwrap();
        assert_ne!(t.name, other.name);
    }
}
