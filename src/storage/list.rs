//! Directory listings streamed from ListObjectsV2, one page at a time: a listing of a
//! million objects never holds more than one page in memory. On a store without markers,
//! the empty directories the server keeps in memory are listed after the last page.
//!
//! Files being written through this gateway (see `writing`) are listed too, with the bytes
//! written so far, and so are the directories they are in: a file shows from its OPEN, as
//! on a local disk. Such a file takes the place of the object it is replacing.
//!
//! ListObjectsV2 carries no user metadata, so the modification time a client set (kept
//! in `x-amz-meta-mtime`) is not in a listing. Tools that compare times over SFTP (rclone
//! sync) read them from READDIR, so with `--list-mtimes auto` a directory of up to 100
//! files is listed with one HEAD per file not already known to the session, 16 in
//! flight; larger directories, and `off`, show LastModified.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::SystemTime;

use tracing::Instrument;

use super::cache::{Snapshot, MAX_DIR_NAMES};
use super::s3::ListedObject;
use super::writing::WritingFile;
use super::{Entry, EntryKind, ListMtimes, Result, UserStore};

/// The largest directory (in files) whose listing HEADs every file for its kept
/// modification time (`--list-mtimes auto`); larger directories show S3's LastModified.
/// Small enough that a bulk download (`get -r`, a GUI's folder download) of a large
/// directory pays no HEAD per file: at 1,000 files the HEADs made a listing 50 times
/// slower (1.0 s against 18 ms on loopback, debug build).
pub const MTIME_HEADS_MAX: usize = 100;
/// HEADs in flight while a listing looks up kept times.
const MTIME_HEADS_IN_FLIGHT: usize = 16;

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
    /// Subdirectories kept in memory (a store without markers), or holding a file being
    /// written, that no page has listed yet: handed out after the last page.
    kept: BTreeMap<String, SystemTime>,
    /// Files being written in the directory (as of the OPENDIR) that no page has listed
    /// yet: handed out after the last page; a listed object of the name shows as this.
    writing: BTreeMap<String, WritingFile>,
}

impl DirLister {
    pub(crate) fn new(store: UserStore, prefix: String) -> Self {
        let since = store.cache().snapshot();
        let mut kept = store
            .storage()
            .empty_dirs()
            .map(|dirs| dirs.children(&prefix))
            .unwrap_or_default();
        let writing = store.storage().writing().children(&prefix);
        let now = SystemTime::now();
        for dir in writing.dirs {
            kept.entry(dir).or_insert(now);
        }
        DirLister {
            kept,
            writing: writing.files,
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
        let whole_dir = self.token.is_none() && listed.next_token.is_none();
        let kept = if whole_dir && self.store.storage().settings().list_mtimes == ListMtimes::Auto {
            self.kept_mtimes(&listed.objects).await
        } else {
            HashMap::new()
        };
        let files = listed.objects.iter().filter_map(|o| {
            Some(Entry {
                name: o.key.strip_prefix(&self.prefix)?.to_string(),
                kind: EntryKind::File,
                size: o.head.size,
                modified: kept
                    .get(&o.key)
                    .copied()
                    .flatten()
                    .or_else(|| o.head.shown_time()),
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
        for entry in page.iter_mut().filter(|e| e.kind == EntryKind::File) {
            if let Some(file) = self.writing.remove(&entry.name) {
                *entry = writing_entry(std::mem::take(&mut entry.name), file);
            }
        }
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
            self.hand_out_writing();
            self.hand_out_kept();
            if let Some((names, since)) = self.subdirs.take() {
                self.store.cache().insert_dir(&self.prefix, names, since);
            }
        }
        Ok(())
    }
}

impl DirLister {
    /// The kept modification time of each of `objects` (at most [`MTIME_HEADS_MAX`]):
    /// from the session's cache, else by HEADs, [`MTIME_HEADS_IN_FLIGHT`] at a time
    /// (remembered like any HEAD). A HEAD that fails leaves the file at its LastModified.
    async fn kept_mtimes(&self, objects: &[ListedObject]) -> HashMap<String, Option<SystemTime>> {
        let mut kept = HashMap::new();
        if objects.len() > MTIME_HEADS_MAX {
            return kept;
        }
        let mut unknown = Vec::new();
        for o in objects {
            match self.store.cache().get(&o.key).and_then(|h| h.mtime) {
                Some(mtime) => {
                    kept.insert(o.key.clone(), mtime);
                }
                None if o.key.len() > self.prefix.len() => unknown.push(o.key.clone()),
                None => {}
            }
        }
        let mut unknown = unknown.into_iter();
        let mut heads = tokio::task::JoinSet::new();
        let mut done = Vec::new();
        loop {
            while heads.len() < MTIME_HEADS_IN_FLIGHT {
                let Some(key) = unknown.next() else { break };
                let store = self.store.clone();
                heads.spawn(
                    async move {
                        let head = store.head(&key).await;
                        (key, head)
                    }
                    .in_current_span(),
                );
            }
            match heads.join_next().await {
                Some(Ok(result)) => done.push(result),
                Some(Err(e)) => tracing::debug!("HEAD task for a kept time failed: {e}"),
                None => break,
            }
        }
        for (key, head) in done {
            match head {
                Ok(Some(head)) => {
                    kept.insert(key, head.mtime.flatten());
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(%key, "HEAD for the kept time failed: {e}"),
            }
        }
        kept
    }

    /// Queues the files being written that no page listed.
    fn hand_out_writing(&mut self) {
        let writing = std::mem::take(&mut self.writing);
        for (name, file) in writing {
            if valid_name(&name) {
                self.ready.push_back(writing_entry(name, file));
            }
        }
    }

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

/// How a listing shows the file being written `name`.
fn writing_entry(name: String, file: WritingFile) -> Entry {
    Entry {
        name,
        kind: EntryKind::File,
        size: file.size,
        modified: Some(file.modified),
    }
}

/// Names a client can address: the directory's own marker (empty name), `.`/`..` and
/// names with a separator (from keys like `a//b`) are not listed.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\\')
}
