//! The changes admin commands make to a list of users: add, remove, keys, settings.
//!
//! Pure functions on `Vec<User>` / `User`, so they are easy to test and to run inside
//! [`super::update`], which checks the whole result with the loader's rules before writing.
//! They catch the mistakes that deserve a more direct message than a broken rule (an unknown
//! user, a user added twice, a key that is not there); everything else is left to validation.

use std::path::Path;

use chrono::{DateTime, FixedOffset};
use ipnet::IpNet;

use super::keys::{AuthorizedKey, KeyLineError};
use super::limits::check_max_sessions;
use super::permissions::{permission_path_problems, PermissionSet, Permissions};
use super::User;

/// Why an admin command's change does not apply; each message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No user has that name.
    #[error("there is no user {name:?}; `s3sftp users list` shows the users")]
    NoSuchUser {
        /// The name given.
        name: String,
    },

    /// `users add` of a name that is taken.
    #[error("user {name:?} already exists; change it with `s3sftp users set`, `passwd` or `key add`, or remove it first")]
    UserExists {
        /// The name given.
        name: String,
    },

    /// `users key rm` of a key the user does not have.
    #[error("user {name:?} has no key {which:?}; its keys are: {keys} (give a number from `s3sftp users show {name}` or a SHA256: fingerprint)")]
    NoSuchKey {
        /// The user.
        name: String,
        /// The index or fingerprint given.
        which: String,
        /// The user's keys, numbered, with fingerprints.
        keys: String,
    },

    /// `users key add` of a key the user has already.
    #[error("user {name:?} already has the key {fingerprint}")]
    KeyExists {
        /// The user.
        name: String,
        /// The key's fingerprint.
        fingerprint: String,
    },

    /// A key argument that is neither a valid key line nor a readable file of them.
    #[error("{what} {source}")]
    BadKey {
        /// Which argument or file line.
        what: String,
        /// Why the line was refused.
        #[source]
        source: KeyLineError,
    },

    /// A key file that cannot be read.
    #[error("cannot read key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// `--unset-permission` of a path the user has no entry for.
    #[error("user {name:?} has no permissions entry for {path:?}")]
    NoSuchPermission {
        /// The user.
        name: String,
        /// The path given.
        path: String,
    },
}

/// A user to add: the required parts; optional settings come as [`Settings`].
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The login name.
    pub username: String,
    /// The S3 key prefix that is the user's root directory.
    pub key_prefix: String,
    /// A password hash, or `None` for key-only login.
    pub password: Option<String>,
    /// Public keys.
    pub public_keys: Vec<AuthorizedKey>,
}

/// Optional per-user settings given on the command line (`users add`, `users set`); `None` or
/// empty leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A new key prefix.
    pub key_prefix: Option<String>,
    /// Restore the default permissions (`{"/": ["*"]}`) before applying the others.
    pub reset_permissions: bool,
    /// Path entries to set (replacing the entry for that path).
    pub permissions: Vec<(String, PermissionSet)>,
    /// Path entries to remove.
    pub unset_permissions: Vec<String>,
    /// A new `allowed_ips` list; `Some(vec![])` allows every address.
    pub allowed_ips: Option<Vec<IpNet>>,
    /// `Some(None)` removes the limit.
    pub max_sessions: Option<Option<u32>>,
    /// `Some(None)` removes the expiry date.
    pub expires_at: Option<Option<DateTime<FixedOffset>>>,
}

impl Settings {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.key_prefix.is_none()
            && !self.reset_permissions
            && self.permissions.is_empty()
            && self.unset_permissions.is_empty()
            && self.allowed_ips.is_none()
            && self.max_sessions.is_none()
            && self.expires_at.is_none()
    }

    /// Applies the settings to `user`.
    pub fn apply(&self, user: &mut User) -> Result<(), EditError> {
        if let Some(prefix) = &self.key_prefix {
            user.key_prefix = prefix.clone();
        }
        if self.reset_permissions {
            user.permissions = Permissions::default();
        }
        for path in &self.unset_permissions {
            if !user.permissions.remove(path) {
                return Err(EditError::NoSuchPermission {
                    name: user.username.clone(),
                    path: path.clone(),
                });
            }
        }
        for (path, set) in &self.permissions {
            user.permissions.set(path.clone(), *set);
        }
        if let Some(nets) = &self.allowed_ips {
            user.allowed_ips = nets.clone();
        }
        if let Some(max) = self.max_sessions {
            user.max_sessions = max;
        }
        if let Some(at) = self.expires_at {
            user.expires_at = at;
        }
        Ok(())
    }
}

/// The user called `name`.
pub fn find_mut<'a>(users: &'a mut [User], name: &str) -> Result<&'a mut User, EditError> {
    users
        .iter_mut()
        .find(|u| u.username == name)
        .ok_or_else(|| EditError::NoSuchUser {
            name: name.to_owned(),
        })
}

/// Appends a new user, enabled, with default permissions and then `settings` applied.
pub fn add_user(users: &mut Vec<User>, new: NewUser, settings: &Settings) -> Result<(), EditError> {
    if users.iter().any(|u| u.username == new.username) {
        return Err(EditError::UserExists { name: new.username });
    }
    let mut user = User {
        username: new.username,
        password: new.password,
        public_keys: Vec::new(),
        key_prefix: new.key_prefix,
        enabled: true,
        permissions: Permissions::default(),
        allowed_ips: Vec::new(),
        max_sessions: None,
        expires_at: None,
    };
    add_keys(&mut user, new.public_keys)?;
    settings.apply(&mut user)?;
    users.push(user);
    Ok(())
}

/// Removes the user called `name` and returns it.
pub fn remove_user(users: &mut Vec<User>, name: &str) -> Result<User, EditError> {
    let at = users
        .iter()
        .position(|u| u.username == name)
        .ok_or_else(|| EditError::NoSuchUser {
            name: name.to_owned(),
        })?;
    Ok(users.remove(at))
}

/// Adds keys to `user`; a key it has already (same key material) is an error.
pub fn add_keys(user: &mut User, keys: Vec<AuthorizedKey>) -> Result<(), EditError> {
    for key in keys {
        if user.public_keys.iter().any(|k| k.matches(key.key())) {
            return Err(EditError::KeyExists {
                name: user.username.clone(),
                fingerprint: key.fingerprint(),
            });
        }
        user.public_keys.push(key);
    }
    Ok(())
}

/// Removes the key `which` from `user`: a 1-based position as `users show` numbers them, or a
/// SHA-256 fingerprint with or without its `SHA256:` prefix. Returns the removed key.
pub fn remove_key(user: &mut User, which: &str) -> Result<AuthorizedKey, EditError> {
    let wanted = which.trim();
    let at = match wanted.parse::<usize>() {
        Ok(n) if (1..=user.public_keys.len()).contains(&n) => Some(n - 1),
        Ok(_) => None,
        Err(_) => {
            let bare = wanted.strip_prefix("SHA256:").unwrap_or(wanted);
            user.public_keys.iter().position(|k| {
                k.fingerprint()
                    .strip_prefix("SHA256:")
                    .is_some_and(|f| f == bare)
            })
        }
    };
    match at {
        Some(i) => Ok(user.public_keys.remove(i)),
        None => {
            let keys: Vec<String> = user
                .public_keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{} {}", i + 1, k.fingerprint()))
                .collect();
            Err(EditError::NoSuchKey {
                name: user.username.clone(),
                which: which.to_owned(),
                keys: if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                },
            })
        }
    }
}

/// Reads the keys a `--key` / `key add` argument gives: the argument itself if it is a public
/// key line, else the file it names, one key per line (blank lines and `#` comments skipped,
/// as in `authorized_keys` and `.pub` files).
pub fn parse_key_source(arg: &str) -> Result<Vec<AuthorizedKey>, EditError> {
    let line_error = match AuthorizedKey::parse(arg) {
        Ok(key) => return Ok(vec![key]),
        Err(e) => e,
    };
    let path = Path::new(arg);
    if !path.is_file() {
        return Err(EditError::BadKey {
            what: format!("{arg:?} is not an existing file, and as a public key line it"),
            source: line_error,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| EditError::KeyFile {
        path: arg.to_owned(),
        source,
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let key = AuthorizedKey::parse(trimmed).map_err(|source| EditError::BadKey {
            what: format!("{arg}:{} ", n + 1),
            source,
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(EditError::BadKey {
            what: format!("{arg} holds no key: its content"),
            source: KeyLineError::Empty,
        });
    }
    Ok(keys)
}

/// Parses a `--permission PATH=NAME,NAME` argument; `PATH=` grants nothing in that subtree.
pub fn parse_permission_arg(arg: &str) -> Result<(String, PermissionSet), String> {
    let Some((path, names)) = arg.rsplit_once('=') else {
        return Err(format!(
            "{arg:?} is not PATH=PERMISSIONS, e.g. /reports=list,download or /=*"
        ));
    };
    let problems = permission_path_problems(path);
    if let Some(first) = problems.into_iter().next() {
        return Err(first);
    }
    let names: Vec<&str> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    Ok((path.to_owned(), PermissionSet::parse(&names)?))
}

/// Parses a `--max-sessions` argument (at least 1).
pub fn parse_max_sessions_arg(arg: &str) -> Result<u32, String> {
    let n = arg
        .parse::<u32>()
        .map_err(|e| format!("{arg:?} is not a number of sessions ({e})"))?;
    check_max_sessions(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{Permission, UsersFile};

    const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW alice@laptop";
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMYXG1bbIOYA6M3cauIVEvQgyrqsg293LU4GF+O4TNdH bob@desk";

    fn new_user(name: &str) -> NewUser {
        NewUser {
            username: name.to_owned(),
            key_prefix: format!("users/{name}/"),
            password: None,
            public_keys: vec![AuthorizedKey::parse(ALICE).unwrap()],
        }
    }

    #[test]
    fn add_find_remove() {
        let mut users = Vec::new();
        add_user(&mut users, new_user("a"), &Settings::default()).unwrap();
        let err = add_user(&mut users, new_user("a"), &Settings::default()).unwrap_err();
        assert!(matches!(err, EditError::UserExists { .. }));
        assert!(find_mut(&mut users, "a").is_ok());
        assert!(matches!(
            find_mut(&mut users, "b"),
            Err(EditError::NoSuchUser { .. })
        ));
        assert_eq!(remove_user(&mut users, "a").unwrap().username, "a");
        assert!(users.is_empty());
        assert!(UsersFile::from_users(&users).is_ok());
    }

    #[test]
    fn keys_by_index_and_fingerprint() {
        let mut users = Vec::new();
        add_user(&mut users, new_user("a"), &Settings::default()).unwrap();
        let user = &mut users[0];
        let bob = AuthorizedKey::parse(BOB).unwrap();
        let again = AuthorizedKey::parse(ALICE).unwrap();
        assert!(matches!(
            add_keys(user, vec![again]),
            Err(EditError::KeyExists { .. })
        ));
        add_keys(user, vec![bob.clone()]).unwrap();
        let err = remove_key(user, "3").unwrap_err();
        assert!(err.to_string().contains("1 SHA256:"), "{err}");
        let fp = bob.fingerprint();
        let bare = fp.strip_prefix("SHA256:").unwrap();
        assert_eq!(remove_key(user, bare).unwrap().line(), BOB);
        assert_eq!(remove_key(user, "1").unwrap().line(), ALICE);
        assert!(user.public_keys.is_empty());
    }

    #[test]
    fn settings_apply() {
        let mut users = Vec::new();
        let settings = Settings {
            permissions: vec![parse_permission_arg("/in=upload,create_dirs").unwrap()],
            allowed_ips: Some(vec!["10.0.0.0/8".parse().unwrap()]),
            max_sessions: Some(Some(2)),
            ..Settings::default()
        };
        add_user(&mut users, new_user("a"), &settings).unwrap();
        let a = &mut users[0];
        let in_set = a.permissions_for("/in/x");
        assert!(in_set.contains(Permission::Upload) && !in_set.contains(Permission::List));
        assert_eq!(a.max_sessions, Some(2));
        let clear = Settings {
            reset_permissions: true,
            allowed_ips: Some(vec![]),
            max_sessions: Some(None),
            ..Settings::default()
        };
        clear.apply(a).unwrap();
        assert!(a.permissions.is_default() && a.allowed_ips.is_empty() && a.max_sessions.is_none());
        let unset = Settings {
            unset_permissions: vec!["/nope".to_owned()],
            ..Settings::default()
        };
        assert!(matches!(
            unset.apply(a),
            Err(EditError::NoSuchPermission { .. })
        ));
        assert!(Settings::default().is_empty());
    }

    #[test]
    fn permission_args() {
        let (path, set) = parse_permission_arg("/a=b=list, download").unwrap();
        assert_eq!(path, "/a=b");
        assert_eq!(set.to_string(), "list,download");
        assert_eq!(parse_permission_arg("/=*").unwrap().1, PermissionSet::ALL);
        assert_eq!(parse_permission_arg("/x=").unwrap().1, PermissionSet::NONE);
        assert!(parse_permission_arg("/x").is_err());
        assert!(parse_permission_arg("x=list").is_err());
        assert!(parse_permission_arg("/x=write")
            .unwrap_err()
            .contains("unknown permission"));
        assert_eq!(parse_max_sessions_arg("3"), Ok(3));
        assert!(parse_max_sessions_arg("0").is_err());
        assert!(parse_max_sessions_arg("-1").is_err());
    }

    #[test]
    fn key_sources() {
        assert_eq!(parse_key_source(ALICE).unwrap().len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, format!("# mine\n{ALICE}\n\n{BOB}\n")).unwrap();
        assert_eq!(parse_key_source(file.to_str().unwrap()).unwrap().len(), 2);
        std::fs::write(&file, format!("{ALICE}\nssh-ed25519 garbage\n")).unwrap();
        let err = parse_key_source(file.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains(":2 "), "{err}");
        let err = parse_key_source("/no/such/file.pub").unwrap_err();
        assert!(err.to_string().contains("not an existing file"), "{err}");
    }
}
