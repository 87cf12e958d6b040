//! Directory listings streamed from ListObjectsV2, one page at a time: a listing of a
//! million objects never holds more than one page in memory. On a store without markers,
//! the empty directories the server keeps in memory are listed after the last page.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::SystemTime;

use super::cache::{Snapshot, MAX_DIR_NAMES};
use super::{Entry, EntryKind, Result, UserStore};

/// An open directory: the entries of the current page and where the next page starts.
#[derive(Debug)]
pub struct DirLister {
    store: UserStore,
    /// The directory's key prefix, ending in `/` (or the user's prefix for the root).
    prefix: String,
    token: Option<String>,
    exhausted: bool,
    ready: VecDeque<Entry>,
    /// Last name handed out, to drop a name S3 lists twice (a file `a` and a dir `a/`
    /// are both shown; an identical name in two pages is not).
    last: Option<(String, EntryKind)>,
    /// The subdirectories seen so far and when the first page was asked for; handed to
    /// the session's cache when the listing completes. `None` once there are too many.
    subdirs: Option<(HashSet<String>, Snapshot)>,
    /// Subdirectories kept in memory (a store without markers) that no page has listed
    /// yet: handed out after the last page.
    kept: BTreeMap<String, SystemTime>,
}

impl DirLister {
    pub(crate) fn new(store: UserStore, prefix: String) -> Self {
        let since = store.cache().snapshot();
        let kept = store
            .storage()
            .empty_dirs()
            .map(|dirs| dirs.children(&prefix))
            .unwrap_or_default();
        DirLister {
            kept,
            store,
            prefix,
            token: None,
            exhausted: false,
            ready: VecDeque::new(),
            last: None,
            subdirs: Some((HashSet::new(), since)),
        }
    }

    /// Up to `max` further entries; an empty vector means the listing is complete.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Entry>> {
        while self.ready.is_empty() && !self.exhausted {
            self.fetch_page().await?;
        }
        let n = max.min(self.ready.len());
        Ok(self.ready.drain(..n).collect())
    }

    async fn fetch_page(&mut self) -> Result<()> {
        let listed = self
            .store
            .list_dir_page(&self.prefix, self.token.as_deref())
            .await?;
        let files = listed.objects.iter().filter_map(|o| {
            Some(Entry {
                name: o.key.strip_prefix(&self.prefix)?.to_string(),
                kind: EntryKind::File,
                size: o.head.size,
                modified: o.head.modified,
            })
        });
        let now = SystemTime::now();
        let dir_names: Vec<&str> = listed
            .prefixes
            .iter()
            .filter_map(|p| p.strip_prefix(&self.prefix)?.strip_suffix('/'))
            .collect();
        for name in &dir_names {
            self.kept.remove(*name);
        }
        if let Some((names, _)) = &mut self.subdirs {
            names.extend(dir_names.iter().map(|name| name.to_string()));
            if names.len() > MAX_DIR_NAMES {
                self.subdirs = None;
            }
        }
        let dirs = dir_names.iter().map(|name| Entry {
            name: name.to_string(),
            kind: EntryKind::Dir,
            size: 0,
            modified: Some(now),
        });
        let mut page: Vec<Entry> = files.chain(dirs).filter(|e| valid_name(&e.name)).collect();
        page.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in page {
            let key = (entry.name.clone(), entry.kind);
            if self.last.as_ref() == Some(&key) {
                continue;
            }
            self.last = Some(key);
            self.ready.push_back(entry);
        }
        self.token = listed.next_token;
        self.exhausted = self.token.is_none();
        if self.exhausted {
            self.hand_out_kept();
            if let Some((names, since)) = self.subdirs.take() {
                self.store.cache().insert_dir(&self.prefix, names, since);
            }
        }
        Ok(())
    }
}

impl DirLister {
    /// Queues the kept subdirectories no page listed.
    fn hand_out_kept(&mut self) {
        let kept = std::mem::take(&mut self.kept);
        for (name, made) in kept {
            if !valid_name(&name) {
                continue;
            }
            if let Some((names, _)) = &mut self.subdirs {
                names.insert(name.clone());
                if names.len() > MAX_DIR_NAMES {
                    self.subdirs = None;
                }
            }
            self.ready.push_back(Entry {
                name,
                kind: EntryKind::Dir,
                size: 0,
                modified: Some(made),
            });
        }
    }
}

/// Names a client can address: the directory's own marker (empty name), `.`/`..` and
/// names with a separator (from keys like `a//b`) are not listed.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\\')
}
