//! A real OpenID provider on 127.0.0.1 for the sign-in tests: the npm package `oidc-provider`
//! (OpenID-certified), run by Debian's Node.js from `tests/oidc/` (its `node_modules` is
//! installed by `scripts/test.sh` with `npm ci`, at set-up, so the tests need no network).
//! Its development login form accepts any password for the accounts it is given; each
//! account's `groups` claim is what the test gives it.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child::{Served, serve_http};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/oidc");

/// A running provider; stopped when dropped.
pub struct Provider {
    pub served: Served,
    pub issuer: String,
}

/// Starts the provider with one confidential client (`client_id`, `secret`, allowed to
/// return to `redirect_uri`) and `accounts` (name and groups).
pub fn start(
    client_id: &str,
    secret: &str,
    redirect_uri: &str,
    accounts: &[(&str, &[&str])],
) -> Provider {
    assert!(
        std::path::Path::new(DIR)
            .join("node_modules/oidc-provider")
            .is_dir(),
        "{DIR}/node_modules is missing: run `npm ci` there (scripts/test.sh does)"
    );
    let accounts: serde_json::Map<String, serde_json::Value> = accounts
        .iter()
        .map(|(name, groups)| ((*name).to_owned(), serde_json::json!(groups)))
        .collect();
    let accounts = serde_json::Value::Object(accounts).to_string();
    let served = serve_http(
        |addr| {
            let mut c = Command::new("node");
            c.arg("provider.mjs")
                .current_dir(DIR)
                .env("PORT", addr.port().to_string())
                .env("CLIENT_ID", client_id)
                .env("CLIENT_SECRET", secret)
                .env("REDIRECT_URI", redirect_uri)
                .env("ACCOUNTS", &accounts)
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            c
        },
        Duration::from_secs(60),
    );
    let issuer = format!("http://{}", served.addr);
    Provider { served, issuer }
}
