//! Empty directories kept in memory, on a store that cannot hold `dir/` markers
//! ([`super::dir_markers`]): what rclone's own VFS does. One set per server, shared by
//! every session, keyed by the directory's key prefix (ending in `/`). A directory
//! leaves the set when a file is written under it (it then exists by its keys) or when
//! it is removed; the set is lost on restart and unseen by other gateways.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Most empty directories one user (one home prefix) may keep.
pub const MAX_PER_USER: usize = 10_000;
/// Most empty directories the server keeps (about 150 bytes each).
pub const MAX_TOTAL: usize = 100_000;

/// Why a directory could not be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The set: directory prefix → when it was made.
#[derive(Debug, Default)]
pub struct EmptyDirs {
    dirs: Mutex<BTreeMap<String, SystemTime>>,
}

impl EmptyDirs {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, SystemTime>) -> R) -> R {
        match self.dirs.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Keeps the directory `prefix` of the user whose home is `home`.
    pub fn insert(&self, prefix: &str, home: &str) -> Result<(), Full> {
        self.with(|dirs| {
            if dirs.contains_key(prefix) {
                return Ok(());
            }
            let users = under(dirs, home).count();
            if users >= MAX_PER_USER || dirs.len() >= MAX_TOTAL {
                return Err(Full);
            }
            dirs.insert(prefix.to_string(), SystemTime::now());
            Ok(())
        })
    }

    /// When the directory `prefix` was made, if it is a kept directory or one of its
    /// ancestors (a kept `a/b/` makes `a/` a directory too).
    pub fn dir(&self, prefix: &str) -> Option<SystemTime> {
        self.with(|dirs| under(dirs, prefix).map(|(_, at)| *at).min())
    }

    /// Whether a kept directory lies strictly below `prefix`.
    pub fn has_below(&self, prefix: &str) -> bool {
        self.with(|dirs| under(dirs, prefix).any(|(k, _)| k != prefix))
    }

    /// Whether `prefix` itself is kept.
    pub fn contains(&self, prefix: &str) -> bool {
        self.with(|dirs| dirs.contains_key(prefix))
    }

    /// Forgets the directory `prefix`; whether it was kept.
    pub fn remove(&self, prefix: &str) -> bool {
        self.with(|dirs| dirs.remove(prefix).is_some())
    }

    /// The names of the subdirectories of `prefix` that the set makes: the first name
    /// below `prefix` of each kept directory under it.
    pub fn children(&self, prefix: &str) -> BTreeMap<String, SystemTime> {
        self.with(|dirs| {
            let mut names: BTreeMap<String, SystemTime> = BTreeMap::new();
            for (key, at) in under(dirs, prefix) {
                let Some(rest) = key.get(prefix.len()..) else {
                    continue;
                };
                let Some(name) = rest.split('/').next().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let entry = names.entry(name.to_string()).or_insert(*at);
                *entry = (*entry).min(*at);
            }
            names
        })
    }

    /// An object was written at `key`: every kept directory on its way now exists by it.
    pub fn filled(&self, key: &str) {
        self.with(|dirs| {
            if dirs.is_empty() {
                return;
            }
            for (end, _) in key.match_indices('/') {
                if let Some(dir) = key.get(..=end) {
                    dirs.remove(dir);
                }
            }
        });
    }

    pub fn len(&self) -> usize {
        self.with(|dirs| dirs.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The entries whose key starts with `prefix`.
fn under<'a>(
    dirs: &'a BTreeMap<String, SystemTime>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a SystemTime)> + 'a {
    dirs.range(prefix.to_string()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_directories_and_their_ancestors_are_directories() {
        let dirs = EmptyDirs::default();
        dirs.insert("u/a/b/", "u/").expect("room");
        assert!(dirs.dir("u/a/b/").is_some());
        assert!(dirs.dir("u/a/").is_some(), "an ancestor");
        assert!(dirs.dir("u/a/c/").is_none());
        assert!(dirs.dir("u/ab/").is_none(), "not a prefix of a name");
        assert!(dirs.has_below("u/a/"));
        assert!(!dirs.has_below("u/a/b/"));
        assert!(dirs.contains("u/a/b/") && !dirs.contains("u/a/"));
        let names: Vec<String> = dirs.children("u/").into_keys().collect();
        assert_eq!(names, ["a"]);
        let names: Vec<String> = dirs.children("u/a/").into_keys().collect();
        assert_eq!(names, ["b"]);
        assert!(dirs.children("u/a/b/").is_empty());
    }

    #[test]
    fn a_file_written_below_fills_every_directory_on_its_way() {
        let dirs = EmptyDirs::default();
        dirs.insert("u/a/", "u/").expect("room");
        dirs.insert("u/a/b/", "u/").expect("room");
        dirs.insert("u/x/", "u/").expect("room");
        dirs.filled("u/a/b/f");
        assert!(!dirs.contains("u/a/") && !dirs.contains("u/a/b/"));
        assert!(dirs.contains("u/x/"));
        assert!(dirs.remove("u/x/"));
        assert!(!dirs.remove("u/x/"));
        assert!(dirs.is_empty());
    }

    #[test]
    fn bounded_per_user() {
        let dirs = EmptyDirs::default();
        for i in 0..MAX_PER_USER {
            dirs.insert(&format!("u/{i}/"), "u/").expect("room");
        }
        assert_eq!(dirs.insert("u/more/", "u/"), Err(Full));
        assert_eq!(dirs.insert("u/0/", "u/"), Ok(()), "already kept");
        dirs.insert("v/one/", "v/").expect("another user has room");
    }
}
