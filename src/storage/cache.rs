//! What one session recently learnt about objects (from listings and HEADs), so that the
//! STAT, REMOVE and OPEN a client sends right after a READDIR do not each cost another
//! HEAD. Bounded in entries and age; entries are dropped when this session writes,
//! removes or renames the key. Another session's changes show after at most the TTL,
//! which is the same trade rclone's `--dir-cache-time` makes (with a far shorter default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ObjectHead;

/// Most entries one session keeps (about 200 bytes each).
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
pub struct MetaCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (ObjectHead, Instant)>>,
}

impl MetaCache {
    /// A cache whose entries live `ttl`; a zero TTL turns it off.
    pub fn new(ttl: Duration) -> Self {
        MetaCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, (ObjectHead, Instant)>) -> R) -> R {
        match self.entries.lock() {
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
        self.with(|map| {
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
        self.with(|map| match map.get(key) {
            Some((head, at)) if at.elapsed() < ttl => Some(head.clone()),
            Some(_) => {
                map.remove(key);
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
        self.with(|map| {
            map.remove(key);
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.with(|map| map.len())
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
}
