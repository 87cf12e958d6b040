//! The control socket: how `s3sftp sessions`, `kick`, `bans` and `unban` talk to a running
//! server, like HAProxy's stats socket. A Unix socket (mode 0600) in the state directory;
//! one JSON request per connection, one JSON reply, each on one line. [`server`] answers
//! inside `serve`; [`client`] is the admin commands' side.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::activity::SessionView;

/// The socket's file name in the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line the server reads.
const MAX_REQUEST: u64 = 4096;

/// Where the server in `state_dir` listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// What an admin command asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// The logged-in connections.
    Sessions,
    /// End the connections of a user, or one by session id (all digits, unless `user`).
    Kick {
        target: String,
        /// `target` is a user name even if it is all digits.
        #[serde(default)]
        user: bool,
    },
    /// The sources banned now.
    Bans,
    /// Lift the ban on an address's source.
    Unban { address: String },
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Sessions {
        sessions: Vec<SessionView>,
    },
    /// The connections told to end, by session id, and their user.
    Kicked {
        user: String,
        sessions: Vec<u64>,
    },
    Bans {
        bans: Vec<BanView>,
    },
    /// `source` is the address's source (its /64 for IPv6); `was_banned` false if there
    /// was no ban to lift.
    Unbanned {
        source: String,
        was_banned: bool,
    },
    /// The request could not be done (no such user or session, a bad address).
    Error {
        message: String,
    },
}

/// A banned source as `s3sftp bans --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    /// An IPv4 address, or an IPv6 /64 as `prefix/64`.
    pub source: String,
    /// When the ban ends, RFC 3339 UTC.
    pub until: String,
    pub seconds_left: u64,
    /// Failed logins counted since the ban began.
    pub failures: u32,
    /// How many times the source has been banned.
    pub bans: u32,
}

/// How a source is shown: IPv4 as is, IPv6 as its /64.
fn source_text(source: std::net::IpAddr) -> String {
    match source {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object() {
        let r = Request::Kick {
            target: "alice".into(),
            user: false,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"command":"kick","target":"alice","user":false}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"kick","target":"alice"}"#).unwrap(),
            r
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"bans"}"#).unwrap(),
            Request::Bans
        );
    }
}
