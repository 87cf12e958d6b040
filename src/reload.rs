//! Live reload of the users file: the server polls the file (and reloads at once on
//! SIGHUP), applies a valid new version to new logins, and ends the live sessions of
//! every user whose account was removed or changed. An invalid file is not applied: the
//! last good one stays, and every problem is logged.
//!
//! A users object in the bucket (`--users-file s3://...`) is polled with a conditional GET
//! every `--users-poll-secs` instead ([`watch_object`]): one 304 per poll while it is
//! unchanged.
//!
//! Polling (once a second, comparing modification time, size and inode) works the same
//! for editors, the admin CLI's rename-into-place, and config management tools, on every
//! filesystem, without a watcher dependency.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::ssh::Shared;
use crate::storage::intent::outside_user_prefix;
use crate::users::remote::{Polled, RemoteUsers};
use crate::users::{User, UsersFile};

/// How often the file is checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// True if a live session of `old` must end because the account is now `new`.
pub fn must_end_sessions(old: &User, new: Option<&User>) -> bool {
    let Some(new) = new else { return true };
    if !new.enabled {
        return true;
    }
    // Only a change of the session cap leaves running sessions alone.
    let mut same_cap = new.clone();
    same_cap.max_sessions = old.max_sessions;
    &same_cap != old
}

/// Reloads now: applies the file if it is valid, ends affected sessions. Returns
/// whether the file was applied.
pub fn reload_now(shared: &Shared, path: &Path) -> bool {
    let new = match UsersFile::load(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(file = %path.display(), "users file not reloaded, keeping the last good one: {e}");
            return false;
        }
    };
    apply(shared, new, &path.display().to_string())
}

/// The rule a new version must keep beyond the file's own: the system prefix (the
/// gateways' own objects) outside every user's prefix, as checked at start.
fn system_prefix_problem(shared: &Shared, new: &UsersFile) -> Option<String> {
    let system = &shared.storage.settings().system_prefix;
    new.users()
        .iter()
        .find(|u| !outside_user_prefix(system, &u.key_prefix))
        .map(|u| {
            format!(
                "the prefix {:?} of user {} overlaps the system prefix {system:?} (--system-prefix), where the gateways keep their own objects",
                u.key_prefix, u.username
            )
        })
}

/// Applies a valid new version `new` read from `source`: swaps it in and ends the sessions
/// of changed or removed accounts. Refused (logged, the last good version kept) when a
/// user's prefix overlaps the system prefix. Returns whether it was applied.
pub fn apply(shared: &Shared, new: UsersFile, source: &str) -> bool {
    if let Some(problem) = system_prefix_problem(shared, &new) {
        tracing::error!(file = %source, "users file not reloaded, keeping the last good one: {problem}");
        return false;
    }
    let path = source;
    let old = shared.users();
    let mut ended = Vec::new();
    for user in old.users() {
        if must_end_sessions(user, new.get(&user.username)) {
            ended.push(user.username.clone());
        }
    }
    let count = new.users().len();
    shared.set_users(new);
    tracing::info!(file = %path, users = count, "users file reloaded");
    for name in ended {
        let sessions = shared.registry.kick(&name);
        if sessions > 0 {
            tracing::info!(user = %name, sessions, "account changed or removed: closing its sessions");
        }
    }
    true
}

/// Watches `path` until shutdown; `hup` is notified on SIGHUP for an immediate reload.
pub async fn watch(shared: Arc<Shared>, path: PathBuf, hup: Arc<Notify>) {
    let mut last = stamp(&path);
    loop {
        let forced = tokio::select! {
            _ = shared.draining.cancelled() => return,
            _ = hup.notified() => true,
            _ = tokio::time::sleep(POLL) => false,
        };
        let now = stamp(&path);
        if forced || now != last {
            if forced {
                tracing::info!(file = %path.display(), "SIGHUP: reloading the users file");
            }
            last = now;
            // Let a writer that is not atomic finish before reading.
            if !forced {
                tokio::time::sleep(Duration::from_millis(100)).await;
                last = stamp(&path);
            }
            reload_now(&shared, &path);
        }
    }
}

/// Watches the users object of `remote` until shutdown: a conditional GET every `every`
/// (and at once on SIGHUP, `hup`), applying each new valid version. `etag` is the version
/// loaded at start. A version that breaks a rule, a missing object or a failed request
/// keeps the last good users (logged).
pub async fn watch_object(
    shared: Arc<Shared>,
    remote: RemoteUsers,
    mut etag: Option<String>,
    every: Duration,
    hup: Arc<Notify>,
) {
    let source = remote.location().to_string();
    loop {
        let forced = tokio::select! {
            _ = shared.draining.cancelled() => return,
            _ = hup.notified() => true,
            _ = tokio::time::sleep(every) => false,
        };
        if forced {
            tracing::info!(object = %source, "SIGHUP: reloading the users object");
        }
        // SIGHUP reads the object whatever its ETag, as a local reload rereads the file.
        let last = if forced { None } else { etag.as_deref() };
        match remote.poll(last).await {
            Ok(Polled::Unchanged) => {}
            Ok(Polled::Absent) => tracing::error!(
                object = %source,
                "the users object is gone; keeping the last good users"
            ),
            Ok(Polled::Changed {
                users,
                etag: new_etag,
            }) => {
                match users {
                    Ok(new) => {
                        apply(&shared, new, &source);
                    }
                    Err(e) => {
                        tracing::error!(object = %source, "users object not reloaded, keeping the last good one: {e}")
                    }
                }
                // A refused version is not read (nor logged) again until it changes.
                etag = new_etag;
            }
            Err(e) => tracing::warn!(object = %source, "cannot check the users object: {e}"),
        }
    }
}
