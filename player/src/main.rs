//! `jitrec-player`: command-line entry point. Parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use jitrec_bucket::S3Args;
use jitrec_bucket::{BucketAdmin, BucketReader, DirBucket, S3Bucket};
use jitrec_format::SessionId;
use jitrec_player::auth;
use jitrec_player::enroll::Policy;
use jitrec_player::export::{self, ExportOptions};
use jitrec_player::index::{self, Index};
use jitrec_player::indexer::{Indexer, IndexerConfig};
use jitrec_player::verify::{self, Verdict};

/// Indexes recorded JIT sessions in the bucket, serves them over HTTP, verifies and exports them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the recordings are.
#[derive(Args, Clone)]
struct BucketArgs {
    /// A bucket kept as a local directory (jitrec's embedded default store).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "s3_bucket",
        default_value = "/var/lib/jitrec/bucket"
    )]
    bucket_dir: PathBuf,
    /// Read an S3 bucket instead (the key needs s3:GetObject and s3:ListBucket).
    #[command(flatten)]
    s3: S3Args,
}

/// Where the index is.
#[derive(Args, Clone)]
struct IndexArgs {
    /// A SQLite file, or a postgresql://user:password@host:port/db URL.
    #[arg(
        long,
        value_name = "PATH|URL",
        default_value = "/var/lib/jitrec/index.sqlite3"
    )]
    index: String,
}

#[derive(Subcommand)]
enum Command {
    /// Index the bucket continuously and serve the HTTP API.
    Serve {
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        index: IndexArgs,
        /// Address to listen on. Serve plain HTTP only on loopback; put a TLS-terminating proxy in
        /// front for anything else.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Leave Secure off the sign-in cookie, for browsers reaching the player over plain HTTP
        /// on a loopback address (the demo; a browser keeps Secure cookies only from HTTPS and
        /// localhost). Refused unless --listen is a loopback address.
        #[arg(long)]
        plain_http_cookies: bool,
        /// A reverse proxy in front of the player (repeatable): sign-in throttling counts the
        /// client address it appends to X-Forwarded-For instead of the proxy's own, so that one
        /// client's failures do not hold up everyone behind it.
        #[arg(long, value_name = "IP")]
        trusted_proxy: Vec<std::net::IpAddr>,
        /// Seconds between index passes (a POST to /api/notify starts one at once).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// An unclosed session with nothing new for this many seconds is interrupted (for
        /// endpoints offline by design: silence is flagged long before, see
        /// --silent-after-slack).
        #[arg(long, default_value_t = 600)]
        stale_after: u64,
        /// Seconds added to three chunk lengths (the header's, bounded to 0.25-60 s): an open
        /// session with nothing new for that long is shown `silent` (docs/player.md). Covers
        /// the upload latency and the pass interval; at most 3600.
        #[arg(long, default_value_t = jitrec_player::silence::DEFAULT_SLACK.as_secs_f64())]
        silent_after_slack: f64,
        /// Seconds between two pages (1000 names, one LIST request) of the sweep that lists
        /// every session prefix from the start, so a session dated before discovery's window
        /// (an endpoint clock behind) is still found: within one round of
        /// (1 + machines + sessions/1000) pages (docs/player.md). 0: no sweep.
        #[arg(long, default_value_t = jitrec_player::indexer::DEFAULT_SWEEP_EVERY.as_secs_f64())]
        sweep_every: f64,
        /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9482): requests by
        /// route and status, sign-ins by outcome, index passes, lag and open sessions, the lead,
        /// the sweep, retention runs. Unauthenticated: bind it to loopback or a monitoring
        /// network only.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Run the retention job every this many seconds (0: never; run it with
        /// `jitrec-player retention run` instead).
        #[arg(long, default_value_t = 3600)]
        retention_every: u64,
        /// When a machine's signing key counts: `approve` (an administrator approves each
        /// machine's key) or `tofu` (the first key seen for a machine id is trusted, any other
        /// is flagged). See docs/player.md, "Enrolment".
        #[arg(long, value_enum, default_value_t = Policy::Approve)]
        enrolment: Policy,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        oidc: Box<OidcArgs>,
        #[command(flatten)]
        rules: RulesArgs,
        /// Separation of duties: the person who authorised an elevation, and the elevated user,
        /// cannot review its session (names from the session header; docs/review.md).
        #[arg(long)]
        review_separation: bool,
        /// Alerts to webhooks and syslog (docs/alerts.md).
        #[command(flatten)]
        alerts: Box<jitrec_player::alerts::AlertArgs>,
    },
    /// Machines and their signing keys: list, approve, revoke, replace (all audited).
    Machines {
        #[command(subcommand)]
        command: MachineCommand,
    },
    /// The player's witness record of what it read from the bucket.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
    /// Print the key this player signs evidence bundles with (created at first use): give its
    /// fingerprint to auditors, who pin it (`jitrec-verify --player-key FINGERPRINT`).
    BundleKey {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Write the player's records (accounts, audit log, retention, enrolment, witness record,
    /// bundle key: what `reindex` cannot rebuild) to a file, as JSON lines. It holds password
    /// hashes and the bundle signing key: keep it as secret as the database.
    Backup {
        #[command(flatten)]
        index: IndexArgs,
        /// The file to write (created 0600; refused if it exists).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Restore a backup into a new, empty database (records are never merged or overwritten);
    /// then `reindex` rebuilds the sessions from the bucket.
    Restore {
        #[command(flatten)]
        index: IndexArgs,
        /// A file `jitrec-player backup` wrote.
        backup: PathBuf,
    },
    /// Manage the report view's local accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Retention policies, legal holds and the deletion job.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Empty the index and rebuild it from the bucket.
    Reindex {
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        index: IndexArgs,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        rules: RulesArgs,
    },
    /// The filmstrip's picture of one segment (an init segment and a chunk, concatenated in
    /// FILE), as PNG on standard output. `serve` runs it as a confined child process: it is
    /// not meant to be run by hand.
    #[command(hide = true)]
    Thumbnail { input: PathBuf },
    /// Detection rules: list them, check a rule file, apply them again to indexed sessions.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Show sessions per status in the index.
    Status {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Verify sessions' hash chains, payload hashes and signatures. Exits 0 only if every
    /// session is intact and signed by its machine's approved key; 1 if any is broken (altered,
    /// re-chained, replaced after the player saw it); 3 if none is broken but some are unsigned
    /// (format v1), open, or signed by a key not approved for their machine. With --record, the
    /// index's witness and enrolment records are consulted and the sessions' status updated.
    Verify {
        #[command(flatten)]
        bucket: BucketArgs,
        /// Record the result in this index (SQLite path or PostgreSQL URL).
        #[arg(long, value_name = "PATH|URL")]
        record: Option<String>,
        /// Sessions to verify (default: every session in the bucket).
        sessions: Vec<SessionId>,
    },
    /// Export a session to MP4 (remuxed, not re-encoded).
    Export {
        #[command(flatten)]
        bucket: BucketArgs,
        session: SessionId,
        /// The MP4 to write; a screen-size change continues in NAME.part2.mp4, ...
        #[arg(short, long, value_name = "FILE", required_unless_present = "bundle")]
        output: Option<PathBuf>,
        /// Write an evidence bundle instead (a tar: the stored objects, MP4, events as JSON and
        /// WebVTT, the machine's key, enrolment and witness records, checksums, a README);
        /// `jitrec-verify FILE` checks it without the player. Give --index so it carries the
        /// player's records.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "events", "chapters"])]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        keys: KeyArgs,
        /// Also write the events as JSON.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// Also write WebVTT chapters from window titles (for the first part).
        #[arg(long, value_name = "FILE")]
        chapters: Option<PathBuf>,
        /// Export even if the session does not verify.
        #[arg(long)]
        allow_unverified: bool,
        /// The player's index (SQLite path or PostgreSQL URL): check the session against its
        /// witness record (bytes replaced after the player saw them refuse the export) and say
        /// whether its key is the machine's. Without it, the chain and signatures only.
        #[arg(long, value_name = "PATH|URL")]
        index: Option<String>,
        /// The rules whose flags the MP4's subtitle track shows when there is no --index (with
        /// it, the flags the index holds).
        #[command(flatten)]
        rules: RulesArgs,
    },
}

/// Sign-in through an OpenID Connect provider (docs/player.md, "Single sign-on").
#[derive(Args)]
struct OidcArgs {
    /// The provider's issuer URL (read by discovery at ISSUER/.well-known/openid-configuration).
    #[arg(long, value_name = "URL", requires_all = ["oidc_client_id", "oidc_redirect_url"])]
    oidc_issuer: Option<String>,
    /// The client id registered at the provider (a confidential web client).
    #[arg(long, value_name = "ID")]
    oidc_client_id: Option<String>,
    /// A file whose first line is the client secret; without it, JITREC_OIDC_CLIENT_SECRET.
    #[arg(long, value_name = "FILE")]
    oidc_client_secret_file: Option<PathBuf>,
    /// This player's callback as registered at the provider: its public URL + /oidc/callback.
    #[arg(long, value_name = "URL")]
    oidc_redirect_url: Option<String>,
    /// The ID token claim whose values give the role (a string or an array of strings).
    #[arg(long, value_name = "CLAIM", default_value = "groups")]
    oidc_role_claim: String,
    /// A claim value that makes a reviewer (repeatable).
    #[arg(long = "oidc-reviewer", value_name = "VALUE")]
    oidc_reviewer: Vec<String>,
    /// A claim value that makes an admin (repeatable; admin wins over reviewer).
    #[arg(long = "oidc-admin", value_name = "VALUE")]
    oidc_admin: Vec<String>,
    /// A scope asked for beside `openid` (repeatable).
    #[arg(long = "oidc-scope", value_name = "SCOPE", default_values_t = ["profile".to_owned()])]
    oidc_scope: Vec<String>,
    /// Refuse sign-in with local accounts: single sign-on only.
    #[arg(long, requires = "oidc_issuer")]
    no_local_accounts: bool,
}

impl OidcArgs {
    fn oidc(&self) -> Result<Option<Arc<jitrec_player::oidc::Oidc>>> {
        let Some(issuer) = &self.oidc_issuer else {
            return Ok(None);
        };
        let secret = match &self.oidc_client_secret_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the OIDC client secret from {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => std::env::var("JITREC_OIDC_CLIENT_SECRET").context(
                "the OIDC client secret: give --oidc-client-secret-file or JITREC_OIDC_CLIENT_SECRET",
            )?,
        };
        anyhow::ensure!(!secret.is_empty(), "the OIDC client secret is empty");
        let config = jitrec_player::oidc::OidcConfig {
            issuer: issuer.clone(),
            client_id: self.oidc_client_id.clone().unwrap_or_default(),
            client_secret: secret,
            redirect_url: self.oidc_redirect_url.clone().unwrap_or_default(),
            role_claim: self.oidc_role_claim.clone(),
            reviewer_values: self.oidc_reviewer.clone(),
            admin_values: self.oidc_admin.clone(),
            scopes: self.oidc_scope.clone(),
        };
        Ok(Some(Arc::new(jitrec_player::oidc::Oidc::new(config)?)))
    }
}

/// The player's age identities, for sessions whose endpoint encrypts payloads.
#[derive(Args)]
struct KeyArgs {
    /// An age identity file (`AGE-SECRET-KEY-1...` lines; several for rotated recipients).
    /// Needed to index, play and export encrypted sessions; never stored in the bucket or index.
    #[arg(long, value_name = "FILE")]
    age_identity: Option<PathBuf>,
}

impl KeyArgs {
    fn keyring(&self) -> Result<Option<Arc<jitrec_player::unseal::Keyring>>> {
        self.age_identity
            .as_deref()
            .map(|p| jitrec_player::unseal::Keyring::from_file(p).map(Arc::new))
            .transpose()
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum MachineCommand {
    /// Every machine key on record, pending ones first, with fingerprints.
    List {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Approve a pending key as its machine's key (compare the fingerprint with what
    /// `jitrec-recorder identity` prints on that machine first).
    Approve {
        machine: String,
        fingerprint: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Revoke a key (compromised): no session signed by it is verified any more.
    Revoke {
        machine: String,
        fingerprint: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Make another key the machine's key (reinstalled machine); the old key is retired and the
    /// sessions the player saw before now stay verified.
    Replace {
        machine: String,
        fingerprint: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        index: IndexArgs,
    },
}

#[derive(Subcommand)]
enum WitnessCommand {
    /// Print the head of the witness chain (entries and hash): record it outside the player.
    Head {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Re-hash the whole witness chain; exits 1 if it is broken. Pass --expect ENTRIES:HASH
    /// (an anchored head) to also check that the chain still contains that head.
    Check {
        #[arg(long, value_name = "ENTRIES:HASH")]
        expect: Option<String>,
        #[command(flatten)]
        index: IndexArgs,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account or replace its password and role (ends its sign-ins). The password is
    /// read from the first line of standard input, at least 12 characters.
    Add {
        name: String,
        /// `reviewer` (view, search, export) or `admin` (also users and the audit log).
        #[arg(long, default_value = "reviewer")]
        role: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// List accounts, roles and whether they are disabled.
    List {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Refuse the account's sign-in from now on; its sign-ins end at once (audited).
    Disable {
        name: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Let a disabled account sign in again (audited).
    Enable {
        name: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Remove the account; its sign-ins end at once, its audit records stay (audited).
    Remove {
        name: String,
        #[command(flatten)]
        index: IndexArgs,
    },
}

/// The operator's detection rules.
#[derive(clap::Args)]
struct RulesArgs {
    /// A rule file (TOML, docs/rules.md): rules added to the built-in ones, and built-ins
    /// disabled. Without it, the built-in rules alone.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
}

impl RulesArgs {
    fn load(&self) -> Result<Arc<jitrec_player::rules::RuleSet>> {
        Ok(Arc::new(
            jitrec_player::rules::RuleSet::load(self.rules.as_deref())
                .context("loading the detection rules")?,
        ))
    }
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Print every rule (built-in and the file's), whether it is enabled, and the set's version.
    List {
        #[command(flatten)]
        rules: RulesArgs,
    },
    /// Check a rule file and say what it changes; exits non-zero if it would be refused.
    Check { file: PathBuf },
    /// Evaluate the rules again over the events the index holds (all sessions, or those named)
    /// and replace their flags. Run it after changing the rules; `serve` uses the new rules
    /// for what it indexes from its next start.
    Apply {
        #[command(flatten)]
        index: IndexArgs,
        #[command(flatten)]
        rules: RulesArgs,
        /// Only this session (repeatable).
        #[arg(long = "session", value_name = "ID")]
        sessions: Vec<String>,
    },
}

fn rules(command: RulesCommand) -> Result<()> {
    match command {
        RulesCommand::List { rules } => {
            let set = rules.load()?;
            println!("rule set {}", set.version);
            for r in set.list() {
                println!(
                    "{:<34} {:<8} {:<7} {:<9} {}",
                    r.id,
                    r.severity.as_str(),
                    format!("{:?}", r.on).to_lowercase(),
                    if r.enabled { "enabled" } else { "disabled" },
                    r.sentence
                );
            }
            Ok(())
        }
        RulesCommand::Check { file } => {
            let set = jitrec_player::rules::RuleSet::load(Some(&file))
                .with_context(|| format!("{} is not a valid rule file", file.display()))?;
            let list = set.list();
            let own = list.iter().filter(|r| r.origin != "builtin").count();
            let off = list.iter().filter(|r| !r.enabled).count();
            println!(
                "{}: valid; rule set {}: {own} rules of its own, {off} built-in rules disabled, {} rules in force",
                file.display(),
                set.version,
                list.iter().filter(|r| r.enabled).count()
            );
            Ok(())
        }
        RulesCommand::Apply {
            index,
            rules,
            sessions,
        } => {
            let set = rules.load()?;
            let idx = open_index(&index.index)?;
            let ids = sessions
                .iter()
                .map(|s| {
                    s.parse::<jitrec_format::SessionId>()
                        .map_err(|e| anyhow::anyhow!("session id {s:?}: {e}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let report = jitrec_player::rules::apply(
                idx.as_ref(),
                &set,
                (!ids.is_empty()).then_some(ids.as_slice()),
            )
            .context("applying the rules")?;
            println!(
                "rule set {}: {} sessions evaluated, {} flags, {} sessions changed",
                set.version, report.sessions, report.flags, report.changed
            );
            Ok(())
        }
    }
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Set the policy of a level: how many days after a session ended it is deleted.
    Set {
        /// global, company, location or computer.
        #[arg(long)]
        level: String,
        /// The company, location or computer label it applies to (none for global).
        #[arg(long, default_value = "")]
        name: String,
        /// Days to keep sessions after they ended.
        #[arg(long, conflicts_with = "forever", required_unless_present = "forever")]
        keep_days: Option<u32>,
        /// Keep sessions forever.
        #[arg(long)]
        forever: bool,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Remove the policy of a level.
    Unset {
        #[arg(long)]
        level: String,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Show the policies and legal holds.
    List {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Put a session under legal hold: no deletion until released.
    Hold {
        session: SessionId,
        #[arg(long)]
        reason: String,
        /// Who sets it (recorded with the hold).
        #[arg(long)]
        by: String,
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Release a legal hold.
    Release {
        session: SessionId,
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Delete every expired session (bucket, then index), logging each deletion.
    Run {
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// At most this many objects deleted per second (0: no bound).
        #[arg(long, default_value_t = 0)]
        max_objects_per_sec: u32,
        /// Stop after this many sessions (0: all); the rest waits for the next run.
        #[arg(long, default_value_t = 0)]
        max_sessions: usize,
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Show the deletion log.
    Log {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Acknowledge a tampered, gapped or interrupted session (audited), so that its policy may
    /// expire it; until then retention keeps it whatever its policy says.
    Ack {
        session: SessionId,
        /// The status reviewed (tampered, gap or interrupted): refused if the session's is
        /// another now.
        #[arg(long)]
        status: String,
        /// Why it may go (kept with the acknowledgement and in the audit log).
        #[arg(long)]
        note: String,
        /// Who acknowledges it.
        #[arg(long)]
        by: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Sessions retention keeps for their trouble until acknowledged.
    Review {
        #[command(flatten)]
        index: IndexArgs,
    },
}

fn level(s: &str) -> Result<jitrec_player::retention::Level> {
    jitrec_player::retention::Level::parse(s)
        .with_context(|| format!("level {s:?}: use global, company, location or computer"))
}

fn retention(command: RetentionCommand, rt: &tokio::runtime::Runtime) -> Result<()> {
    use jitrec_player::retention as r;
    let spec = match &command {
        RetentionCommand::Set { index, .. }
        | RetentionCommand::Unset { index, .. }
        | RetentionCommand::List { index }
        | RetentionCommand::Hold { index, .. }
        | RetentionCommand::Release { index, .. }
        | RetentionCommand::Run { index, .. }
        | RetentionCommand::Log { index }
        | RetentionCommand::Ack { index, .. }
        | RetentionCommand::Review { index } => index.index.clone(),
    };
    let idx = open_index(&spec)?;
    r::init(idx.as_ref())?;
    match command {
        RetentionCommand::Set {
            level: l,
            name,
            keep_days,
            ..
        } => {
            let l = level(&l)?;
            r::set_policy(idx.as_ref(), l, &name, keep_days, "(command line)")?;
            println!("policy set");
        }
        RetentionCommand::Ack {
            session,
            status,
            note,
            by,
            ..
        } => {
            let reviewed = jitrec_player::scan::Status::parse(&status)
                .with_context(|| format!("status {status:?}: tampered, gap or interrupted"))?;
            auth::init(idx.as_ref())?;
            // On record before it takes effect.
            auth::audit(
                idx.as_ref(),
                &by,
                "retention_ack",
                &session.to_string(),
                &format!("{note} ({status})"),
            )?;
            let ack = r::acknowledge(idx.as_ref(), session, reviewed, &note, &by)?;
            println!(
                "{session} ({}) acknowledged by {by}: its policy may expire it now",
                ack.status.as_str()
            );
        }
        RetentionCommand::Review { .. } => {
            let waiting = r::awaiting_review(idx.as_ref(), 10_000)?;
            if waiting.is_empty() {
                println!("no session is kept for review");
            }
            for (id, status) in waiting {
                println!("{id}\t{}", status.as_str());
            }
        }
        RetentionCommand::Unset { level: l, name, .. } => {
            if !r::unset_policy(idx.as_ref(), level(&l)?, &name)? {
                anyhow::bail!("there is no {l} policy {name:?}");
            }
            println!("policy removed");
        }
        RetentionCommand::List { .. } => {
            let p = r::policies(idx.as_ref())?;
            if p.list().is_empty() {
                println!("no policies: nothing is ever deleted");
            }
            for p in p.list() {
                println!("{p} (set by {})", p.set_by);
            }
            for h in r::holds(idx.as_ref())? {
                println!(
                    "hold on {}: {} (set by {} at {})",
                    h.session, h.reason, h.set_by, h.set_at
                );
            }
        }
        RetentionCommand::Hold {
            session,
            reason,
            by,
            bucket,
            ..
        } => {
            let bucket = open_bucket(&bucket, rt)?;
            let enforced = r::hold(idx.as_ref(), bucket.as_ref(), session, &reason, &by)
                .with_context(|| {
                    format!(
                        "holding {session} (if the hold is listed now, it is recorded and the \
                         retention job keeps the session; run this again to hold its objects \
                         in the bucket)"
                    )
                })?;
            println!("{session} is under legal hold: {}", enforced.describe());
        }
        RetentionCommand::Release {
            session, bucket, ..
        } => {
            let bucket = open_bucket(&bucket, rt)?;
            let Some(enforced) = r::release(idx.as_ref(), bucket.as_ref(), session)? else {
                anyhow::bail!("{session} is not under legal hold");
            };
            println!(
                "hold on {session} released ({})",
                match enforced {
                    jitrec_bucket::HoldEnforcement::Bucket => "and its objects in the bucket",
                    jitrec_bucket::HoldEnforcement::RetentionJobOnly => "the bucket held none",
                }
            );
        }
        RetentionCommand::Run {
            dry_run,
            max_objects_per_sec,
            max_sessions,
            bucket,
            ..
        } => {
            let bucket = open_bucket(&bucket, rt)?;
            let opts = r::RunOptions {
                dry_run,
                max_objects_per_sec,
                max_sessions,
                ..r::RunOptions::default()
            };
            let report = r::run(idx.as_ref(), bucket.as_ref(), &opts, chrono::Utc::now())?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for p in &report.expired {
                println!(
                    "{verb} {} ({}; ended {}, expired {})",
                    p.session, p.policy, p.ended_at, p.expired_at
                );
            }
            println!(
                "{} sessions {verb}, {} objects; {} unfinished deletions resumed; kept: {} under legal hold, {} awaiting review (tampered, gap or interrupted: `retention review`), {} still recording, {} without a policy",
                report.expired.len(),
                report.objects_deleted,
                report.resumed,
                report.held,
                report.awaiting_review,
                report.recording,
                report.unresolved
            );
            for (s, e) in &report.failed {
                println!("FAILED {s}: {e} (retried by the next run)");
            }
            if !report.failed.is_empty() {
                std::process::exit(1);
            }
        }
        RetentionCommand::Log { .. } => {
            for d in r::deletion_log(idx.as_ref(), 1000)? {
                println!(
                    "{} {} {} by {} ({}), {} objects, started {}{}",
                    d.session,
                    d.state,
                    d.policy,
                    d.actor,
                    d.policy,
                    d.objects,
                    d.started_at,
                    d.finished_at
                        .map(|t| format!(", finished {t}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn open_bucket(b: &BucketArgs, rt: &tokio::runtime::Runtime) -> Result<Arc<dyn BucketAdmin>> {
    Ok(match b.s3.config()? {
        Some(c) => Arc::new(S3Bucket::new(c, rt.handle().clone())),
        None => {
            anyhow::ensure!(
                b.bucket_dir.is_dir(),
                "bucket directory {} does not exist",
                b.bucket_dir.display()
            );
            Arc::new(DirBucket::new(&b.bucket_dir))
        }
    })
}

fn open_index(spec: &str) -> Result<Arc<dyn Index>> {
    Ok(Arc::from(
        index::open(spec).with_context(|| format!("opening the index {spec}"))?,
    ))
}

pub(crate) fn main() -> Result<()> {
    // Everything this program creates (spool entries and folders, logs, the index, bucket
    // objects, exports) is private to its user: 0600 files, 0700 folders. The recording is
    // evidence about a person and must not be readable by other local users.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Command::Thumbnail { input } = &cli.command {
        // Confined before anything else runs: no runtime, no threads (docs/player.md).
        jitrec_player::thumbs::confine().context("confining the thumbnail process")?;
        let png = jitrec_player::thumbs::render(input).context("making the thumbnail")?;
        return std::io::Write::write_all(&mut std::io::stdout().lock(), &png)
            .context("writing the thumbnail");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve {
            bucket,
            index,
            listen,
            plain_http_cookies,
            trusted_proxy,
            interval,
            stale_after,
            silent_after_slack,
            sweep_every,
            metrics_listen,
            retention_every,
            enrolment,
            keys,
            oidc,
            rules,
            review_separation,
            alerts,
        } => {
            let no_local_accounts = oidc.no_local_accounts;
            let oidc = oidc.oidc()?;
            if plain_http_cookies && !listen.ip().is_loopback() {
                anyhow::bail!(
                    "--plain-http-cookies is for a loopback --listen address only ({listen} is not): \
                     reach the player over HTTPS (a TLS-terminating proxy) from other machines"
                );
            }
            let keyring = keys.keyring()?;
            let deleter = open_bucket(&bucket, &rt)?;
            let src: Arc<dyn BucketReader> = deleter.clone();
            let bucket_admin = deleter.clone();
            let idx = open_index(&index.index)?;
            jitrec_player::auth::init(idx.as_ref()).context("preparing the account tables")?;
            let rules = rules.load()?;
            tracing::info!(rules = %rules.version, "detection rules loaded");
            if jitrec_player::auth::users(idx.as_ref())?.is_empty() {
                tracing::warn!(
                    "no accounts yet: create one with `jitrec-player user add NAME --role admin`"
                );
            }
            let config = IndexerConfig {
                interval: Duration::from_secs_f64(interval.clamp(0.05, 3600.0)),
                stale_after: Duration::from_secs(stale_after),
                // NaN and negatives read as no slack, anything past an hour as an hour.
                silent_slack: Duration::from_secs_f64(if silent_after_slack.is_nan() {
                    0.0
                } else {
                    silent_after_slack.clamp(0.0, 3600.0)
                }),
                enrolment,
                keyring: keyring.clone(),
                // NaN, zero and negatives turn the sweep off; it is at least 10 ms a page.
                sweep_every: (sweep_every > 0.0)
                    .then(|| Duration::from_secs_f64(sweep_every.clamp(0.01, 86_400.0))),
                rules,
                ..IndexerConfig::default()
            };
            let indexer = Indexer::new(Arc::clone(&src), Arc::clone(&idx), config)
                .context("starting the indexer")?;
            let handle = indexer.handle();
            let thread = std::thread::Builder::new()
                .name("indexer".into())
                .spawn(move || indexer.run())
                .context("starting the indexer thread")?;
            // Alerts (webhooks, syslog): threads of their own, deriving from the index while
            // this player leads; none without a target.
            let alerter = alerts
                .start(Arc::clone(&idx), handle.clone(), rt.handle().clone())
                .context("starting the alerts")?;
            // The retention schedule: a plain thread (the job blocks on the bucket and index),
            // stopped through its channel.
            let (stop_retention, stopped) = std::sync::mpsc::channel::<()>();
            let supervisor = Arc::new(jitrec_player::retention::Supervisor::default());
            let retention_thread = (retention_every > 0)
                .then(|| {
                    let idx = Arc::clone(&idx);
                    let supervisor = Arc::clone(&supervisor);
                    let lead = handle.clone();
                    std::thread::Builder::new()
                        .name("retention".into())
                        .spawn(move || {
                            let every = Duration::from_secs(retention_every);
                            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                                stopped.recv_timeout(every)
                            {
                                // Of several players sharing the index, only the leader
                                // deletes (one at a time, as the deletion log expects).
                                if !lead.leads() {
                                    tracing::debug!("retention is the leading player's");
                                    continue;
                                }
                                let opts = jitrec_player::retention::RunOptions::default();
                                // Errors and panics alike are caught and kept in the
                                // supervisor's state (/api/status); the schedule goes on.
                                match supervisor.run_once(
                                    idx.as_ref(),
                                    deleter.as_ref(),
                                    &opts,
                                    chrono::Utc::now(),
                                ) {
                                    Ok(r) => tracing::info!(
                                        deleted = r.expired.len(),
                                        objects = r.objects_deleted,
                                        held = r.held,
                                        awaiting_review = r.awaiting_review,
                                        failed = r.failed.len(),
                                        "retention job ran"
                                    ),
                                    Err(e) => {
                                        tracing::error!(error = %e, "the retention job failed")
                                    }
                                }
                            }
                        })
                        .context("starting the retention thread")
                })
                .transpose()?;
            let metrics = Arc::new(jitrec_player::metrics::Metrics::default());
            if let Some(addr) = metrics_listen {
                let listener = rt
                    .block_on(tokio::net::TcpListener::bind(addr))
                    .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
                rt.spawn(jitrec_player::metrics::serve(
                    listener,
                    Arc::clone(&metrics),
                    handle.clone(),
                    (retention_every > 0).then(|| Arc::clone(&supervisor)),
                ));
            }
            let app = jitrec_player::web::app(
                jitrec_player::api::AppState {
                    index: idx,
                    src: Arc::clone(&src),
                    indexer: handle.clone(),
                    bucket_admin: Some(bucket_admin),
                    keyring,
                    retention: (retention_every > 0).then_some(supervisor),
                    review: jitrec_player::review::ReviewPolicy {
                        separation: review_separation,
                    },
                    // This very program, whose hidden `thumbnail` command is the decoder.
                    filmstrip: std::env::current_exe()
                        .inspect_err(|e| {
                            tracing::warn!(error = %e, "no filmstrip: this program's path is unknown")
                        })
                        .ok()
                        .map(|p| Arc::new(jitrec_player::thumbs::Filmstrip::new(p))),
                },
                jitrec_player::web::WebConfig {
                    plain_http_cookies,
                    trusted_proxies: trusted_proxy,
                    metrics,
                    oidc,
                    no_local_accounts,
                },
            );
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                tracing::info!(%listen, bucket = %src.describe(), "serving");
                // The peer's address is what sign-in throttling counts failures by.
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await
                    .context("serving HTTP")
            })?;
            handle.stop();
            drop(stop_retention);
            // Bounded: a delivery in flight stays queued and is sent at the next start.
            if let Some(a) = alerter {
                a.stop(Duration::from_secs(5));
            }
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the indexer thread panicked"))?;
            if let Some(t) = retention_thread {
                t.join()
                    .map_err(|_| anyhow::anyhow!("the retention thread panicked"))?;
            }
            Ok(())
        }
        Command::Reindex {
            bucket,
            index,
            keys,
            rules,
        } => {
            let src = open_bucket(&bucket, &rt)?;
            let idx = open_index(&index.index)?;
            let config = IndexerConfig {
                keyring: keys.keyring()?,
                rules: rules.load()?,
                ..IndexerConfig::default()
            };
            let mut indexer = Indexer::new(src, Arc::clone(&idx), config)?;
            let report = indexer.reindex().context("reindexing")?;
            println!("{} sessions read again", report.sessions);
            for (id, e) in &report.failed {
                println!("  {id}: not read completely ({e}); kept as far as it was read");
            }
            for id in &report.missing {
                println!("  {id}: no longer in the bucket; marked tampered");
            }
            print_counts(idx.as_ref())?;
            if !report.failed.is_empty() {
                anyhow::bail!(
                    "{} sessions could not be read completely (see above); run reindex again once \
                     the cause is fixed",
                    report.failed.len()
                );
            }
            Ok(())
        }
        Command::Status { index } => print_counts(open_index(&index.index)?.as_ref()),
        Command::Machines { command } => machines(command),
        Command::Witness { command } => witness(command),
        Command::BundleKey { index } => {
            let idx = open_index(&index.index)?;
            let key = jitrec_player::bundle::player_key(idx.as_ref())?.public();
            println!("fingerprint: {}", key.fingerprint());
            print!("{}", jitrec_format::bundle::key_to_pem(&key));
            Ok(())
        }
        Command::Retention { command } => retention(command, &rt),
        Command::Rules { command } => rules(command),
        Command::Thumbnail { .. } => Ok(()), // made above, before the runtime
        Command::Backup { index, output } => {
            let idx = open_index(&index.index)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&output)
                .with_context(|| format!("creating {}", output.display()))?;
            let copied = jitrec_player::record::backup(idx.as_ref(), &mut file)
                .with_context(|| format!("writing {}", output.display()))?;
            file.sync_all()
                .with_context(|| format!("writing {}", output.display()))?;
            println!(
                "wrote {}: {} rows of {} record tables",
                output.display(),
                copied.rows,
                copied.tables
            );
            Ok(())
        }
        Command::Restore { index, backup } => {
            let idx = open_index(&index.index)?;
            let file = std::fs::File::open(&backup)
                .with_context(|| format!("opening {}", backup.display()))?;
            let copied =
                jitrec_player::record::restore(idx.as_ref(), std::io::BufReader::new(file))
                    .with_context(|| format!("restoring {}", backup.display()))?;
            auth::audit(
                idx.as_ref(),
                "(command line)",
                "restore",
                &backup.display().to_string(),
                &format!("{} rows", copied.rows),
            )?;
            println!(
                "restored {} rows from {}; run `jitrec-player reindex` to rebuild the sessions from the bucket",
                copied.rows,
                backup.display()
            );
            Ok(())
        }
        Command::User { command } => {
            let spec = match &command {
                UserCommand::Add { index, .. }
                | UserCommand::List { index }
                | UserCommand::Disable { index, .. }
                | UserCommand::Enable { index, .. }
                | UserCommand::Remove { index, .. } => index.index.clone(),
            };
            let idx = open_index(&spec)?;
            jitrec_player::auth::init(idx.as_ref())?;
            match command {
                UserCommand::Add { name, role, .. } => {
                    let role = jitrec_player::auth::Role::parse(&role)
                        .with_context(|| format!("role {role:?}: use reviewer or admin"))?;
                    let mut password = String::new();
                    std::io::stdin()
                        .read_line(&mut password)
                        .context("reading the password from standard input")?;
                    let password = password.trim_end_matches(['\r', '\n']);
                    jitrec_player::auth::add_user(idx.as_ref(), &name, role, password)?;
                    jitrec_player::auth::audit(
                        idx.as_ref(),
                        "(command line)",
                        "user_add",
                        &name,
                        role.as_str(),
                    )?;
                    println!("account {name} ({}) saved", role.as_str());
                }
                UserCommand::List { .. } => {
                    for a in jitrec_player::auth::accounts(idx.as_ref())? {
                        let state = a
                            .disabled_at
                            .map_or_else(String::new, |t| format!("\tdisabled since {t}"));
                        println!("{}\t{}{state}", a.name, a.role.as_str());
                    }
                }
                UserCommand::Disable { name, .. } => {
                    account_change(idx.as_ref(), &name, "user_disable", auth::disable_user)?;
                    println!("account {name} disabled; its sign-ins have ended");
                }
                UserCommand::Enable { name, .. } => {
                    account_change(idx.as_ref(), &name, "user_enable", auth::enable_user)?;
                    println!("account {name} enabled");
                }
                UserCommand::Remove { name, .. } => {
                    account_change(idx.as_ref(), &name, "user_remove", auth::remove_user)?;
                    println!("account {name} removed; its sign-ins have ended");
                }
            }
            Ok(())
        }
        Command::Verify {
            bucket,
            record,
            sessions,
        } => {
            let src = open_bucket(&bucket, &rt)?;
            let idx = record.as_deref().map(open_index).transpose()?;
            let sessions = if sessions.is_empty() {
                verify::sessions(src.as_ref()).context("listing the bucket")?
            } else {
                let mut keys = Vec::new();
                for id in sessions {
                    // Every copy of the id is checked (a copy under another machine's prefix
                    // is then reported as not belonging there); none found: checked as a v1
                    // session, which reports its missing header.
                    let found = jitrec_player::locate::find_all(src.as_ref(), id)
                        .context("looking for the session in the bucket")?;
                    if found.is_empty() {
                        keys.push(id.into());
                    }
                    keys.extend(found);
                }
                keys
            };
            let (mut broken, mut unverified) = (0, 0);
            for s in &sessions {
                let report = match &idx {
                    Some(i) => verify::verify_and_record(src.as_ref(), i.as_ref(), s.id)?,
                    None => verify::verify_session(src.as_ref(), *s)?,
                };
                println!("{report}");
                broken += usize::from(report.verdict == Verdict::Broken);
                unverified +=
                    usize::from(report.verdict != Verdict::Broken && !report.is_verified());
            }
            println!(
                "{} sessions checked: {} verified, {broken} broken, {unverified} intact or open but not vouched for",
                sessions.len(),
                sessions.len() - broken - unverified
            );
            if broken > 0 {
                std::process::exit(1);
            }
            if unverified > 0 {
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Export {
            bucket,
            session,
            output,
            events,
            chapters,
            allow_unverified,
            index,
            bundle,
            keys,
            rules,
        } => {
            let src = open_bucket(&bucket, &rt)?;
            let witness = index.as_deref().map(open_index).transpose()?;
            let at = match &witness {
                // Where the player found it first, when its index knows.
                Some(i) => jitrec_player::locate::lookup(i.as_ref(), session)?,
                None => None,
            };
            let at = match at {
                Some(at) => at,
                None => {
                    let found = jitrec_player::locate::find_all(src.as_ref(), session)
                        .context("looking for the session in the bucket")?;
                    match found.as_slice() {
                        [] => anyhow::bail!("session {session} is not in the bucket"),
                        [one] => *one,
                        many => anyhow::bail!(
                            "session {session} is under several prefixes ({}): a copy was planted; give the player's index (--index) to export the one it found first",
                            many.iter()
                                .map(|k| k.prefix())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
            };
            let opts = ExportOptions {
                allow_unverified,
                witness,
                keyring: keys.keyring()?,
                rules: Some(rules.load()?),
            };
            if let Some(path) = bundle {
                let b = jitrec_player::bundle::bundle(src.as_ref(), at, &path, &opts)?;
                println!("{}", b.export.report);
                println!(
                    "wrote {}: {} files, {} bytes; check it with `jitrec-verify {}`",
                    path.display(),
                    b.files,
                    b.bytes,
                    path.display()
                );
                return Ok(());
            }
            let output = output.context("--output (or --bundle) is required")?;
            let mut done = export::export(src.as_ref(), at, &output, &opts)?;
            println!("{}", done.report);
            if !done.report.is_verified() {
                // Named so that a copy passed on without this report cannot pass for verified.
                for p in &mut done.parts {
                    let marked = export::unverified_path(&p.path);
                    std::fs::rename(&p.path, &marked).with_context(|| {
                        format!("renaming {} to {}", p.path.display(), marked.display())
                    })?;
                    p.path = marked;
                }
                println!(
                    "not verified{}: the file names say UNVERIFIED",
                    if opts.witness.is_none() {
                        " (no --index: the player cannot say whether the key is the machine's)"
                    } else {
                        ""
                    }
                );
            }
            for p in &done.parts {
                println!(
                    "wrote {}: {}x{}, {} frames, {:.3} s, from session time {:.3} s; subtitles: {} cues",
                    p.path.display(),
                    p.width,
                    p.height,
                    p.frames,
                    p.duration_us as f64 / 1e6,
                    p.starts_at_us as f64 / 1e6,
                    p.cues
                );
            }
            if let Some(path) = events {
                export::write_events_json(&done.events, &path)?;
                println!("wrote {} ({} events)", path.display(), done.events.len());
            }
            if let (Some(path), Some(first)) = (chapters, done.parts.first()) {
                let vtt = export::webvtt_chapters(
                    &done.events,
                    first.starts_at_us,
                    first.starts_at_us + first.duration_us,
                );
                std::fs::write(&path, vtt)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// An account change from the command line: audited first (a change is made only once it is
/// on record), then made; an unknown account is an error.
fn account_change(
    idx: &dyn Index,
    name: &str,
    action: &str,
    change: fn(&dyn Index, &str) -> Result<bool, auth::AuthError>,
) -> Result<()> {
    if !auth::accounts(idx)?.iter().any(|a| a.name == name) {
        anyhow::bail!("there is no account {name:?} (see `jitrec-player user list`)");
    }
    auth::audit(idx, "(command line)", action, name, "")?;
    change(idx, name)?;
    Ok(())
}

fn print_counts(idx: &dyn Index) -> Result<()> {
    let counts = idx.counts()?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    println!("index ({}): {total} sessions", idx.backend());
    for (s, n) in counts {
        println!("  {s:<12} {n}");
    }
    Ok(())
}

fn machines(command: MachineCommand) -> Result<()> {
    use jitrec_player::enroll;
    let spec = match &command {
        MachineCommand::List { index }
        | MachineCommand::Approve { index, .. }
        | MachineCommand::Revoke { index, .. }
        | MachineCommand::Replace { index, .. } => index.index.clone(),
    };
    let idx = open_index(&spec)?;
    let idx = idx.as_ref();
    jitrec_player::auth::init(idx)?;
    let actor = "(command line)";
    match command {
        MachineCommand::List { .. } => {
            for k in enroll::list(idx)? {
                println!(
                    "{}\t{}\t{:?}\t{}\tfirst seen {} in session {}{}",
                    k.machine_id,
                    k.hostname,
                    k.state,
                    k.fingerprint,
                    k.first_seen,
                    k.first_session,
                    if k.decided_by.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "\t{} by {}: {}",
                            k.decided_at.map(|t| t.to_string()).unwrap_or_default(),
                            k.decided_by,
                            k.reason
                        )
                    }
                );
            }
        }
        MachineCommand::Approve {
            machine,
            fingerprint,
            reason,
            ..
        } => {
            enroll::approve(idx, &machine, &fingerprint, actor, &reason)?;
            println!("machine {machine}: key {fingerprint} approved");
        }
        MachineCommand::Revoke {
            machine,
            fingerprint,
            reason,
            ..
        } => {
            enroll::revoke(idx, &machine, &fingerprint, actor, &reason)?;
            println!("machine {machine}: key {fingerprint} revoked");
        }
        MachineCommand::Replace {
            machine,
            fingerprint,
            reason,
            ..
        } => {
            enroll::replace(idx, &machine, &fingerprint, actor, &reason)?;
            println!("machine {machine}: key {fingerprint} is now its key");
        }
    }
    Ok(())
}

fn witness(command: WitnessCommand) -> Result<()> {
    use jitrec_player::witness;
    match command {
        WitnessCommand::Head { index } => {
            let idx = open_index(&index.index)?;
            let h = witness::head(idx.as_ref())?;
            println!("{}:{}", h.entries, h.hash);
        }
        WitnessCommand::Check { expect, index } => {
            let idx = open_index(&index.index)?;
            let h = match witness::check(idx.as_ref()) {
                Ok(h) => h,
                Err(e) => {
                    println!("witness record BROKEN: {e}");
                    std::process::exit(1);
                }
            };
            if let Some(expect) = expect {
                let (n, hash) = expect
                    .split_once(':')
                    .and_then(|(n, h)| Some((n.parse::<i64>().ok()?, h.to_owned())))
                    .context("--expect takes ENTRIES:HASH, as `witness head` prints it")?;
                let found = witness::entry_hash_at(idx.as_ref(), n)?;
                if found.as_deref() != Some(hash.as_str()) {
                    println!(
                        "witness record REWRITTEN: entry {n} hashes to {}, the anchored head says {hash}",
                        found.as_deref().unwrap_or("(no such entry)")
                    );
                    std::process::exit(1);
                }
            }
            println!("witness record intact: {}:{}", h.entries, h.hash);
        }
    }
    Ok(())
}
