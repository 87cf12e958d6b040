//! Errors from loading the users file and from hashing passwords.

use std::fmt;
use std::path::{Path, PathBuf};

/// Everything that can go wrong loading a users file or hashing a password.
///
/// It exists so callers (the CLI, the SSH server, a later hot reload) can tell "cannot read the
/// file" from "not JSON" from "JSON that breaks the rules", and can print the last case as the
/// full list of problems, one per line, so an administrator fixes the file in one pass.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read (missing, permissions, not UTF-8, ...).
    #[error("cannot read users file {}: {source}", path.display())]
    Read {
        /// The path that was given.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The text is not JSON, or its top level is not `{"users": [ {...}, ... ]}`.
    ///
    /// serde stops at the first such error, so this one carries the line and column.
    #[error("users file{}: {source}", path_suffix(path.as_deref()))]
    Json {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// The parser's message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// The JSON has the right shape but breaks one or more rules; every problem found is listed.
    #[error("{}", invalid_message(path.as_deref(), problems))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// Every problem, in file order, then the problems between users.
        problems: Vec<Problem>,
    },

    /// A change was not written because the file would have broken these rules.
    #[error("{}", rejected_message(path, problems))]
    Rejected {
        /// The users file that was left as it was.
        path: PathBuf,
        /// What the changed file would have got wrong.
        problems: Vec<Problem>,
    },

    /// The lock file next to the users file could not be created or locked.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// Another command held the lock for too long.
    #[error("another `s3sftp users` command has been changing the users file for {}s (lock {}); try again, or find that process", timeout.as_secs(), path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        timeout: std::time::Duration,
    },

    /// Writing the new users file failed; the old one is unchanged.
    #[error("cannot write users file {}: {source}; the file is unchanged", path.display())]
    Write {
        /// The users file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// An admin command's change does not apply (unknown user, duplicate, ...).
    #[error(transparent)]
    Edit(#[from] super::EditError),

    /// An SFTPGo dump is not JSON of the expected shape.
    #[error("SFTPGo dump {}: {source}", path.display())]
    SftpgoDump {
        /// The dump file.
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// `hash_password` was given an empty password.
    #[error("refusing to hash an empty password")]
    EmptyPassword,

    /// The operating system's random number generator failed while making a salt.
    #[error("cannot get random bytes for a password salt: {0}")]
    Random(#[source] rand::rngs::SysError),

    /// argon2 refused the parameters or the input (should not happen with our fixed parameters).
    #[error("cannot hash password: {0}")]
    Hash(String),
}

/// One rule that one user entry breaks.
///
/// Kept structured rather than as a plain string so tests and tools can match on the user and
/// the field; `Display` gives the message an administrator reads, e.g.
/// `user "bob": key_prefix must end with "/" (got "users/bob")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based position of the entry in the `users` array; names entries with no usable username.
    pub entry: usize,
    /// The entry's username, when it has a non-empty one (even an invalid one).
    pub username: Option<String>,
    /// The field the problem is about (`username`, `password`, `public_keys`, `key_prefix`,
    /// `enabled`), or `entry` for a problem with the entry as a whole.
    pub field: &'static str,
    /// What is wrong and, where it helps, what to do; does not repeat the user.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.username {
            Some(name) => write!(f, "user {name:?}: {}", self.message),
            None => write!(f, "user #{}: {}", self.entry, self.message),
        }
    }
}

fn path_suffix(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

fn rejected_message(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "not changing users file {}: the result would break {}:",
        path.display(),
        match problems.len() {
            1 => "1 rule".to_owned(),
            n => format!("{n} rules"),
        }
    );
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

fn invalid_message(path: Option<&Path>, problems: &[Problem]) -> String {
    let count = match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let mut out = format!("users file{} has {count}:", path_suffix(path));
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}
