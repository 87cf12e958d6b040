//! The server side of the control socket: binds it in the state directory when that is
//! private, answers each request from the registry and the guard, logs every action, and
//! removes the socket at shutdown.

use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{socket_path, source_text, BanView, Reply, Request, MAX_REQUEST};
use crate::log_text::escaped;
use crate::ssh::Shared;

/// How long a client may take to send its request and read the reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running control socket.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops answering and removes the socket file.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "cannot remove the control socket: {e}");
            }
        }
    }
}

/// Starts the control socket in `state_dir`. Never fails the server: when the directory
/// is writable by others or not the server's own (anyone who can write there could put
/// their own socket in its place; the socket itself is 0600, so a directory others can
/// only read is fine, as systemd's `StateDirectory=` makes by default), or another server answers on the socket, or it cannot
/// be bound, it warns and returns `None` (the admin commands then cannot reach it).
pub fn start(state_dir: &Path, shared: Arc<Shared>) -> Option<ControlSocket> {
    let path = socket_path(state_dir);
    let dir_meta = match std::fs::metadata(state_dir) {
        Ok(meta) => meta,
        Err(e) => {
            tracing::warn!(dir = %state_dir.display(), "control socket not started: {e}");
            return None;
        }
    };
    let mode = dir_meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        tracing::warn!(
            dir = %state_dir.display(),
            mode = format!("{mode:o}"),
            "the state directory is writable by other users: control socket not started (admin commands cannot reach this server); fix with: chmod go-w {}",
            state_dir.display()
        );
        return None;
    }
    if !clear_stale(&path) {
        return None;
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot create the control socket: {e}");
            return None;
        }
    };
    // Nobody else can write to the directory, so nobody can swap the socket before this.
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), "cannot make the control socket private; removing it: {e}");
        let _ = std::fs::remove_file(&path);
        return None;
    }
    // The socket is ours: a directory owned by someone else could be changed under us.
    let ours = std::fs::metadata(&path).is_ok_and(|m| m.uid() == dir_meta.uid());
    if !ours {
        tracing::warn!(dir = %state_dir.display(), "the state directory belongs to another user: control socket not started");
        let _ = std::fs::remove_file(&path);
        return None;
    }
    tracing::info!(path = %path.display(), "control socket listening (s3sftp sessions, kick, bans, unban)");
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, shared, stop.clone()));
    Some(ControlSocket { path, stop, task })
}

/// Makes way for the socket: removes a socket file left by a server that is gone. False
/// (with a warning) if a server still answers there, or the path is not a socket.
fn clear_stale(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return true;
    };
    if !meta.file_type().is_socket() {
        tracing::warn!(path = %path.display(), "control socket not started: the path exists and is not a socket");
        return false;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        tracing::warn!(path = %path.display(), "control socket not started: another server answers on it (same state directory?)");
        return false;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "replaced a stale control socket");
            true
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "control socket not started: cannot remove the stale socket: {e}");
            false
        }
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &shared))
                .await
                .is_err()
            {
                tracing::debug!("control socket: client too slow; dropped");
            }
        });
    }
}

/// Reads one request line, answers it on one line.
async fn answer(stream: UnixStream, shared: &Shared) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let reply = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(request) => handle(request, shared),
            Err(e) => Reply::Error {
                message: format!("bad request: {e}"),
            },
        },
        Err(e) => Reply::Error {
            message: format!("cannot read the request: {e}"),
        },
    };
    let Ok(mut out) = serde_json::to_vec(&reply) else {
        return;
    };
    out.push(b'\n');
    let _ = write.write_all(&out).await;
    let _ = write.shutdown().await;
}

/// Does what `request` asks; logs it.
pub fn handle(request: Request, shared: &Shared) -> Reply {
    match request {
        Request::Sessions => {
            let sessions = shared.registry.sessions();
            tracing::debug!(count = sessions.len(), "control: sessions listed");
            Reply::Sessions { sessions }
        }
        Request::Kick { target, user } => kick(&target, user, shared),
        Request::Bans => {
            let bans: Vec<BanView> = shared
                .guard
                .bans()
                .into_iter()
                .map(|b| BanView {
                    source: source_text(b.source),
                    until: b.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    seconds_left: b.seconds_left,
                    failures: b.failures,
                    bans: b.bans,
                })
                .collect();
            tracing::debug!(count = bans.len(), "control: bans listed");
            Reply::Bans { bans }
        }
        Request::Unban { address } => unban(&address, shared),
    }
}

fn kick(target: &str, as_user: bool, shared: &Shared) -> Reply {
    let by_session = !as_user && !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit());
    let (user, sessions) = if by_session {
        let Ok(id) = target.parse::<u64>() else {
            return error(format!("no session {target}"));
        };
        match shared.registry.admin_kick_session(id) {
            Some(user) => (user, vec![id]),
            None => return error(format!("no logged-in session {id}")),
        }
    } else {
        let ids = shared.registry.admin_kick_user(target);
        if ids.is_empty() {
            return error(format!("user {} has no session", escaped(target)));
        }
        (target.to_string(), ids)
    };
    let ids: Vec<String> = sessions.iter().map(u64::to_string).collect();
    tracing::info!(user = %escaped(&user), sessions = %ids.join(","), "control: kicked");
    crate::audit::admin_kick(&user, &sessions);
    Reply::Kicked { user, sessions }
}

fn unban(address: &str, shared: &Shared) -> Reply {
    let Ok(ip) = address.trim().parse::<IpAddr>() else {
        return error(format!("{} is not an IP address", escaped(address)));
    };
    let (source, was_banned) = shared.guard.unban(ip);
    let source = source_text(source);
    tracing::info!(address = %ip, source = %source, was_banned, "control: unbanned");
    crate::audit::admin_unban(&source, was_banned);
    Reply::Unbanned { source, was_banned }
}

fn error(message: String) -> Reply {
    tracing::info!("control: refused: {message}");
    Reply::Error { message }
}
