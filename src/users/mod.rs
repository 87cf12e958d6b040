//! The users file: who may log in, how they prove it, and which part of the bucket each one sees.
//!
//! The file is JSON (see `docs/users.md`):
//!
//! ```json
//! {"users": [{"username": "demo", "password": "$argon2id$...", "public_keys": ["ssh-ed25519 AAAA... c"],
//!             "key_prefix": "users/demo/", "enabled": true}]}
//! ```
//!
//! [`UsersFile::load`] reads it, checks every rule and reports every problem at once
//! ([`UsersError::Invalid`]); what it returns is known to be valid, so the SSH layer only looks
//! users up ([`UsersFile::get`]) and checks credentials ([`User::has_key`],
//! [`verify_password_or_dummy`]).
//!
//! Layout: `raw.rs` is the on-disk shape, `validate.rs` the rules, `password.rs` the password
//! hashes, `keys.rs` the public keys, `permissions.rs` and `limits.rs` the per-user
//! restrictions, `error.rs` the errors. Changing the file: `edit.rs` (the operations),
//! `serialize.rs` (the JSON written), `lock.rs` and `save.rs` (locked, atomic
//! read-modify-write), `sftpgo.rs` (import from an SFTPGo dump).

pub mod edit;
mod error;
mod keys;
mod limits;
mod lock;
mod password;
mod permissions;
mod raw;
pub mod remote;
mod save;
mod serialize;
pub mod sftpgo;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use chrono::{DateTime, FixedOffset};
use ipnet::IpNet;

pub use edit::{EditError, NewUser, Settings};
pub use error::{Problem, UsersError};
pub use keys::{AuthorizedKey, KeyLineError};
pub use limits::{check_max_sessions, parse_cidr, parse_expiry};
pub use lock::{lock_path, UsersLock, LOCK_TIMEOUT};
pub use password::{
    generate_password, hash_password, verify_password, verify_password_or_dummy, HashKind,
    HASH_PASSWORD_COMMAND,
};
pub use permissions::{permission_path_problems, Permission, PermissionSet, Permissions};
pub use save::{temp_path, update, write_atomic};
pub use validate::{MAX_KEY_PREFIX_LEN, MAX_USERNAME_LEN};

/// A parsed users file whose every rule holds, with an index by username.
///
/// It exists so the rest of the server never sees an unchecked user: the only ways to get one
/// are [`UsersFile::load`] and [`UsersFile::parse`].
#[derive(Debug, Clone)]
pub struct UsersFile {
    users: Vec<User>,
    /// Username → position in `users`; usernames are unique once validated.
    index: HashMap<String, usize>,
}

/// One account: how it logs in and the S3 key prefix that is its root directory.
///
/// Fields are public for reading; values come from a validated file, so they hold the rules in
/// `docs/users.md` (a valid username, a clean `/`-terminated prefix that overlaps no other user's,
/// a supported password hash if any, at least one way to log in, permissions with a `/` entry).
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The SSH login name: 1–64 ASCII letters, digits and `._-@`.
    pub username: String,
    /// A password hash (argon2 PHC string, bcrypt or sha512-crypt); `None` turns password
    /// login off. See [`HashKind`].
    pub password: Option<String>,
    /// Keys accepted for public-key login, in file order.
    pub public_keys: Vec<AuthorizedKey>,
    /// Where this user's root directory lives in the bucket, e.g. `users/demo/`; ends with `/`.
    pub key_prefix: String,
    /// A disabled user cannot log in by any method.
    pub enabled: bool,
    /// What the user may do where; see [`User::permissions_for`].
    pub permissions: Permissions,
    /// Networks the user may log in from; empty allows every address. See [`User::ip_allowed`].
    pub allowed_ips: Vec<IpNet>,
    /// At most this many sessions at once; `None` for no limit. Never `Some(0)`.
    pub max_sessions: Option<u32>,
    /// When the account stops working; see [`User::is_expired`].
    pub expires_at: Option<DateTime<FixedOffset>>,
}

impl User {
    /// Whether `key` is one of this user's public keys. Compares key material only, so the
    /// comment in the file and the (absent) comment of the key a client offers do not matter.
    /// Does not look at `enabled`: the caller checks that.
    pub fn has_key(&self, key: &russh::keys::PublicKey) -> bool {
        self.public_keys.iter().any(|k| k.matches(key))
    }

    /// What this user may do at the virtual path `path` (such as `/reports/q1.csv`): the
    /// permissions of the deepest configured path that is `path` or one of its parents.
    pub fn permissions_for(&self, path: &str) -> PermissionSet {
        self.permissions.permissions_for(path)
    }

    /// The kind of the stored password hash, for display (`None` without a password).
    pub fn password_kind(&self) -> Option<HashKind> {
        self.password.as_deref().and_then(HashKind::of)
    }
}

/// Leaves the password hash out, so logging a user does not log a hash to attack offline.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.public_keys.iter().map(AuthorizedKey::line).collect();
        f.debug_struct("User")
            .field("username", &self.username)
            .field("password", &self.password_kind().map(HashKind::name))
            .field("public_keys", &keys)
            .field("key_prefix", &self.key_prefix)
            .field("enabled", &self.enabled)
            .field("permissions", &self.permissions)
            .field("allowed_ips", &self.allowed_ips)
            .field("max_sessions", &self.max_sessions)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl UsersFile {
    /// Reads and validates the users file at `path`.
    ///
    /// Errors: [`UsersError::Read`] if it cannot be read, [`UsersError::Json`] if it is not
    /// JSON of the right top-level shape, [`UsersError::Invalid`] listing every broken rule.
    pub fn load(path: &Path) -> Result<UsersFile, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_from(&text, Some(path))
    }

    /// [`UsersFile::load`] for start-up and the admin commands: an empty file (nothing but
    /// whitespace, as `install -m 0600 /dev/null users.json` makes) holds no users.
    ///
    /// The live reload keeps [`UsersFile::load`], which refuses an empty file: there it is
    /// more likely an editor's write in progress than an admin removing every user at once
    /// (`{"users": []}` does that).
    pub fn load_empty_ok(path: &Path) -> Result<UsersFile, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(UsersFile::indexed(Vec::new()));
        }
        Self::parse_from(&text, Some(path))
    }

    /// Parses and validates users-file JSON held in memory; errors as for [`UsersFile::load`].
    pub fn parse(json: &str) -> Result<UsersFile, UsersError> {
        Self::parse_from(json, None)
    }

    fn parse_from(json: &str, path: Option<&Path>) -> Result<UsersFile, UsersError> {
        let raw: raw::RawFile = serde_json::from_str(json).map_err(|source| UsersError::Json {
            path: path.map(Path::to_owned),
            source,
        })?;
        let users = validate::validate(raw.users).map_err(|problems| UsersError::Invalid {
            path: path.map(Path::to_owned),
            problems,
        })?;
        Ok(UsersFile::indexed(users))
    }

    fn indexed(users: Vec<User>) -> UsersFile {
        let index = users
            .iter()
            .enumerate()
            .map(|(i, user)| (user.username.clone(), i))
            .collect();
        UsersFile { users, index }
    }

    /// Checks `users` with exactly the rules of [`UsersFile::load`], by writing them out as the
    /// file would be and parsing that text back. Returns the file and its text.
    ///
    /// Errors: [`UsersError::Invalid`] (without a path) listing every problem.
    pub fn from_users(users: &[User]) -> Result<(UsersFile, String), UsersError> {
        let text = serialize::to_json(users);
        let file = UsersFile::parse(&text)?;
        Ok((file, text))
    }

    /// The users file as JSON, in the form the admin commands write it.
    pub fn to_json(&self) -> String {
        serialize::to_json(&self.users)
    }

    /// The users, for editing; check the result with [`UsersFile::from_users`].
    pub fn into_users(self) -> Vec<User> {
        self.users
    }

    /// The user called `username`, if any (enabled or not). Exact, case-sensitive match.
    pub fn get(&self, username: &str) -> Option<&User> {
        self.index.get(username).and_then(|&i| self.users.get(i))
    }

    /// All users, in file order.
    pub fn users(&self) -> &[User] {
        &self.users
    }
}
