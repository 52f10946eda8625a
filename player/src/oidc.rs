//! Sign-in through an OpenID Connect provider (Entra ID, Okta, Keycloak, ...): the
//! authorization code flow with PKCE, as a confidential client.
//!
//! The provider is found by issuer discovery (on first use, and again until it answers, so a
//! player starts while its provider is away). `/oidc/start` makes a state, a nonce and a PKCE
//! verifier, keeps them here (bounded, ten minutes) under the state, binds the flow to the
//! browser with a short cookie holding the state, and sends the browser to the provider.
//! `/oidc/callback` takes them back only for the same state and cookie (so nobody can make a
//! reviewer's browser finish a flow someone else started), exchanges the code with the
//! verifier, and checks the ID token (signature against the provider's keys, issuer, audience,
//! expiry, nonce) with `openidconnect`. Only then is the configured claim read from it and
//! mapped to a role; no role, no sign-in. What the provider says is never trusted before the
//! token verifies.
//!
//! A user signed in this way gets an account named `oidc:<preferred_username | email | sub>`
//! (`:` is not allowed in a local account's name, so the two never meet), holding the role of
//! the last sign-in and no password; an administrator can disable or remove it like any other.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};

use crate::auth::Role;

/// How long the provider's metadata and keys are used before they are read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// How long a started sign-in may take at the provider.
pub const FLOW_TTL: Duration = Duration::from_secs(600);

/// Sign-ins started and not finished that are kept (the oldest goes first): anyone may start
/// one, so memory must not grow with them.
const MAX_PENDING: usize = 10_000;

/// The largest ID token read (they are a few KB; a provider answering more is refused).
const ID_TOKEN_MAX: usize = 64 * 1024;

/// How the player talks to its provider (`serve --oidc-*`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL (discovery reads `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where the provider sends the browser back: the player's public URL + `/oidc/callback`.
    pub redirect_url: String,
    /// The ID token claim whose values map to roles (`groups`, `roles`): a string or an array
    /// of strings.
    pub role_claim: String,
    /// Claim values that make a reviewer, and an admin (admin wins when both match).
    pub reviewer_values: Vec<String>,
    pub admin_values: Vec<String>,
    /// Extra scopes asked for beside `openid` (e.g. `profile`, or the provider's groups scope).
    pub scopes: Vec<String>,
}

/// Why an OIDC sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the OpenID provider could not be discovered: {0}")]
    Discovery(String),
    #[error("this sign-in was not started here, or took longer than {} min", FLOW_TTL.as_secs() / 60)]
    UnknownFlow,
    #[error("the provider refused the code: {0}")]
    Token(String),
    #[error("the ID token does not verify: {0}")]
    IdToken(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// Who the provider vouched for, once the ID token verified.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    /// The account name the player gives them (`oidc:...`).
    pub account: String,
    /// The values of the role claim.
    pub claim_values: Vec<String>,
    /// What they map to; `None`: no role, no sign-in.
    pub role: Option<Role>,
}

struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    started: Instant,
}

/// The player's side of OIDC sign-in.
pub struct Oidc {
    config: OidcConfig,
    http: openidconnect::reqwest::Client,
    /// The provider's metadata and keys, and when they were read.
    metadata: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        IssuerUrl::new(config.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer {:?}: {e}", config.issuer)))?;
        RedirectUrl::new(config.redirect_url.clone()).map_err(|e| {
            OidcError::Config(format!("redirect URL {:?}: {e}", config.redirect_url))
        })?;
        if config.reviewer_values.is_empty() && config.admin_values.is_empty() {
            return Err(OidcError::Config(
                "no claim value maps to a role: give --oidc-reviewer or --oidc-admin".into(),
            ));
        }
        let http = openidconnect::reqwest::Client::builder()
            // Following redirects would let a provider's answer send the player anywhere.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            config,
            http,
            metadata: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    fn redirect(&self) -> Result<RedirectUrl, OidcError> {
        RedirectUrl::new(self.config.redirect_url.clone())
            .map_err(|e| OidcError::Config(e.to_string()))
    }

    /// The provider's metadata and signing keys: discovered on first use, again after
    /// [`METADATA_TTL`], and again after an ID token failed to verify (a provider rolls its
    /// keys over; a player must not refuse everyone until it is restarted).
    async fn metadata(&self) -> Result<CoreProviderMetadata, OidcError> {
        let mut cached = self.metadata.lock().await;
        if let Some((at, m)) = cached.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| OidcError::Config(e.to_string()))?;
        let m = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        *cached = Some((Instant::now(), m.clone()));
        Ok(m)
    }

    /// Starts a sign-in: the provider's URL to send the browser to, and the state to bind to
    /// the browser.
    pub async fn start(&self) -> Result<(String, String), OidcError> {
        let client = CoreClient::from_provider_metadata(
            self.metadata().await?,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.config.client_secret.clone())),
        )
        .set_redirect_uri(self.redirect()?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &self.config.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.retain(|_, f| f.started.elapsed() < FLOW_TTL);
        if p.len() >= MAX_PENDING
            && let Some(oldest) = p
                .iter()
                .min_by_key(|(_, f)| f.started)
                .map(|(k, _)| k.clone())
        {
            p.remove(&oldest);
        }
        p.insert(
            state.secret().clone(),
            Pending {
                verifier,
                nonce,
                started: Instant::now(),
            },
        );
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Finishes the sign-in `state` (as the browser's cookie and the provider's redirect both
    /// said) with `code`: the verified identity and its role.
    pub async fn finish(&self, state: &str, code: &str) -> Result<Identity, OidcError> {
        let flow = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(state)
            .filter(|f| f.started.elapsed() < FLOW_TTL)
            .ok_or(OidcError::UnknownFlow)?;
        let client = CoreClient::from_provider_metadata(
            self.metadata().await?,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.config.client_secret.clone())),
        )
        .set_redirect_uri(self.redirect()?);
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Config(e.to_string()))?
            .set_pkce_verifier(flow.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Token(error_chain(&e)))?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the provider sent no ID token".into()))?;
        let claims = match id_token.claims(&client.id_token_verifier(), &flow.nonce) {
            Ok(c) => c,
            Err(e) => {
                // Perhaps signed with a key published after discovery: read the keys again
                // for the next sign-in (this token still does not count).
                *self.metadata.lock().await = None;
                return Err(OidcError::IdToken(e.to_string()));
            }
        };
        let subject = claims.subject().as_str().to_owned();
        let issuer = claims.issuer().as_str().to_owned();
        // The token verified: its payload may now be read for the claims openidconnect's core
        // types do not carry (the role claim is the provider's own).
        let payload = verified_payload(&id_token.to_string())?;
        let claim_values = claim_strings(payload.get(&self.config.role_claim));
        let role = map_role(&self.config, &claim_values);
        Ok(Identity {
            issuer,
            account: account_name(&payload, &subject),
            subject,
            claim_values,
            role,
        })
    }
}

/// The account a verified ID token signs in: `oidc:` and the `preferred_username`, else the
/// `email`, else the subject, whichever is a name `user add` would accept (1-64 of its
/// characters); else a digest of the subject, so two long or odd subjects never share an
/// account.
fn account_name(payload: &serde_json::Map<String, serde_json::Value>, subject: &str) -> String {
    let name = payload
        .get("preferred_username")
        .or_else(|| payload.get("email"))
        .and_then(serde_json::Value::as_str)
        .into_iter()
        .chain(std::iter::once(subject))
        .find(|n| crate::auth::valid_user_name(n))
        .map_or_else(
            || {
                use sha2::Digest as _;
                format!("sub-{}", &hex::encode(sha2::Sha256::digest(subject))[..32])
            },
            str::to_owned,
        );
    format!("oidc:{name}")
}

/// The role `values` of the role claim map to: admin wins over reviewer.
pub fn map_role(config: &OidcConfig, values: &[String]) -> Option<Role> {
    let has = |wanted: &[String]| values.iter().any(|v| wanted.contains(v));
    if has(&config.admin_values) {
        Some(Role::Admin)
    } else if has(&config.reviewer_values) {
        Some(Role::Reviewer)
    } else {
        None
    }
}

/// A claim's strings: one string, or the strings of an array (others are ignored).
fn claim_strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(serde_json::Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The JSON payload of a compact JWT whose signature was already checked.
fn verified_payload(jwt: &str) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
    if jwt.len() > ID_TOKEN_MAX {
        return Err(OidcError::IdToken(format!(
            "{} bytes, over the limit of {ID_TOKEN_MAX}",
            jwt.len()
        )));
    }
    let part = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| OidcError::IdToken("not a compact JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| OidcError::IdToken(format!("payload: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| OidcError::IdToken(format!("payload: {e}")))
}

/// An error and its sources, for messages that name the cause (a refused connection, a bad
/// certificate) and not only the outermost wrapper.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "http://127.0.0.1:1".into(),
            client_id: "jitrec".into(),
            client_secret: "s".into(),
            redirect_url: "http://127.0.0.1:2/oidc/callback".into(),
            role_claim: "groups".into(),
            reviewer_values: vec!["jit-reviewers".into()],
            admin_values: vec!["jit-admins".into()],
            scopes: vec![],
        }
    }

    #[test]
    fn roles_map_from_claim_values_and_admin_wins() {
        let c = config();
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(map_role(&c, &v(&["jit-reviewers"])), Some(Role::Reviewer));
        assert_eq!(
            map_role(&c, &v(&["jit-reviewers", "jit-admins"])),
            Some(Role::Admin)
        );
        assert_eq!(map_role(&c, &v(&["contractors"])), None);
        assert_eq!(map_role(&c, &[]), None);
        assert_eq!(
            claim_strings(Some(&serde_json::json!("jit-admins"))),
            v(&["jit-admins"])
        );
        assert_eq!(
            claim_strings(Some(&serde_json::json!(["a", 1, "b"]))),
            v(&["a", "b"])
        );
        assert!(claim_strings(Some(&serde_json::json!({"a": 1}))).is_empty());
    }

    #[test]
    fn account_names_are_bounded_and_never_shared_by_two_subjects() {
        let p = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert_eq!(
            account_name(&p(serde_json::json!({"preferred_username": "bob"})), "s1"),
            "oidc:bob"
        );
        assert_eq!(
            account_name(&p(serde_json::json!({"email": "a@b.example"})), "s1"),
            "oidc:a@b.example"
        );
        assert_eq!(
            account_name(
                &p(serde_json::json!({"preferred_username": "not valid!"})),
                "s-1"
            ),
            "oidc:s-1"
        );
        let long_a = format!("{}a", "x".repeat(300));
        let long_b = format!("{}b", "x".repeat(300));
        let (a, b) = (
            account_name(&p(serde_json::json!({})), &long_a),
            account_name(&p(serde_json::json!({})), &long_b),
        );
        assert_ne!(a, b);
        assert!(a.len() <= 69 && a.starts_with("oidc:sub-"), "{a}");
    }

    #[test]
    fn a_config_mapping_no_value_to_a_role_is_refused() {
        let mut c = config();
        c.reviewer_values.clear();
        c.admin_values.clear();
        assert!(matches!(Oidc::new(c), Err(OidcError::Config(_))));
    }

    #[tokio::test]
    async fn a_callback_for_a_flow_never_started_is_refused_before_any_request() {
        let o = Oidc::new(config()).unwrap();
        assert!(matches!(
            o.finish("forged-state", "code").await,
            Err(OidcError::UnknownFlow)
        ));
    }
}
