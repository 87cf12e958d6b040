//! Changing the users file safely: read, modify and write under the lock, the new text checked
//! with the loader's own rules, then written atomically.
//!
//! Atomic means a reader (the server, a reload, another command) sees either the old file or
//! the new one, never a mix or a truncated file, even if the machine loses power: the new text
//! goes to a temporary file in the same directory, which is flushed to disk, renamed over the
//! old file, and the directory is flushed so the rename itself survives. A command killed
//! before the rename leaves the old file untouched and a stray temporary file, which the next
//! command removes (it holds the lock, so nobody else is writing that file) and the server
//! never reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::lock::{sibling, UsersLock, LOCK_TIMEOUT};
use super::{User, UsersError, UsersFile};

/// The temporary file a write goes through: `.<name>.tmp` next to the users file.
pub fn temp_path(users_file: &Path) -> PathBuf {
    sibling(users_file, "tmp")
}

/// Reads the users file at `path`, lets `edit` change its users, checks the result with the
/// loader's rules and writes it atomically, all under the users-file lock, so two admins
/// editing at once cannot lose each other's changes. Returns what `edit` returns.
///
/// A missing file is an empty user list when `create` is true (`users add`, imports), else an
/// error; an empty file is an empty user list either way. If the existing file is invalid, nothing is changed: fix it first. If the result
/// would be invalid, nothing is written ([`UsersError::Rejected`]). `waiting` is called if
/// another command holds the lock.
pub fn update<T>(
    path: &Path,
    create: bool,
    waiting: impl FnMut(&Path),
    edit: impl FnOnce(&mut Vec<User>) -> Result<T, UsersError>,
) -> Result<T, UsersError> {
    let path = resolve(path)?;
    let _lock = UsersLock::acquire(&path, LOCK_TIMEOUT, waiting)?;
    let mut users = match UsersFile::load_empty_ok(&path) {
        Ok(file) => file.into_users(),
        Err(UsersError::Read { source, .. })
            if create && source.kind() == io::ErrorKind::NotFound =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let out = edit(&mut users)?;
    let text = match UsersFile::from_users(&users) {
        Ok((_, text)) => text,
        Err(UsersError::Invalid { problems, .. }) => {
            return Err(UsersError::Rejected { path, problems })
        }
        Err(e) => return Err(e),
    };
    write_atomic(&path, &text)?;
    Ok(out)
}

/// The file a write really replaces: the target of a symbolic link, so that editing through a
/// link updates the linked file instead of replacing the link with a regular file.
fn resolve(path: &Path) -> Result<PathBuf, UsersError> {
    match fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path.to_owned()),
        Err(source) => Err(UsersError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Replaces the file at `path` with `contents` atomically (see the module documentation).
/// The new file has mode 0600, and the owner and group of the file it replaces when the
/// process may set them (root editing a file that belongs to the service account).
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), UsersError> {
    let error = |source| UsersError::Write {
        path: path.to_owned(),
        source,
    };
    let temp = temp_path(path);
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let result = write_temp(path, &temp, contents).and_then(|()| {
        crash_point();
        fs::rename(&temp, path)?;
        sync_dir(path)
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(error)
}

fn write_temp(path: &Path, temp: &Path, contents: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    // The mode given to open is filtered by the umask; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    keep_owner(path, &file)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Gives `new` the owner and group of the existing file at `path`, if they differ.
fn keep_owner(path: &Path, new: &File) -> io::Result<()> {
    let old = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mine = new.metadata()?;
    if (old.uid(), old.gid()) == (mine.uid(), mine.gid()) {
        return Ok(());
    }
    std::os::unix::fs::fchown(new, Some(old.uid()), Some(old.gid())).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot give the new file the owner {}:{} of the old one ({e}); run the command as that user or as root",
                old.uid(),
                old.gid()
            ),
        )
    })
}

/// Flushes the directory holding `path`, so the rename is on disk too.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// In debug builds only, `S3SFTP_TEST_CRASH_BEFORE_RENAME=1` kills the process after the
/// temporary file is written and flushed but before it is renamed, so tests can check that a
/// crash at the worst moment leaves a valid file.
fn crash_point() {
    #[cfg(debug_assertions)]
    if std::env::var_os("S3SFTP_TEST_CRASH_BEFORE_RENAME").is_some() {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW a";

    fn one_user(name: &str) -> String {
        format!(
            r#"{{"users": [{{"username": "{name}", "public_keys": ["{KEY}"], "key_prefix": "{name}/"}}]}}"#
        )
    }

    #[test]
    fn write_replaces_the_file_with_mode_0600_and_removes_a_stale_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(temp_path(&path), "left by a crash").unwrap();
        write_atomic(&path, "new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn update_creates_checks_and_keeps_invalid_results_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let err = update(&path, false, |_| {}, |_| Ok(())).unwrap_err();
        assert!(matches!(err, UsersError::Read { .. }), "{err:?}");
        update(
            &path,
            true,
            |_| {},
            |users| {
                users.extend(UsersFile::parse(&one_user("a")).unwrap().into_users());
                Ok(())
            },
        )
        .unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let err = update(
            &path,
            false,
            |_| {},
            |users| {
                users[0].key_prefix = "no-slash".to_owned();
                Ok(())
            },
        )
        .unwrap_err();
        assert!(matches!(err, UsersError::Rejected { .. }), "{err:?}");
        assert!(err.to_string().contains("must end with"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
    }

    #[test]
    fn update_through_a_symlink_changes_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        let link = dir.path().join("users.json");
        fs::write(&real, one_user("a")).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        update(
            &link,
            false,
            |_| {},
            |users| {
                users[0].enabled = false;
                Ok(())
            },
        )
        .unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!UsersFile::load(&real).unwrap().users()[0].enabled);
    }
}
