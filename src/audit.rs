//! The audit and transfer log: one event for every upload, download, delete, rename,
//! mkdir, rmdir, setstat, login, failed login, logout and exec command, whichever front
//! end it came through. Events are ordinary `tracing` events at info level under the target
//! [`TARGET`], so `--log-format json` turns each into one JSON object per line, and a
//! filter such as `S3SFTP_LOG=warn,s3sftp::audit=info` keeps only them. The user, the peer
//! and the session id come from the connection's span (see [`crate::ssh`]); the field
//! names follow SFTPGo's transfer log (`file_path`, `size_bytes`, `elapsed_ms`, ...), so
//! parsers written for it adapt easily. docs/operations.md lists every event and field.

use std::time::Duration;

use crate::log_text::escaped;
use crate::metrics::Direction;
use crate::storage::StorageError;

/// The `target` of every audit event.
pub const TARGET: &str = "s3sftp::audit";

/// The front end an action came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Sftp,
    Scp,
    /// SSH itself: logins, logouts, exec commands.
    Ssh,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Sftp => "SFTP",
            Protocol::Scp => "SCP",
            Protocol::Ssh => "SSH",
        }
    }

    fn metric_label(self) -> &'static str {
        match self {
            Protocol::Sftp => "sftp",
            Protocol::Scp => "scp",
            Protocol::Ssh => "ssh",
        }
    }
}

/// A change a client makes that is not a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    Rename,
    Mkdir,
    Rmdir,
    Setstat,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Rename => "rename",
            Action::Mkdir => "mkdir",
            Action::Rmdir => "rmdir",
            Action::Setstat => "setstat",
        }
    }
}

/// The message and S3 request id of a failure, for the `error` and `s3_request_id` fields.
fn failure(err: &StorageError) -> (String, String) {
    let request_id = match err {
        StorageError::S3 { request_id, .. } => request_id.clone().unwrap_or_default(),
        _ => String::new(),
    };
    (err.to_string(), request_id)
}

/// What became of a transfer.
#[derive(Debug)]
pub enum TransferResult<'a> {
    Ok,
    /// It failed (or was refused) because of this storage error.
    Failed(&'a StorageError),
    /// It ended early for another reason (client gone, refused by the front end).
    Abandoned(&'a str),
}

/// A file transfer ended: the audit event, and the transfer metrics.
pub fn transfer(
    protocol: Protocol,
    direction: Direction,
    path: &str,
    bytes: u64,
    elapsed: Duration,
    result: TransferResult<'_>,
) {
    let ok = matches!(result, TransferResult::Ok);
    crate::metrics::transfer(protocol.metric_label(), direction, ok, bytes);
    let event = match direction {
        Direction::Upload => "upload",
        Direction::Download => "download",
    };
    let elapsed_ms = elapsed.as_millis() as u64;
    let speed = if elapsed.is_zero() {
        0
    } else {
        (bytes as f64 / elapsed.as_secs_f64()) as u64
    };
    let (error, request_id) = match result {
        TransferResult::Ok => (String::new(), String::new()),
        TransferResult::Failed(err) => failure(err),
        TransferResult::Abandoned(why) => (why.to_string(), String::new()),
    };
    tracing::info!(
        target: TARGET,
        event,
        protocol = protocol.as_str(),
        file_path = %escaped(path),
        size_bytes = bytes,
        elapsed_ms,
        speed_bytes_per_sec = speed,
        status = if ok { "ok" } else { "failed" },
        error = %error,
        s3_request_id = %request_id,
        "{event} {}", if ok { "completed" } else { "failed" }
    );
}

/// A change that is not a transfer ended with `result`; `target` is a rename's new path.
pub fn action(
    protocol: Protocol,
    action: Action,
    path: &str,
    target: Option<&str>,
    result: Result<(), &StorageError>,
) {
    let event = action.as_str();
    let (error, request_id) = match result {
        Ok(()) => (String::new(), String::new()),
        Err(err) => failure(err),
    };
    tracing::info!(
        target: TARGET,
        event,
        protocol = protocol.as_str(),
        file_path = %escaped(path),
        target_path = %escaped(target.unwrap_or("")),
        status = if result.is_ok() { "ok" } else { "failed" },
        error = %error,
        s3_request_id = %request_id,
        "{event} {}", if result.is_ok() { "done" } else { "failed" }
    );
}

/// A login succeeded (`Ok`) or was refused (`Err(reason)`).
pub fn login(username: &str, method: &str, result: Result<(), &str>) {
    let (event, status, reason) = match result {
        Ok(()) => ("login", "ok", ""),
        Err(reason) => ("login_failed", "failed", reason),
    };
    tracing::info!(
        target: TARGET,
        event,
        protocol = Protocol::Ssh.as_str(),
        username = %escaped(username),
        method = %escaped(method),
        status,
        error = reason,
        "{event}"
    );
}

/// A logged-in connection ended after `elapsed`.
pub fn logout(elapsed: Duration) {
    tracing::info!(
        target: TARGET,
        event = "logout",
        protocol = Protocol::Ssh.as_str(),
        elapsed_ms = elapsed.as_millis() as u64,
        "logout"
    );
}

/// An exec request: the command line, and whether it was run (`Err(reason)`: refused).
pub fn exec(command: &str, result: Result<(), &str>) {
    let (status, reason) = match result {
        Ok(()) => ("ok", ""),
        Err(reason) => ("failed", reason),
    };
    tracing::info!(
        target: TARGET,
        event = "exec",
        protocol = Protocol::Ssh.as_str(),
        command = %escaped(command),
        status,
        error = reason,
        "exec"
    );
}

/// An admin ended `username`'s connections `sessions` over the control socket.
pub fn admin_kick(username: &str, sessions: &[u64]) {
    let ids: Vec<String> = sessions.iter().map(u64::to_string).collect();
    tracing::info!(
        target: TARGET,
        event = "admin_kick",
        protocol = "control",
        username = %escaped(username),
        sessions = %ids.join(","),
        status = "ok",
        "admin_kick"
    );
}

/// An admin lifted the ban on `source` over the control socket (`was_banned` false: there
/// was none).
pub fn admin_unban(source: &str, was_banned: bool) {
    tracing::info!(
        target: TARGET,
        event = "admin_unban",
        protocol = "control",
        source = %source,
        was_banned,
        status = "ok",
        "admin_unban"
    );
}
