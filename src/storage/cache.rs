//! What one session recently learnt about objects and directories, so that the STAT,
//! REMOVE and OPEN a client sends right after a READDIR (or an upload right after a MKDIR)
//! do not each cost another S3 request.
//!
//! - Objects: what a listing or HEAD said about a key. Dropped when this session writes,
//!   removes or renames the key.
//! - Directories: the names of a directory's subdirectories, from a complete listing or
//!   from creating the directory empty; and names a lookup found no directory under. Only
//!   used to skip the check that no directory has the name of an uploaded file or of a
//!   rename's target; directories of keys this session creates are added (or no longer
//!   absent) at once.
//!
//! Both are bounded in entries and age. Another session's changes show after at most the
//! TTL, which is the same trade rclone's `--dir-cache-time` makes (with a far shorter
//! default).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ObjectHead;

/// Most object entries one session keeps (about 200 bytes each).
pub const MAX_ENTRIES: usize = 10_000;
/// Most subdirectory names one session keeps across all its directory records.
pub const MAX_DIR_NAMES: usize = 10_000;
/// Most directory records one session keeps.
pub const MAX_DIRS: usize = 1_000;
/// Most names one session remembers having no directory.
pub const MAX_ABSENT: usize = 1_000;

#[derive(Debug, Default)]
struct Known {
    objects: HashMap<String, (ObjectHead, Instant)>,
    /// Directory prefix (ending in `/`) -> the names of its subdirectories, as of the instant.
    dirs: HashMap<String, (HashSet<String>, Instant)>,
    /// Names held in `dirs`, for the bound.
    dir_names: usize,
    /// Directory prefixes (ending in `/`) a lookup found nothing under, as of the instant.
    absent: HashMap<String, Instant>,
    /// How many keys this session has started creating ([`MetaCache::note_created`]).
    created: u64,
}

impl Known {
    fn drop_dir(&mut self, prefix: &str) {
        if let Some((names, _)) = self.dirs.remove(prefix) {
            self.dir_names -= names.len();
        }
    }

    /// Whether a record of `more` names would pass a bound.
    fn dirs_full(&self, more: usize) -> bool {
        self.dirs.len() >= MAX_DIRS || self.dir_names + more > MAX_DIR_NAMES
    }
}

/// When a directory listing (or lookup) began, to record what it found afterwards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    at: Instant,
    created: u64,
}

#[derive(Debug)]
pub struct MetaCache {
    ttl: Duration,
    known: Mutex<Known>,
}

impl MetaCache {
    /// A cache whose entries live `ttl`; a zero TTL turns it off.
    pub fn new(ttl: Duration) -> Self {
        MetaCache {
            ttl,
            known: Mutex::new(Known::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Known) -> R) -> R {
        match self.known.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Remembers that `key` exists with `head`, unless the cache is off or full of live
    /// entries.
    pub(crate) fn insert(&self, key: &str, head: ObjectHead) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let ttl = self.ttl;
        self.with(|known| {
            let map = &mut known.objects;
            if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
                map.retain(|_, (_, at)| now.duration_since(*at) < ttl);
                if map.len() >= MAX_ENTRIES {
                    return;
                }
            }
            map.insert(key.to_string(), (head, now));
        });
    }

    /// What is known about `key`, if it was seen within the TTL.
    pub(crate) fn get(&self, key: &str) -> Option<ObjectHead> {
        if self.ttl.is_zero() {
            return None;
        }
        let ttl = self.ttl;
        self.with(|known| match known.objects.get(key) {
            Some((head, at)) if at.elapsed() < ttl => Some(head.clone()),
            Some(_) => {
                known.objects.remove(key);
                None
            }
            None => None,
        })
    }

    /// Forgets `key` (this session changed it).
    pub(crate) fn forget(&self, key: &str) {
        if self.ttl.is_zero() {
            return;
        }
        self.with(|known| {
            known.objects.remove(key);
        });
    }

    /// Taken before a listing or lookup whose result may go to
    /// [`insert_dir`](Self::insert_dir).
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            created: self.with(|known| known.created),
        }
    }

    /// Runs `record` (given the TTL) if what was learnt as of `since` may be kept: the
    /// cache is on, the knowledge is younger than the TTL, and this session started
    /// creating no key in the meantime (the listing or lookup may have missed it).
    fn record_since(&self, since: Snapshot, record: impl FnOnce(&mut Known, Duration)) {
        if self.ttl.is_zero() || since.at.elapsed() >= self.ttl {
            return;
        }
        let ttl = self.ttl;
        self.with(|known| {
            if known.created == since.created {
                record(known, ttl);
            }
        });
    }

    /// Remembers that, as of `since`, the directory `prefix` had exactly the
    /// subdirectories `names` (a complete listing, or the directory was just created).
    /// Nothing is recorded if this session created a key in the meantime: the listing may
    /// have missed it.
    pub(crate) fn insert_dir(&self, prefix: &str, names: HashSet<String>, since: Snapshot) {
        self.record_since(since, |known, ttl| {
            known.drop_dir(prefix);
            if known.dirs_full(names.len()) {
                known.dirs.retain(|_, (_, at)| at.elapsed() < ttl);
                known.dir_names = known.dirs.values().map(|(n, _)| n.len()).sum();
                if known.dirs_full(names.len()) {
                    return;
                }
            }
            known.dir_names += names.len();
            known.dirs.insert(prefix.to_string(), (names, since.at));
        });
    }

    /// Remembers that, as of `since`, nothing was under the directory prefix `prefix` (a
    /// lookup found no directory there). Like [`insert_dir`](Self::insert_dir), nothing is
    /// recorded if this session created a key in the meantime.
    pub(crate) fn insert_absent(&self, prefix: &str, since: Snapshot) {
        self.record_since(since, |known, ttl| {
            if known.absent.len() >= MAX_ABSENT && !known.absent.contains_key(prefix) {
                known.absent.retain(|_, at| at.elapsed() < ttl);
                if known.absent.len() >= MAX_ABSENT {
                    return;
                }
            }
            known.absent.insert(prefix.to_string(), since.at);
        });
    }

    /// Whether the directory `prefix` is known, within the TTL, to have no subdirectory
    /// called `name`: from a record of `prefix`, or a lookup of the name. `false` means
    /// "unknown" as well as "there is one".
    pub(crate) fn known_no_subdir(&self, prefix: &str, name: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let ttl = self.ttl;
        self.with(|known| {
            match known.dirs.get(prefix) {
                Some((names, at)) if at.elapsed() < ttl => return !names.contains(name),
                Some(_) => known.drop_dir(prefix),
                None => {}
            }
            let dir = format!("{prefix}{name}/");
            match known.absent.get(&dir) {
                Some(at) if at.elapsed() < ttl => true,
                Some(_) => {
                    known.absent.remove(&dir);
                    false
                }
                None => false,
            }
        })
    }

    /// This session is creating `key` (an object, or a `dir/` marker): every directory on
    /// its way exists, and has the next name on the way as a subdirectory. A record that
    /// cannot take the name is dropped, so no record misses one.
    pub(crate) fn note_created(&self, key: &str) {
        if self.ttl.is_zero() {
            return;
        }
        self.with(|known| {
            known.created += 1;
            if known.dirs.is_empty() && known.absent.is_empty() {
                return;
            }
            let mut start = 0;
            while let Some(len) = key.get(start..).and_then(|rest| rest.find('/')) {
                let end = start + len;
                let (Some(prefix), Some(name), Some(dir)) =
                    (key.get(..start), key.get(start..end), key.get(..=end))
                else {
                    return;
                };
                known.absent.remove(dir);
                if let Some((names, _)) = known.dirs.get_mut(prefix) {
                    if !names.contains(name) {
                        if known.dir_names < MAX_DIR_NAMES {
                            names.insert(name.to_string());
                            known.dir_names += 1;
                        } else {
                            known.drop_dir(prefix);
                        }
                    }
                }
                start = end + 1;
            }
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.with(|known| known.objects.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(size: u64) -> ObjectHead {
        ObjectHead {
            size,
            etag: Some("\"e\"".into()),
            modified: None,
            dir_marker: false,
            mtime: None,
        }
    }

    #[test]
    fn remembers_until_forgotten() {
        let cache = MetaCache::new(Duration::from_secs(60));
        cache.insert("a", head(3));
        assert_eq!(cache.get("a").map(|h| h.size), Some(3));
        cache.forget("a");
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn entries_expire() {
        let cache = MetaCache::new(Duration::from_millis(20));
        cache.insert("a", head(1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn zero_ttl_is_off() {
        let cache = MetaCache::new(Duration::ZERO);
        cache.insert("a", head(1));
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn bounded() {
        let cache = MetaCache::new(Duration::from_secs(60));
        for i in 0..MAX_ENTRIES + 50 {
            cache.insert(&format!("k{i}"), head(1));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        // Known keys can still be refreshed when full.
        cache.insert("k0", head(2));
        assert_eq!(cache.get("k0").map(|h| h.size), Some(2));
    }

    fn names(list: &[&str]) -> HashSet<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn directory_records_answer_only_for_names_they_know() {
        let cache = MetaCache::new(Duration::from_secs(60));
        assert!(!cache.known_no_subdir("u/d/", "x"), "no record: unknown");
        cache.insert_dir("u/d/", names(&["sub"]), cache.snapshot());
        assert!(cache.known_no_subdir("u/d/", "x"));
        assert!(!cache.known_no_subdir("u/d/", "sub"));
        assert!(!cache.known_no_subdir("u/other/", "x"));
    }

    #[test]
    fn created_keys_add_their_directories() {
        let cache = MetaCache::new(Duration::from_secs(60));
        cache.insert_dir("u/", names(&[]), cache.snapshot());
        cache.insert_dir("u/a/", names(&[]), cache.snapshot());
        cache.insert_dir("u/a/b/", names(&[]), cache.snapshot());
        cache.insert_dir("u/a/b/c/", names(&[]), cache.snapshot());
        cache.note_created("u/a/b/c/file");
        assert!(!cache.known_no_subdir("u/", "a"));
        assert!(!cache.known_no_subdir("u/a/", "b"));
        assert!(!cache.known_no_subdir("u/a/b/", "c"));
        // The object itself is a file, not a directory.
        assert!(cache.known_no_subdir("u/a/b/c/", "file"));
        // A directory marker makes its own name a directory.
        cache.note_created("u/a/new/");
        assert!(!cache.known_no_subdir("u/a/", "new"));
        // The user's root may be the bucket's root (an empty prefix).
        cache.insert_dir("", names(&[]), cache.snapshot());
        cache.note_created("top/f");
        assert!(!cache.known_no_subdir("", "top"));
    }

    #[test]
    fn directory_records_expire_and_respect_the_ttl_switch() {
        let cache = MetaCache::new(Duration::from_millis(20));
        cache.insert_dir("d/", names(&[]), cache.snapshot());
        assert!(cache.known_no_subdir("d/", "x"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.known_no_subdir("d/", "x"));
        // Knowledge older than the TTL is never recorded.
        let cache = MetaCache::new(Duration::from_millis(20));
        let old = cache.snapshot();
        std::thread::sleep(Duration::from_millis(40));
        cache.insert_dir("d/", names(&[]), old);
        assert!(!cache.known_no_subdir("d/", "x"));
        let off = MetaCache::new(Duration::ZERO);
        off.insert_dir("d/", names(&[]), off.snapshot());
        assert!(!off.known_no_subdir("d/", "x"));
    }

    #[test]
    fn a_listing_that_overlapped_a_creation_is_not_recorded() {
        let cache = MetaCache::new(Duration::from_secs(60));
        let before = cache.snapshot();
        cache.note_created("d/sub/f");
        cache.insert_dir("d/", names(&[]), before);
        assert!(!cache.known_no_subdir("d/", "x"));
        cache.insert_dir("d/", names(&["sub"]), cache.snapshot());
        assert!(cache.known_no_subdir("d/", "x"));
    }

    #[test]
    fn directory_records_are_bounded() {
        let cache = MetaCache::new(Duration::from_secs(60));
        let many: HashSet<String> = (0..MAX_DIR_NAMES).map(|i| format!("n{i}")).collect();
        cache.insert_dir("big/", many, cache.snapshot());
        // No room for another name: the record that cannot take it is dropped, so it
        // never claims a subdirectory is absent when it is not.
        cache.insert_dir("small/", names(&["s"]), cache.snapshot());
        assert!(!cache.known_no_subdir("small/", "x"), "over the name bound");
        cache.note_created("big/extra/f");
        assert!(
            !cache.known_no_subdir("big/", "other"),
            "dropped, not wrong"
        );
        for i in 0..MAX_DIRS + 5 {
            cache.insert_dir(&format!("d{i}/"), names(&[]), cache.snapshot());
        }
        assert!(cache.known_no_subdir("d0/", "x"));
        assert!(!cache.known_no_subdir(&format!("d{}/", MAX_DIRS + 4), "x"));
    }

    #[test]
    fn names_looked_up_in_vain_until_created() {
        let cache = MetaCache::new(Duration::from_secs(60));
        cache.insert_absent("u/a/b/", cache.snapshot());
        cache.insert_absent("u/x/", cache.snapshot());
        assert!(cache.known_no_subdir("u/a/", "b"));
        assert!(cache.known_no_subdir("u/", "x"));
        assert!(!cache.known_no_subdir("u/", "a"), "never looked up");
        // An object below the name makes it a directory; so does its marker.
        cache.note_created("u/a/b/c/file");
        assert!(!cache.known_no_subdir("u/a/", "b"));
        cache.note_created("u/x/");
        assert!(!cache.known_no_subdir("u/", "x"));
        // A file of the name is not a directory.
        cache.insert_absent("u/f/", cache.snapshot());
        cache.note_created("u/f");
        assert!(cache.known_no_subdir("u/", "f"));
    }

    #[test]
    fn absent_names_expire_are_bounded_and_skip_overlaps() {
        let cache = MetaCache::new(Duration::from_millis(20));
        cache.insert_absent("d/", cache.snapshot());
        assert!(cache.known_no_subdir("", "d"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.known_no_subdir("", "d"));

        let cache = MetaCache::new(Duration::from_secs(60));
        let before = cache.snapshot();
        cache.note_created("d/f");
        cache.insert_absent("d/", before);
        assert!(
            !cache.known_no_subdir("", "d"),
            "the lookup overlapped a creation"
        );

        for i in 0..MAX_ABSENT + 5 {
            cache.insert_absent(&format!("n{i}/"), cache.snapshot());
        }
        assert!(cache.known_no_subdir("", "n0"));
        assert!(!cache.known_no_subdir("", &format!("n{}", MAX_ABSENT + 4)));

        let off = MetaCache::new(Duration::ZERO);
        off.insert_absent("d/", off.snapshot());
        assert!(!off.known_no_subdir("", "d"));
    }
}
