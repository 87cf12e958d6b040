//! The admin commands' side of the control socket: `s3sftp sessions`, `kick`, `bans` and
//! `unban` send one request to the server in the state directory and print its reply:
//! a table by default, JSON with `--json`. Standard output carries only what was asked
//! for; confirmations go to standard error.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::{socket_path, BanView, Reply, Request};
use crate::activity::SessionView;
use crate::cli::{BansArgs, KickArgs, SessionsArgs, UnbanArgs};
use crate::log_text::escaped;
use crate::units::show_size;

/// How long the command waits for the server.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why an admin command could not be done; printed once by `main`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the server's control socket {}: {source} (is `s3sftp serve` running with this --state-dir? its log says whether the control socket started)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server's reply is not understood: {0}")]
    BadReply(String),
    /// The server refused the request (no such user or session, a bad address).
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the server whose state directory is `state_dir`; its reply.
pub fn request(state_dir: &Path, request: &Request) -> Result<Reply, ControlError> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path).map_err(|source| ControlError::Connect {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| ControlError::BadReply(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    let reply: Reply = serde_json::from_str(reply.trim_end())
        .map_err(|e| ControlError::BadReply(e.to_string()))?;
    match reply {
        Reply::Error { message } => Err(ControlError::Refused(message)),
        reply => Ok(reply),
    }
}

fn unexpected(reply: &Reply) -> ControlError {
    ControlError::BadReply(format!("unexpected reply {reply:?}"))
}

/// `s3sftp sessions`.
pub fn sessions(args: &SessionsArgs) -> Result<ExitCode, ControlError> {
    let reply = request(&args.control.state_dir, &Request::Sessions)?;
    let Reply::Sessions { sessions } = reply else {
        return Err(unexpected(&reply));
    };
    let text = if args.json {
        json(&sessions)?
    } else {
        sessions_table(&sessions)
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `s3sftp bans`.
pub fn bans(args: &BansArgs) -> Result<ExitCode, ControlError> {
    let reply = request(&args.control.state_dir, &Request::Bans)?;
    let Reply::Bans { bans } = reply else {
        return Err(unexpected(&reply));
    };
    let text = if args.json {
        json(&bans)?
    } else {
        bans_table(&bans)
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `s3sftp kick USER|SESSION`.
pub fn kick(args: &KickArgs) -> Result<ExitCode, ControlError> {
    let reply = request(
        &args.control.state_dir,
        &Request::Kick {
            target: args.target.clone(),
            user: args.user,
        },
    )?;
    let Reply::Kicked { user, sessions } = reply else {
        return Err(unexpected(&reply));
    };
    let ids: Vec<String> = sessions.iter().map(u64::to_string).collect();
    eprintln!(
        "disconnecting {} session(s) of {}: {}",
        sessions.len(),
        escaped(&user),
        ids.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `s3sftp unban ADDR`.
pub fn unban(args: &UnbanArgs) -> Result<ExitCode, ControlError> {
    let reply = request(
        &args.control.state_dir,
        &Request::Unban {
            address: args.address.clone(),
        },
    )?;
    let Reply::Unbanned { source, was_banned } = reply else {
        return Err(unexpected(&reply));
    };
    if was_banned {
        eprintln!("ban on {source} lifted");
    } else {
        eprintln!("{source} was not banned (its failed logins are forgotten)");
    }
    Ok(ExitCode::SUCCESS)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, ControlError> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| ControlError::BadReply(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// One row per session, then one indented line per open file.
fn sessions_table(sessions: &[SessionView]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let mut rows = vec![[
        "SESSION".to_string(),
        "USER".into(),
        "PEER".into(),
        "SINCE".into(),
        "FILES".into(),
        "UP".into(),
        "DOWN".into(),
    ]];
    for s in sessions {
        rows.push([
            s.id.to_string(),
            escaped(&s.user).to_string(),
            s.peer.clone(),
            s.since.clone(),
            s.open_files.to_string(),
            show_size(s.bytes_up),
            show_size(s.bytes_down),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            continue;
        }
        for t in &sessions[n - 1].transfers {
            out.push_str(&format!(
                "    {:<8}  {}  {} since {}\n",
                t.direction,
                escaped(&t.path),
                show_size(t.bytes),
                t.since
            ));
        }
    }
    out
}

fn bans_table(bans: &[BanView]) -> String {
    if bans.is_empty() {
        return "no bans\n".into();
    }
    let width = bans
        .iter()
        .map(|b| b.source.len())
        .max()
        .unwrap_or(0)
        .max("SOURCE".len());
    let mut out = format!(
        "{:<width$}  UNTIL                 LEFT     FAILURES  BANS\n",
        "SOURCE"
    );
    for b in bans {
        out.push_str(&format!(
            "{:<width$}  {:<20}  {:<7}  {:<8}  {}\n",
            b.source,
            b.until,
            format!("{}s", b.seconds_left),
            b.failures,
            b.bans
        ));
    }
    out
}
