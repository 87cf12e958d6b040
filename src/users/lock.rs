//! The lock that makes each admin command's read-modify-write of the users file exclusive.
//!
//! The lock is an advisory `flock` on a separate file next to the users file
//! (`.users.json.lock` for `users.json`), never on the users file itself: each write replaces
//! the users file with a new inode by `rename`, so a lock taken on the old inode would protect
//! nothing. The lock file is created once and left in place; removing it would open a race
//! between a process unlinking it and another one locking it. The kernel releases the lock when
//! the process exits, so a crashed command never leaves it held.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::UsersError;

/// How long a command waits for another one to finish before giving up.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Held while a command reads, changes and writes the users file; dropping it unlocks.
#[derive(Debug)]
pub struct UsersLock {
    _file: File,
}

/// The lock file of the users file at `users_file`: `.<name>.lock` in the same directory.
pub fn lock_path(users_file: &Path) -> PathBuf {
    sibling(users_file, "lock")
}

/// `.<name>.<suffix>` next to `file`.
pub(super) fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "users.json".to_owned());
    file.with_file_name(format!(".{name}.{suffix}"))
}

impl UsersLock {
    /// Takes the exclusive lock of `users_file`, waiting up to `timeout` for another command to
    /// release it; `waiting` is called once if the lock is busy, so the caller can say so.
    ///
    /// Errors: [`UsersError::Lock`] if the lock file cannot be opened or locked,
    /// [`UsersError::LockTimeout`] if the lock is still held after `timeout`.
    pub fn acquire(
        users_file: &Path,
        timeout: Duration,
        mut waiting: impl FnMut(&Path),
    ) -> Result<UsersLock, UsersError> {
        let path = lock_path(users_file);
        let lock_error = |source| UsersError::Lock {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(lock_error)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(UsersLock { _file: file }),
                Err(TryLockError::Error(source)) => return Err(lock_error(source)),
                Err(TryLockError::WouldBlock) => {}
            }
            if start.elapsed() >= timeout {
                return Err(UsersError::LockTimeout { path, timeout });
            }
            if !told {
                waiting(&path);
                told = true;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_waits_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.json");
        assert_eq!(lock_path(&users), dir.path().join(".users.json.lock"));
        let first = UsersLock::acquire(&users, LOCK_TIMEOUT, |_| {}).unwrap();
        let mut told = 0;
        let err = UsersLock::acquire(&users, Duration::from_millis(50), |_| told += 1).unwrap_err();
        assert!(matches!(err, UsersError::LockTimeout { .. }), "{err:?}");
        assert!(
            err.to_string().contains("another `s3sftp users` command"),
            "{err}"
        );
        assert_eq!(told, 1);
        drop(first);
        UsersLock::acquire(&users, Duration::from_millis(50), |_| {}).unwrap();
    }
}
