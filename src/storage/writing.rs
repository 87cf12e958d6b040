//! The files this gateway is writing, shown as they are before their commit.
//!
//! An upload exists in S3 only once it is complete (nothing partial is ever visible in the
//! bucket), but clients expect a file they create to exist at once, as on a local disk:
//! sshfs and file managers LSTAT a file right after creating it, and list its directory
//! while it is written, sometimes over a second connection (sshfs with several
//! connections, WinSCP). So every upload that creates or truncates a file registers here
//! for its whole life, and STAT, LSTAT and READDIR of every session of this gateway show it
//! with the bytes received so far (contiguous from offset 0). The registry is one per
//! server, keyed by object key (so a user sees only what is under its own prefix, as with
//! objects); it lives in memory and other gateways do not see it. When the upload commits,
//! fails or is aborted, its [`Shown`] guard is dropped and the entry goes: the object (or
//! nothing) takes over.
//!
//! A file being written cannot be read (its bytes are in the writer's buffers and in parts
//! S3 has not assembled). A client that closes a file and opens it again at once may send
//! the second OPEN before the CLOSE is done: sshfs gets the kernel's RELEASE after
//! `close()` has returned, and with several connections sends the OPEN over another one.
//! So an OPEN for reading of a file another session is writing waits, for a bounded
//! time, for the upload to end ([`Writing::wait_ended`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One file being written, as a STAT or a listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritingFile {
    /// Bytes received contiguously from offset 0.
    pub size: u64,
    /// The modification time the client set, else the time of the last write (or of the
    /// open).
    pub modified: SystemTime,
}

/// What a listing of a directory shows of the files being written under it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WritingChildren {
    /// Files directly in the directory, by name.
    pub files: BTreeMap<String, WritingFile>,
    /// Subdirectories that hold a file being written (at any depth), by name: they exist
    /// by it, as they will by its object.
    pub dirs: Vec<String>,
}

/// One upload's progress, shared between the upload (which writes it) and the registry
/// (which reads it for other sessions).
#[derive(Debug)]
struct Progress {
    /// Tells registrations of one key apart (the newest is shown).
    id: u64,
    /// The session writing it (see [`Writing::new_owner`]).
    owner: u64,
    written: AtomicU64,
    /// Milliseconds since the epoch of the last write.
    changed_ms: AtomicU64,
    /// The modification time a client set on the file (FSETSTAT on the handle, SETSTAT of
    /// the path), stored with the object at the commit.
    mtime: Mutex<Option<SystemTime>>,
}

impl Progress {
    fn shown(&self) -> WritingFile {
        let mtime = match self.mtime.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        };
        let changed = UNIX_EPOCH + Duration::from_millis(self.changed_ms.load(Ordering::Relaxed));
        WritingFile {
            size: self.written.load(Ordering::Relaxed),
            modified: mtime.unwrap_or(changed),
        }
    }

    fn set_mtime(&self, mtime: SystemTime) {
        match self.mtime.lock() {
            Ok(mut guard) => *guard = Some(mtime),
            Err(poisoned) => *poisoned.into_inner() = Some(mtime),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Key → the uploads of it in progress, oldest first (a client may open one name twice).
type Files = BTreeMap<String, Vec<Arc<Progress>>>;

#[derive(Debug, Default)]
struct Inner {
    files: Mutex<Files>,
    next_id: AtomicU64,
    next_owner: AtomicU64,
    /// Woken whenever an upload leaves the registry.
    ended: tokio::sync::Notify,
}

impl Inner {
    fn with<R>(&self, f: impl FnOnce(&mut Files) -> R) -> R {
        match self.files.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// The registry: one per server, shared by every session. Bounded by the uploads in
/// progress (sessions × `--max-uploads`), each entry a key and a few numbers.
#[derive(Debug, Default, Clone)]
pub struct Writing {
    inner: Arc<Inner>,
}

impl Writing {
    /// A new identity for the uploads of one session.
    pub fn new_owner(&self) -> u64 {
        self.inner.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// Shows `key` as a file being written by the session `owner` until the returned
    /// guard is dropped.
    pub fn register(&self, key: &str, owner: u64) -> Shown {
        let progress = Arc::new(Progress {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            owner,
            written: AtomicU64::new(0),
            changed_ms: AtomicU64::new(now_ms()),
            mtime: Mutex::new(None),
        });
        self.inner.with(|files| {
            files
                .entry(key.to_string())
                .or_default()
                .push(progress.clone())
        });
        Shown {
            registry: self.inner.clone(),
            key: key.to_string(),
            progress,
        }
    }

    /// The file being written at `key` (the newest upload of it), if any.
    pub fn file(&self, key: &str) -> Option<WritingFile> {
        self.inner
            .with(|files| files.get(key).and_then(|p| p.last()).map(|p| p.shown()))
    }

    /// Waits, at most `limit`, until no session but `owner` is writing `key`; whether
    /// none is. Returns at once when none is.
    pub async fn wait_ended(&self, key: &str, owner: u64, limit: Duration) -> bool {
        self.wait_until_none(limit, |files| {
            files
                .get(key)
                .is_some_and(|uploads| uploads.iter().any(|p| p.owner != owner))
        })
        .await
    }

    /// Like [`wait_ended`](Self::wait_ended), for every file below the directory prefix
    /// `prefix` (a folder about to be renamed).
    pub async fn wait_ended_below(&self, prefix: &str, owner: u64, limit: Duration) -> bool {
        self.wait_until_none(limit, |files| {
            below(files, prefix).any(|(_, uploads)| uploads.iter().any(|p| p.owner != owner))
        })
        .await
    }

    /// Waits, at most `limit`, until `busy` is false; whether it is.
    async fn wait_until_none(&self, limit: Duration, busy: impl Fn(&Files) -> bool) -> bool {
        let wait = async {
            loop {
                // Registered before the look, so an end between the two is not missed.
                let ended = self.inner.ended.notified();
                if !self.inner.with(|files| busy(files)) {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Whether a file is being written strictly below the directory prefix `prefix`
    /// (ending in `/`): the directory exists by it.
    pub fn has_below(&self, prefix: &str) -> bool {
        self.inner
            .with(|files| below(files, prefix).next().is_some())
    }

    /// Keeps `mtime` as the modification time of the file being written at `key` (a
    /// SETSTAT of its path); stored with the object at the commit. Whether a file is
    /// being written there.
    pub fn set_mtime(&self, key: &str, mtime: SystemTime) -> bool {
        self.inner.with(|files| match files.get(key) {
            Some(uploads) => {
                for p in uploads {
                    p.set_mtime(mtime);
                }
                true
            }
            None => false,
        })
    }

    /// What a listing of the directory prefix `prefix` shows of the files being written
    /// under it.
    pub fn children(&self, prefix: &str) -> WritingChildren {
        let mut out = WritingChildren::default();
        self.inner.with(|files| {
            for (key, uploads) in below(files, prefix) {
                let Some(rest) = key.get(prefix.len()..) else {
                    continue;
                };
                match rest.split_once('/') {
                    Some((dir, _)) => {
                        if out.dirs.last().map(String::as_str) != Some(dir) {
                            out.dirs.push(dir.to_string());
                        }
                    }
                    None => {
                        if let Some(p) = uploads.last() {
                            out.files.insert(rest.to_string(), p.shown());
                        }
                    }
                }
            }
        });
        out.dirs.dedup();
        out
    }

    /// How many files are being written (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.inner.with(|files| files.values().map(Vec::len).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The uploads of keys strictly below `prefix` (they sort together, right after it).
fn below<'a>(
    files: &'a Files,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Vec<Arc<Progress>>)> + 'a {
    files
        .range::<str, _>((
            std::ops::Bound::Excluded(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(move |(key, _)| key.starts_with(prefix))
}

/// An upload's entry in the registry: written by the upload as bytes arrive, removed when
/// it is dropped (the upload committed, failed or was aborted).
#[derive(Debug)]
pub struct Shown {
    registry: Arc<Inner>,
    key: String,
    progress: Arc<Progress>,
}

impl Shown {
    /// `written` bytes have now been received contiguously from offset 0.
    pub fn set_written(&self, written: u64) {
        self.progress.written.store(written, Ordering::Relaxed);
        self.progress.changed_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The client set the file's modification time on its handle.
    pub fn set_mtime(&self, mtime: SystemTime) {
        self.progress.set_mtime(mtime);
    }

    /// The modification time set on the file (on the handle or by a SETSTAT of its path).
    pub fn mtime(&self) -> Option<SystemTime> {
        match self.progress.mtime.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        let id = self.progress.id;
        self.registry.with(|files| {
            if let Some(uploads) = files.get_mut(&self.key) {
                uploads.retain(|p| p.id != id);
                if uploads.is_empty() {
                    files.remove(&self.key);
                }
            }
        });
        self.registry.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_shown_until_its_guard_goes() {
        let w = Writing::default();
        let shown = w.register("u/a/b.txt", 0);
        assert_eq!(w.file("u/a/b.txt").map(|f| f.size), Some(0));
        shown.set_written(100);
        assert_eq!(w.file("u/a/b.txt").map(|f| f.size), Some(100));
        assert!(w.has_below("u/"));
        assert!(w.has_below("u/a/"));
        assert!(!w.has_below("u/a/b.txt/"));
        assert!(!w.has_below("u/b/"));
        drop(shown);
        assert_eq!(w.file("u/a/b.txt"), None);
        assert!(!w.has_below("u/"));
        assert!(w.is_empty());
    }

    #[test]
    fn the_newest_upload_of_a_key_is_shown() {
        let w = Writing::default();
        let first = w.register("k", 0);
        first.set_written(5);
        let second = w.register("k", 0);
        second.set_written(7);
        assert_eq!(w.file("k").map(|f| f.size), Some(7));
        drop(second);
        assert_eq!(w.file("k").map(|f| f.size), Some(5));
        drop(first);
        assert_eq!(w.file("k"), None);
    }

    #[test]
    fn children_are_files_here_and_directories_below() {
        let w = Writing::default();
        let _a = w.register("u/a.txt", 0);
        let _b = w.register("u/d/x", 0);
        let _c = w.register("u/d/y/z", 0);
        let _d = w.register("u/e/f", 0);
        let _other = w.register("v/a.txt", 0);
        let c = w.children("u/");
        assert_eq!(c.files.keys().collect::<Vec<_>>(), ["a.txt"]);
        assert_eq!(c.dirs, ["d", "e"]);
        let c = w.children("u/d/");
        assert_eq!(c.files.keys().collect::<Vec<_>>(), ["x"]);
        assert_eq!(c.dirs, ["y"]);
    }

    #[tokio::test]
    async fn a_reader_waits_for_other_sessions_uploads_only() {
        let w = Writing::default();
        let limit = Duration::from_secs(60);
        assert!(w.wait_ended("k", 1, limit).await, "nothing to wait for");
        let own = w.register("k", 1);
        assert!(w.wait_ended("k", 1, limit).await, "its own upload");
        let other = w.register("k", 2);
        assert!(!w.wait_ended("k", 1, Duration::from_millis(10)).await);
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.wait_ended("k", 1, limit).await })
        };
        tokio::task::yield_now().await;
        drop(other);
        assert!(waiter.await.expect("waiter"));
        drop(own);
    }

    #[test]
    fn a_time_set_by_path_reaches_the_upload() {
        let w = Writing::default();
        let shown = w.register("k", 0);
        let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        assert!(w.set_mtime("k", t));
        assert!(!w.set_mtime("other", t));
        assert_eq!(shown.mtime(), Some(t));
        assert_eq!(w.file("k").map(|f| f.modified), Some(t));
    }
}
