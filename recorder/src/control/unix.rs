//! The control socket on Unix: a Unix socket that only root, the recorder's own user and
//! members of the configured control group may use. Peers are identified by the kernel
//! (SO_PEERCRED), whatever the socket file's mode; a refused peer is logged, since an attempt to
//! stop a recording is a security event. The requests are [`super::respond`]'s.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use jitrec_format::StopPeer;

use super::{MAX_REQUEST, Request, Response, Shared, answer, exchange, reply, respond};
use crate::accounts;
use crate::trigger::JitEvent;

/// How long a peer may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may use the socket besides root and the recorder's own user.
#[derive(Debug, Clone)]
pub struct Access {
    pub group: Option<String>,
    pub group_file: PathBuf,
    pub passwd_file: PathBuf,
}

impl Access {
    fn allows(&self, uid: u32, gid: u32) -> bool {
        if uid == 0 || uid == rustix::process::geteuid().as_raw() {
            return true;
        }
        let Some(group) = &self.group else {
            return false;
        };
        let Some((group_gid, members)) = accounts::lookup_group(&self.group_file, group) else {
            return false;
        };
        gid == group_gid
            || accounts::user_name(&self.passwd_file, uid).is_some_and(|n| members.contains(&n))
    }

    /// The gid of the control group, for the socket file's group.
    pub fn gid(&self) -> Option<u32> {
        accounts::lookup_group(&self.group_file, self.group.as_deref()?).map(|(g, _)| g)
    }
}

/// Binds the socket: removes a stale one, creates the directory, sets mode and group.
pub fn bind(path: &Path, mode: u32, group_gid: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group_gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// Serves the socket forever (run it on its own thread).
pub fn serve(listener: UnixListener, jit: Sender<JitEvent>, shared: Arc<Shared>, access: Access) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let (jit, shared, access) = (jit.clone(), Arc::clone(&shared), access.clone());
                std::thread::spawn(move || handle(stream, &jit, &shared, &access));
            }
            Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
        }
    }
}

fn handle(mut stream: UnixStream, jit: &Sender<JitEvent>, shared: &Shared, access: &Access) {
    let cred = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot identify a control socket peer; refused");
            return;
        }
    };
    let (uid, gid, pid) = (
        cred.uid.as_raw(),
        cred.gid.as_raw(),
        cred.pid.as_raw_nonzero(),
    );
    // Read the request before answering, even a refusal: a client whose request is cut off
    // sees a broken pipe instead of the reason. Bounded in size and time.
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
    if !access.allows(uid, gid) {
        tracing::warn!(
            uid,
            gid,
            pid,
            "control socket request refused: peer not authorised"
        );
        reply(
            &mut stream,
            &answer(
                false,
                format!("permission denied: uid {uid} may not control jitrec-recorder"),
            ),
        );
        return;
    }
    let req: Request = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&line).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            reply(&mut stream, &answer(false, format!("bad request: {e}")));
            return;
        }
    };
    tracing::info!(uid, pid, request = ?req, "control request");
    let peer = peer_of(uid, u32::try_from(pid.get()).ok(), &access.passwd_file);
    let resp = respond(req, peer, jit, shared);
    reply(&mut stream, &resp);
}

/// The process behind a control connection, as evidence: its account, executable and the
/// account that logged in to its session (the audit login uid, unchanged by `sudo` and `su`, so
/// a recorded admin who runs `sudo jitrec-recorder jit stop` is still named).
pub fn peer_of(uid: u32, pid: Option<u32>, passwd_file: &Path) -> StopPeer {
    let user = |uid: u32| jitrec_format::UserRef {
        name: accounts::user_name(passwd_file, uid).unwrap_or_else(|| format!("uid {uid}")),
        id: uid.to_string(),
    };
    let proc_dir = pid.map(|p| PathBuf::from(format!("/proc/{p}")));
    let exe = proc_dir
        .as_ref()
        .and_then(|d| std::fs::read_link(d.join("exe")).ok())
        .map(|p| p.to_string_lossy().into_owned());
    // 4294967295 is "no login uid" (a daemon, or a kernel without audit).
    let login_user = proc_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("loginuid")).ok())
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|&l| l != u32::MAX)
        .map(user);
    StopPeer {
        user: user(uid),
        pid,
        exe,
        login_user,
    }
}

/// Sends one request and returns the answer (the `jitrec-recorder jit ...` client).
pub fn request(socket: &Path, req: &Request) -> std::io::Result<Response> {
    exchange(UnixStream::connect(socket)?, req)
}
