//! Storage entries as SFTP attributes and `ls -l` style long names (FileZilla and other
//! GUI clients decide "file or directory" from the long name).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use russh_sftp::protocol::{File, FileAttributes};

use crate::storage::{Entry, EntryKind};

const MODE_FILE: u32 = 0o100644;
const MODE_DIR: u32 = 0o040755;

fn unix_secs(t: Option<SystemTime>) -> u32 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
        .unwrap_or(0)
}

/// Attributes of an entry: size, mode, uid/gid 0, times from S3's LastModified.
pub fn attributes(entry: &Entry) -> FileAttributes {
    let mtime = unix_secs(entry.modified);
    FileAttributes {
        size: Some(entry.size),
        uid: Some(0),
        user: None,
        gid: Some(0),
        group: None,
        permissions: Some(match entry.kind {
            EntryKind::File => MODE_FILE,
            EntryKind::Dir => MODE_DIR,
        }),
        atime: Some(mtime),
        mtime: Some(mtime),
    }
}

/// A READDIR entry with its long name.
pub fn file(entry: &Entry, owner: &str, now: SystemTime) -> File {
    File {
        filename: entry.name.clone(),
        longname: longname(entry, owner, now),
        attrs: attributes(entry),
    }
}

/// `drwxr-xr-x    1 alice    alice           0 Nov 23 11:36 name`, as OpenSSH's
/// sftp-server writes it (year instead of time for dates over six months away).
pub fn longname(entry: &Entry, owner: &str, now: SystemTime) -> String {
    let (mode, links) = match entry.kind {
        EntryKind::File => ("-rw-r--r--", 1),
        EntryKind::Dir => ("drwxr-xr-x", 2),
    };
    let mtime = entry.modified.unwrap_or(UNIX_EPOCH);
    let date: DateTime<Utc> = mtime.into();
    let six_months = std::time::Duration::from_secs(182 * 24 * 3600);
    let recent = match now.duration_since(mtime) {
        Ok(age) => age < six_months,
        Err(ahead) => ahead.duration() < six_months,
    };
    let when = if recent {
        date.format("%b %e %H:%M")
    } else {
        date.format("%b %e  %Y")
    };
    format!(
        "{mode} {links:>4} {owner:<8} {owner:<8} {size:>8} {when} {name}",
        size = entry.size,
        name = entry.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn longname_looks_like_ls() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let dir = Entry {
            name: "docs".into(),
            kind: EntryKind::Dir,
            size: 0,
            modified: Some(now),
        };
        let l = longname(&dir, "alice", now);
        assert!(
            l.starts_with("drwxr-xr-x    2 alice    alice           0 Nov 14 "),
            "{l}"
        );
        assert!(l.ends_with(" docs"));
        let old = Entry {
            name: "a b.txt".into(),
            kind: EntryKind::File,
            size: 1234,
            modified: Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
        };
        let l = longname(&old, "bob", now);
        assert!(
            l.starts_with("-rw-r--r--    1 bob      bob          1234 Sep 13  2020 a b.txt"),
            "{l}"
        );
        assert_eq!(attributes(&old).permissions, Some(0o100644));
        assert_eq!(attributes(&old).mtime, Some(1_600_000_000));
    }
}
