//! A real PostgreSQL for the tests: Debian's server binaries (`postgresql-15`, which
//! `scripts/test.sh` installs), a fresh cluster in a temporary directory, listening on 127.0.0.1
//! only, trust authentication for the test role.
//!
//! One server per test process (started on first use); each test gets its own database. As root
//! (CI) the server runs as the `postgres` system user, since PostgreSQL refuses to run as root.
//! A shell watchdog stops it when the test process exits, as for SeaweedFS.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Generous: initdb plus start-up take ~2 s here; CI machines are loaded.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// The role tests connect as.
pub const ROLE: &str = "jitrec";

/// A running PostgreSQL.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    _dir: tempfile::TempDir,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The shared server, started on first use.
pub fn server() -> &'static Postgres {
    SERVER.get_or_init(|| {
        // Its own thread: the synchronous client runs a runtime of its own, and callers are
        // often inside one.
        std::thread::spawn(start)
            .join()
            .expect("the PostgreSQL start-up thread panicked")
            .expect("start PostgreSQL (apt-get install postgresql-15)")
    })
}

impl Postgres {
    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }
}

/// Creates a fresh, empty database on the shared server; returns its URL.
pub fn new_database(prefix: &str) -> Result<String> {
    let srv = server();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let mut c = postgres::Client::connect(&srv.url("postgres"), postgres::NoTls)
        .context("connect to the test PostgreSQL")?;
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .with_context(|| format!("create database {name}"))?;
    Ok(srv.url(&name))
}

fn bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("{} (install postgresql-15)", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `cmd` as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_server_user(program: &Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Starts `postgres` on cluster `data` (as the server's user when we are root), listening on
/// 127.0.0.1:`port` with its socket in `dir`, with the `settings` (`name=value`), under a
/// shell watchdog that stops it when this process exits. Returns the path of its log.
fn spawn_watched(
    bin: &Path,
    data: &Path,
    dir: &Path,
    port: u16,
    settings: &[String],
) -> Result<PathBuf> {
    let log = dir.join("postgres.log");
    // The watchdog runs as the server's user, which may not signal us: it watches /proc.
    let script = r#"parent="$1"; p="$2"; shift 2; "$p" "$@" & pid=$!
        while [ -d "/proc/$parent" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
        kill -INT "$pid" 2>/dev/null; wait "$pid""#;
    let logf = std::fs::File::create(&log)?;
    let mut server = as_server_user(Path::new("sh"));
    server
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()));
    for setting in settings {
        server.arg("-c").arg(setting);
    }
    server
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    server.spawn().context("spawn postgres")?;
    Ok(log)
}

fn start() -> Result<Postgres> {
    let bin = bin_dir()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    if rustix::process::geteuid().is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?
            .success();
        if !ok {
            bail!("chown {} to postgres failed", dir.path().display());
        }
    }
    let out = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", ROLE, "--no-sync", "-E", "UTF8"])
        .output()
        .context("run initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port()?;
    let log = spawn_watched(
        &bin,
        &data,
        dir.path(),
        port,
        // Test data is disposable: skip the fsyncs.
        &[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ]
        .map(String::from),
    )?;
    let url = format!("postgresql://{ROLE}@127.0.0.1:{port}/postgres");
    let started = Instant::now();
    loop {
        if postgres::Client::connect(&url, postgres::NoTls).is_ok() {
            break;
        }
        if started.elapsed() > READY_LIMIT {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("PostgreSQL not ready after {READY_LIMIT:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Postgres { port, _dir: dir })
}

/// A second PostgreSQL that accepts only TLS with a password: a certificate for 127.0.0.1
/// signed by a test CA of its own (made with the `openssl` program), `hostssl` with
/// scram-sha-256 in `pg_hba.conf`, and every plain connection rejected.
#[derive(Debug)]
pub struct TlsPostgres {
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// The role's password.
    pub password: String,
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    /// The URL of database `postgres` with `sslmode` (no password in it).
    pub fn url(&self, sslmode: &str) -> String {
        format!(
            "postgresql://{ROLE}@127.0.0.1:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }
}

static TLS_SERVER: OnceLock<TlsPostgres> = OnceLock::new();

/// The TLS-only server, started on first use.
pub fn tls_server() -> &'static TlsPostgres {
    TLS_SERVER.get_or_init(|| {
        std::thread::spawn(start_tls)
            .join()
            .expect("the PostgreSQL start-up thread panicked")
            .expect("start PostgreSQL with TLS (apt-get install postgresql-15 openssl)")
    })
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

fn start_tls() -> Result<TlsPostgres> {
    let bin = bin_dir()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // A CA, and a server certificate for 127.0.0.1 it signs.
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
            "/CN=jitrec test CA",
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
    let password = format!("pw-{}", std::process::id());
    std::fs::write(d.join("pwfile"), format!("{password}\n"))?;
    let data = d.join("data");
    if rustix::process::geteuid().is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(d)
            .status()?
            .success();
        if !ok {
            bail!("chown {} to postgres failed", d.display());
        }
    }
    let out = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "scram-sha-256", "-U", ROLE, "--no-sync", "-E", "UTF8"])
        .arg(format!("--pwfile={}", d.join("pwfile").display()))
        .output()
        .context("run initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n",
    )?;
    for key in ["server.key", "ca.key"] {
        let p = d.join(key);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    if rustix::process::geteuid().is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(d)
            .status()?;
    }
    let port = free_port()?;
    let log = spawn_watched(
        &bin,
        &data,
        d,
        port,
        &[
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", d.join("server.pem").display()),
            format!("ssl_key_file={}", d.join("server.key").display()),
            "fsync=off".to_owned(),
            "synchronous_commit=off".to_owned(),
        ],
    )?;
    // Ready once it answers on its port (a plain connection is rejected by pg_hba, which is
    // an answer).
    let started = Instant::now();
    loop {
        match postgres::Client::connect(
            &format!("postgresql://{ROLE}:x@127.0.0.1:{port}/postgres?sslmode=disable"),
            postgres::NoTls,
        ) {
            Err(e) if e.as_db_error().is_some() => break,
            _ => {}
        }
        if started.elapsed() > READY_LIMIT {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("PostgreSQL (TLS) not ready after {READY_LIMIT:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(TlsPostgres {
        port,
        ca: d.join("ca.pem"),
        password,
        _dir: dir,
    })
}
