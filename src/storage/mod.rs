//! The only code that knows S3. Front ends (SFTP, SCP) talk to a [`UserStore`]: a view of
//! the bucket bound to one user's prefix, in terms of virtual paths, files and
//! directories. Directories are key prefixes, made visible when empty by a `dir/` marker,
//! or, on a store that cannot hold markers, by the server's memory ([`empty_dirs`]).
//!
//! Requests to S3 are built only in `s3` (one typed call per operation, and the one
//! multipart-upload lifecycle); `bucket` pairs each call with the session's
//! metadata-cache work. `upload`, `download`, `rename` and `list` are flows over those.

mod bucket;
pub mod budget;
pub(crate) mod cache;
pub mod client;
pub mod compat;
pub mod dir_markers;
pub mod download;
pub mod empty_dirs;
pub mod error;
pub mod intent;
pub mod list;
pub(crate) mod mtime;
pub mod object_settings;
mod observe;
pub mod path;
pub mod policy;
pub mod rename;
pub(crate) mod s3;
pub mod signing;
pub mod sweep;
pub mod upload;
pub mod writing;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

use aws_sdk_s3::Client;
use tokio_util::task::AbortOnDropHandle;

pub use budget::{Account, MemoryBudget};
use cache::MetaCache;
pub use dir_markers::DirMarkers;
pub use download::Download;
use empty_dirs::EmptyDirs;
pub use error::{Result, StorageError};
pub use list::DirLister;
pub use object_settings::{Encryption, ObjectLock, ObjectSettings, StorageClass, UploadChecksum};
pub use path::{Jail, PathError, VirtualPath};

use crate::users::{Permission, Permissions};
use upload::Existing;
pub use upload::{Upload, WriteMode};

use s3::S3;

const MIB: u64 = 1024 * 1024;

/// Transfer tuning: part sizes, read-ahead and memory ceilings.
#[derive(Debug, Clone)]
pub struct TransferSettings {
    /// Smallest multipart part (grows for large files so no upload needs > 10,000 parts).
    pub part_size: u64,
    /// Buffer ceiling of one upload or one download, in bytes.
    pub transfer_budget: u64,
    /// Buffer ceiling of all transfers together, in bytes.
    pub global_budget: u64,
    /// Size of one ranged GET of the read-ahead.
    pub download_chunk: u64,
    /// How far ahead of the written end out-of-order WRITEs are accepted and reordered.
    pub reorder_window: u64,
    /// How long a session trusts what a listing or HEAD told it about an object.
    pub metadata_ttl: Duration,
    /// Whether listings HEAD their files for the kept modification times.
    pub list_mtimes: ListMtimes,
    /// Storage class, encryption and upload checksum of every object written.
    pub objects: ObjectSettings,
    /// Whether mkdir writes `dir/` markers; `Auto` is resolved at start by a probe
    /// (and counts as `On` when it was not).
    pub dir_markers: DirMarkers,
    /// The most objects a folder rename moves; a larger folder is refused up front.
    pub max_rename_objects: u64,
    /// Where the gateways keep their own objects (folder-rename intents): a key prefix
    /// ending with `/`, outside every user's prefix.
    pub system_prefix: String,
}

/// Whether a listing shows the kept modification times (see [`list`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ListMtimes {
    /// One HEAD per file in directories of up to [`list::MTIME_HEADS_MAX`] files.
    #[default]
    Auto,
    /// Listings show S3's LastModified; STAT still shows the kept time.
    Off,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            part_size: 8 * MIB,
            transfer_budget: 64 * MIB,
            global_budget: 1024 * MIB,
            download_chunk: 8 * MIB,
            reorder_window: 4 * MIB,
            metadata_ttl: Duration::from_secs(2),
            list_mtimes: ListMtimes::Auto,
            objects: ObjectSettings::default(),
            dir_markers: DirMarkers::default(),
            max_rename_objects: 10_000,
            system_prefix: intent::DEFAULT_SYSTEM_PREFIX.to_string(),
        }
    }
}

/// The bucket, the clients and the shared budgets: one per server.
#[derive(Debug)]
pub struct Storage {
    clients: client::Clients,
    bucket: Arc<str>,
    settings: TransferSettings,
    budget: MemoryBudget,
    /// The empty directories of a store that cannot hold markers; `None` where mkdir
    /// writes markers.
    empty_dirs: Option<EmptyDirs>,
    /// The folder-rename intents this gateway knows of (see `intent`).
    intents: intent::Intents,
    /// The files being written through this gateway, shown before their commit.
    writing: writing::Writing,
}

impl Storage {
    /// Storage whose every S3 request goes through `client`.
    pub fn new(client: Client, bucket: impl Into<String>, settings: TransferSettings) -> Arc<Self> {
        Self::with_clients(client::Clients::shared_only(client), bucket, settings)
    }

    /// Like [`Storage::new`], with one S3 client (and connection pool) per session thread
    /// of `lanes` besides the shared one.
    pub fn with_lanes(
        client: Client,
        bucket: impl Into<String>,
        settings: TransferSettings,
        lanes: &crate::lanes::Lanes,
    ) -> Arc<Self> {
        let clients = client::Clients::per_lane(client, lanes.set(), lanes.len());
        Self::with_clients(clients, bucket, settings)
    }

    fn with_clients(
        clients: client::Clients,
        bucket: impl Into<String>,
        settings: TransferSettings,
    ) -> Arc<Self> {
        Arc::new(Storage {
            clients,
            bucket: Arc::from(bucket.into()),
            budget: MemoryBudget::new(settings.global_budget),
            empty_dirs: (!settings.dir_markers.writes_markers()).then(EmptyDirs::default),
            intents: intent::Intents::new(),
            writing: writing::Writing::default(),
            settings,
        })
    }

    /// The S3 client for the calling thread: its session thread's own, else the shared one.
    pub fn client(&self) -> &Client {
        self.clients.current()
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The S3 call layer, with the calling thread's client.
    pub(crate) fn s3(&self) -> S3 {
        S3::new(
            self.client().clone(),
            self.bucket.clone(),
            self.settings.objects.upload_checksum,
        )
    }

    /// The headers every object this server creates gets (class, encryption).
    pub(crate) fn object_options(&self) -> s3::ObjectOptions {
        s3::ObjectOptions::from_settings(&self.settings.objects)
    }

    pub fn settings(&self) -> &TransferSettings {
        &self.settings
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Whether mkdir writes `dir/` markers (else empty directories are kept in memory).
    pub fn writes_markers(&self) -> bool {
        self.empty_dirs.is_none()
    }

    /// The empty directories kept in memory, on a store that cannot hold markers.
    pub(crate) fn empty_dirs(&self) -> Option<&EmptyDirs> {
        self.empty_dirs.as_ref()
    }

    /// The files being written through this gateway (see [`writing`]).
    pub fn writing(&self) -> &writing::Writing {
        &self.writing
    }

    /// How many empty directories are kept in memory (0 where markers are written).
    pub fn empty_dirs_kept(&self) -> usize {
        self.empty_dirs.as_ref().map_or(0, EmptyDirs::len)
    }

    /// A view of the bucket jailed to `prefix`, with every permission.
    pub fn user_store(self: &Arc<Self>, prefix: &str) -> UserStore {
        UserStore {
            storage: self.clone(),
            jail: Jail::new(prefix),
            account: self.budget.account(prefix),
            written: Arc::default(),
            writer_id: self.writing.new_owner(),
            permissions: None,
            cache: Arc::new(MetaCache::new(self.settings.metadata_ttl)),
        }
    }

    /// A view of the bucket jailed to `prefix` that allows only what `permissions` grant.
    pub fn user_store_with(
        self: &Arc<Self>,
        prefix: &str,
        permissions: Arc<Permissions>,
    ) -> UserStore {
        UserStore {
            storage: self.clone(),
            jail: Jail::new(prefix),
            account: self.budget.account(prefix),
            written: Arc::default(),
            writer_id: self.writing.new_owner(),
            permissions: Some(permissions),
            cache: Arc::new(MetaCache::new(self.settings.metadata_ttl)),
        }
    }
}

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// What a stat or a listing says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    fn dir(name: &str, modified: Option<SystemTime>) -> Self {
        Entry {
            name: name.to_string(),
            kind: EntryKind::Dir,
            size: 0,
            modified,
        }
    }
}

/// Metadata of an object from HEAD.
#[derive(Debug, Clone)]
pub(crate) struct ObjectHead {
    pub size: u64,
    pub etag: Option<String>,
    pub modified: Option<SystemTime>,
    /// An empty object whose Content-Type is `application/x-directory`: how `rclone serve
    /// s3` answers a HEAD of a folder's name, and how s3fs once marked directories.
    /// Only a HEAD can tell (listings carry no Content-Type).
    pub dir_marker: bool,
    /// The modification time kept in the object's metadata (`x-amz-meta-mtime`):
    /// `Some(None)` when a HEAD or GET found none, `None` when not known (listings carry
    /// no user metadata).
    pub mtime: Option<Option<SystemTime>>,
}

impl ObjectHead {
    /// The time to show: the kept modification time, else S3's LastModified.
    pub fn shown_time(&self) -> Option<SystemTime> {
        self.mtime.flatten().or(self.modified)
    }
}

/// How long an OPEN for reading waits for another session's upload of the file to end.
const READ_WAITS_FOR_WRITER: Duration = Duration::from_secs(10);

/// How many written keys a session remembers for [`UserStore::stat_for_client`].
const WRITTEN_REMEMBERED: usize = 256;

/// Content-Type of an empty object that stands for a directory.
const DIRECTORY_CONTENT_TYPE: &str = "application/x-directory";

/// Why mkdir fails when the memory for empty directories is full.
const TOO_MANY_EMPTY_DIRS: &str =
    "too many empty directories (this store keeps no directory markers, so the server keeps \
     them in memory until a file is written in them): write files into some first";

/// One user's view of the bucket. Every operation takes virtual paths and builds keys
/// only through the [`Jail`]. Clones share one metadata cache: one view per session.
#[derive(Debug, Clone)]
pub struct UserStore {
    storage: Arc<Storage>,
    jail: Jail,
    /// This user's side of the memory budget (users are told apart by home prefix).
    account: Account,
    /// Keys this session opened for writing, newest last (at most [`WRITTEN_REMEMBERED`]):
    /// it may stat them without the `list` permission.
    written: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    /// Who this session is among the writers of files being written (see [`writing`]).
    writer_id: u64,
    /// What the user may do where; `None` allows everything.
    permissions: Option<Arc<Permissions>>,
    cache: Arc<MetaCache>,
}

impl UserStore {
    /// Fails with [`StorageError::PermissionDenied`] unless `permission` is granted at `path`.
    pub fn check(&self, permission: Permission, path: &VirtualPath) -> Result<()> {
        match &self.permissions {
            Some(p) if !p.permissions_for(path.as_str()).contains(permission) => {
                tracing::info!(
                    prefix = %self.jail.prefix(),
                    %path,
                    permission = permission.name(),
                    "permission denied"
                );
                Err(StorageError::PermissionDenied(permission.name()))
            }
            _ => Ok(()),
        }
    }

    pub fn jail(&self) -> &Jail {
        &self.jail
    }

    /// Who this session is among the writers of files being written (see [`writing`]).
    pub(crate) fn writer_id(&self) -> u64 {
        self.writer_id
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// This user's side of the memory budget: every transfer buffer is reserved through it.
    pub fn account(&self) -> &Account {
        &self.account
    }

    fn s3(&self) -> S3 {
        self.storage.s3()
    }

    pub(crate) fn cache(&self) -> &MetaCache {
        &self.cache
    }

    /// Whether `permission` is granted at `path`, without logging a denial.
    fn allows(&self, permission: Permission, path: &VirtualPath) -> bool {
        match &self.permissions {
            Some(p) => p.permissions_for(path.as_str()).contains(permission),
            None => true,
        }
    }

    /// The directory `path` (at `prefix`) when the server keeps it in memory (a store
    /// without markers), or keeps one below it.
    fn kept_dir(&self, path: &VirtualPath, prefix: &str) -> Option<Entry> {
        let made = self.storage.empty_dirs()?.dir(prefix)?;
        Some(Entry::dir(path.file_name(), Some(made)))
    }

    /// The directory `path` (at `prefix`) when a file is being written below it: it
    /// exists by that file, as it will by its object.
    fn writing_dir(&self, path: &VirtualPath, prefix: &str) -> Option<Entry> {
        self.storage
            .writing()
            .has_below(prefix)
            .then(|| Entry::dir(path.file_name(), Some(SystemTime::now())))
    }

    /// The file being written at `key` through this gateway, as STAT shows it.
    fn writing_file(&self, path: &VirtualPath, key: &str) -> Option<Entry> {
        let file = self.storage.writing().file(key)?;
        Some(Entry {
            name: path.file_name().to_string(),
            kind: EntryKind::File,
            size: file.size,
            modified: Some(file.modified),
        })
    }

    /// Whether `path` is a directory: the root, a `dir/` marker, a directory kept in
    /// memory, one a file being written is under, or any key below it.
    async fn dir_entry(&self, path: &VirtualPath) -> Result<Option<Entry>> {
        if path.is_root() {
            return Ok(Some(Entry::dir("/", None)));
        }
        let prefix = self.jail.dir_prefix(path)?;
        if let Some(kept) = self.kept_dir(path, &prefix) {
            return Ok(Some(kept));
        }
        if let Some(writing) = self.writing_dir(path, &prefix) {
            return Ok(Some(writing));
        }
        let first = self.first_key_in(&prefix).await?;
        Ok(first.map(|(key, modified)| {
            let modified = if key == prefix { modified } else { None };
            Entry::dir(
                path.file_name(),
                modified.or_else(|| Some(SystemTime::now())),
            )
        }))
    }

    /// Like [`dir_entry`](Self::dir_entry), but `None` at once when this session knows
    /// there is no directory of that name: its record of the parent directory (a listing
    /// or a MKDIR moments ago) has none, or a lookup of the name found nothing.
    async fn dir_entry_unless_known(&self, path: &VirtualPath) -> Result<Option<Entry>> {
        if !path.is_root() {
            let parent = self.jail.dir_prefix(&path.parent())?;
            let prefix = self.jail.dir_prefix(path)?;
            if let Some(kept) = self.kept_dir(path, &prefix) {
                return Ok(Some(kept));
            }
            if let Some(writing) = self.writing_dir(path, &prefix) {
                return Ok(Some(writing));
            }
            if self.cache.known_no_subdir(&parent, path.file_name()) {
                return Ok(None);
            }
        }
        self.dir_entry(path).await
    }

    /// [`stat`](Self::stat) for a client's STAT: allowed where the user may list the
    /// directory the name is in, and always for a file this session is writing or has
    /// written (clients stat what they have just uploaded).
    pub async fn stat_for_client(&self, path: &VirtualPath) -> Result<Entry> {
        if !path.is_root() {
            let written = self
                .jail
                .file_key(path)
                .is_ok_and(|key| self.has_written(&key));
            if !written {
                self.check(Permission::List, &path.parent())?;
            }
        }
        self.stat(path).await
    }

    /// Remembers that this session opened `key` for writing.
    fn note_written(&self, key: &str) {
        if let Ok(mut keys) = self.written.lock() {
            if !keys.iter().any(|k| k == key) {
                if keys.len() >= WRITTEN_REMEMBERED {
                    keys.pop_front();
                }
                keys.push_back(key.to_string());
            }
        }
    }

    fn has_written(&self, key: &str) -> bool {
        self.written
            .lock()
            .is_ok_and(|keys| keys.iter().any(|k| k == key))
    }

    /// What `path` is. A file wins over a directory of the same name, and a file being
    /// written through this gateway over the object it will replace. Checks no
    /// permission: for the server's own lookups (see [`stat_for_client`](Self::stat_for_client)).
    pub async fn stat(&self, path: &VirtualPath) -> Result<Entry> {
        if path.is_root() {
            return Ok(Entry::dir("/", Some(SystemTime::now())));
        }
        let key = self.jail.file_key(path)?;
        if let Some(writing) = self.writing_file(path, &key) {
            return Ok(writing);
        }
        let file_entry = |head: ObjectHead| Entry {
            name: path.file_name().to_string(),
            kind: EntryKind::File,
            size: head.size,
            modified: head.shown_time(),
        };
        if let Some(kept) = self.kept_dir(path, &self.jail.dir_prefix(path)?) {
            return Ok(kept);
        }
        // An empty entry from a listing may be a directory marker (see `dir_marker`):
        // only a HEAD tells.
        // A listing's entry lacks the kept time: a HEAD tells it, unless listings are
        // configured not to show kept times (then STAT costs what it did before).
        let list_mtimes = self.storage.settings.list_mtimes;
        if let Some(head) = self
            .cache
            .get(&key)
            .filter(|head| head.size > 0)
            .filter(|head| head.mtime.is_some() || list_mtimes == ListMtimes::Off)
        {
            return Ok(file_entry(head));
        }
        // HEAD and the directory LIST go out together; a file answers without waiting
        // for the LIST (a file wins over a directory of the same name).
        let head = self.head(&key);
        let dir = self.dir_entry(path);
        tokio::pin!(head, dir);
        let mut dir_done = None;
        let file = tokio::select! {
            biased;
            file = &mut head => file,
            listed = &mut dir => {
                dir_done = Some(listed);
                head.await
            }
        };
        if let Some(head) = file? {
            if head.dir_marker {
                return Ok(Entry::dir(path.file_name(), head.modified));
            }
            return Ok(file_entry(head));
        }
        let listed = match dir_done {
            Some(listed) => listed,
            None => dir.await,
        };
        listed?.ok_or(StorageError::NotFound)
    }

    /// Creates a directory by writing its `dir/` marker, or, on a store that cannot hold
    /// markers, by keeping it in memory until a file is written under it.
    pub async fn mkdir(&self, path: &VirtualPath) -> Result<()> {
        self.check(Permission::CreateDirs, path)?;
        let looked = self.cache.snapshot();
        match self.stat(path).await {
            Ok(_) => return Err(StorageError::AlreadyExists),
            Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let marker = self.jail.dir_prefix(path)?;
        if let Some(dirs) = self.storage.empty_dirs() {
            dirs.insert(&marker, self.jail.prefix())
                .map_err(|_| StorageError::Unsupported(TOO_MANY_EMPTY_DIRS))?;
            self.cache.insert_dir(&marker, HashSet::new(), looked);
            self.cache.note_created(&marker);
            tracing::debug!(key = %marker, "directory kept in memory (the store keeps no markers)");
            return Ok(());
        }
        self.put_dir_marker(&marker, looked).await?;
        tracing::debug!(key = %marker, "directory created");
        Ok(())
    }

    /// Removes an empty directory (its marker); refuses one that has anything in it.
    pub async fn rmdir(&self, path: &VirtualPath) -> Result<()> {
        self.check(Permission::Delete, path)?;
        if path.is_root() {
            return Err(StorageError::Unsupported(
                "the home directory cannot be removed",
            ));
        }
        let prefix = self.jail.dir_prefix(path)?;
        if self.storage.writing().has_below(&prefix) {
            return Err(StorageError::DirectoryNotEmpty);
        }
        if let Some(dirs) = self.storage.empty_dirs() {
            if dirs.has_below(&prefix) {
                return Err(StorageError::DirectoryNotEmpty);
            }
        }
        let keys = self.first_keys(&prefix, 2).await?;
        if keys.iter().any(|(k, _)| *k != prefix) {
            return Err(StorageError::DirectoryNotEmpty);
        }
        // Kept in memory; a marker written before markers were turned off goes too.
        let kept = self.storage.empty_dirs().is_some_and(|d| d.remove(&prefix));
        if keys.is_empty() {
            if kept {
                return Ok(());
            }
            let key = self.jail.file_key(path)?;
            return Err(match self.head(&key).await? {
                Some(_) => StorageError::NotADirectory,
                None => StorageError::NotFound,
            });
        }
        self.delete_key(&prefix).await
    }

    /// Renames the empty directory `src` that the server keeps in memory (a store
    /// without markers) to `dst`; [`StorageError::NotFound`] if it keeps none there.
    pub(crate) fn move_kept_dir(&self, src: &str, dst: &str) -> Result<()> {
        let Some(dirs) = self.storage.empty_dirs() else {
            return Err(StorageError::NotFound);
        };
        if dirs.has_below(src) {
            return Err(StorageError::Unsupported(
                "renaming a non-empty directory is not supported on S3",
            ));
        }
        if !dirs.contains(src) {
            return Err(StorageError::NotFound);
        }
        dirs.insert(dst, self.jail.prefix())
            .map_err(|_| StorageError::Unsupported(TOO_MANY_EMPTY_DIRS))?;
        dirs.remove(src);
        self.cache.note_created(dst);
        Ok(())
    }

    /// Removes a file. A file another session is writing is removed once its upload has
    /// ended (see [`await_other_writer`](Self::await_other_writer)), so that the commit
    /// does not bring it back.
    pub async fn remove(&self, path: &VirtualPath) -> Result<()> {
        self.check(Permission::Delete, path)?;
        let key = self.jail.file_key(path)?;
        if !path.is_root() {
            self.await_other_writer(&key).await;
        }
        if path.is_root() || self.cached_head(&key).await?.is_none() {
            return Err(match self.dir_entry(path).await? {
                Some(_) => StorageError::IsADirectory,
                None => StorageError::NotFound,
            });
        }
        self.delete_key(&key).await
    }

    /// Lists a directory page by page.
    pub async fn list(&self, path: &VirtualPath) -> Result<DirLister> {
        self.check(Permission::List, path)?;
        match self.stat(path).await? {
            e if e.is_dir() => Ok(DirLister::new(self.clone(), self.jail.dir_prefix(path)?)),
            _ => Err(StorageError::NotADirectory),
        }
    }

    /// Opens a file for reading, pinned to the version seen now.
    pub async fn open_read(&self, path: &VirtualPath) -> Result<Download> {
        self.open_read_with(path, false).await
    }

    /// Like [`open_read`](Self::open_read), but a file this session has just listed or
    /// looked at (its metadata cache has it, with an ETag) opens at once, without waiting
    /// for S3; see [`Download::open_listed`]. Its size is the listed one until the first
    /// read, so callers that announce the size before reading (SCP) use `open_read`.
    pub async fn open_read_listed(&self, path: &VirtualPath) -> Result<Download> {
        self.open_read_with(path, true).await
    }

    async fn open_read_with(&self, path: &VirtualPath, from_listing: bool) -> Result<Download> {
        self.check(Permission::Download, path)?;
        let key = self.jail.file_key(path)?;
        if !path.is_root() {
            self.await_other_writer(&key).await;
            let listed = from_listing
                .then(|| self.cache().get(&key))
                .flatten()
                .filter(|head| head.etag.is_some() && head.size > 0);
            if let Some(head) = listed {
                return Ok(Download::open_listed(self.clone(), key, head));
            }
            if let Some(download) = Download::open(self.clone(), key).await? {
                return Ok(download);
            }
        }
        Err(match self.dir_entry(path).await? {
            Some(_) => StorageError::IsADirectory,
            None => StorageError::NotFound,
        })
    }

    /// Waits (at most [`READ_WAITS_FOR_WRITER`]) until no other session is writing `key`:
    /// a client that closed the file may open it again (or remove it) before its CLOSE is
    /// done (see [`writing`]). The caller goes on with what is stored then, whether the
    /// upload ended or not.
    async fn await_other_writer(&self, key: &str) {
        let writing = self.storage.writing();
        if writing.file(key).is_none() {
            return;
        }
        if !writing
            .wait_ended(key, self.writer_id, READ_WAITS_FOR_WRITER)
            .await
        {
            tracing::info!(key = %crate::log_text::escaped(key), "another session is still writing the file: going on with what is stored");
        }
        // What the session knew of the key is older than the upload that just ended.
        self.cache.forget(key);
    }

    /// Opens a file for writing. Nothing is visible at the key until the upload is
    /// finished; an upload that is dropped unfinished is aborted.
    ///
    /// With `mode.replace` (create or truncate, not exclusive) and the right to overwrite,
    /// whether a file is already there changes nothing, so the open answers at once and
    /// the check that no directory has the name runs alongside the first writes; the
    /// upload is refused at the latest when it is finished.
    pub async fn open_write(
        &self,
        path: &VirtualPath,
        mode: WriteMode,
        size_hint: Option<u64>,
    ) -> Result<Upload> {
        if path.is_root() {
            return Err(StorageError::IsADirectory);
        }
        let key = self.jail.file_key(path)?;
        self.cache.note_created(&key);
        if mode.replace
            && !mode.exclusive
            && self.allows(Permission::Upload, path)
            && self.allows(Permission::Overwrite, path)
        {
            let store = self.clone();
            let target = path.clone();
            let check = tokio::spawn(
                async move { store.refuse_directory(&target).await }.in_current_span(),
            );
            self.note_written(&key);
            let mut upload = Upload::new(
                self.clone(),
                key,
                size_hint,
                Existing::NotLooked,
                Some(AbortOnDropHandle::new(check)),
            );
            upload.show_while_written();
            return Ok(upload);
        }
        // Refuse before looking, so a denied open (EXCL included) reveals nothing about
        // what is at the path.
        self.check(Permission::Upload, path)?;
        // A fresh HEAD, not the cache's: an edit is pinned to the ETag it tells.
        let (file, dir) = tokio::join!(self.head(&key), self.dir_entry_unless_known(path));
        let base = file?;
        let existing = match &base {
            Some(head) => Existing::Present { size: head.size },
            None => Existing::Absent,
        };
        let exists = existing != Existing::Absent;
        if !exists && dir?.is_some() {
            return Err(StorageError::IsADirectory);
        }
        // A file being written exists, as on a local disk.
        if (exists || self.storage.writing().file(&key).is_some()) && mode.exclusive {
            return Err(StorageError::AlreadyExists);
        }
        if exists {
            self.check(Permission::Overwrite, path)?;
        }
        self.note_written(&key);
        let mut upload = Upload::new(self.clone(), key, size_hint, existing, None);
        // A new or truncated file shows at once; one opened to change in place shows as
        // its object until the commit.
        if !exists || mode.replace {
            upload.show_while_written();
        }
        if let Some(head) = base {
            // Not truncated: the file keeps every byte the client does not write over.
            upload.start_edit(Some(upload::Base {
                size: head.size,
                etag: head.etag,
            }));
        }
        Ok(upload)
    }

    /// Sets the size of the file at `path` (SETSTAT size, `truncate`): a server-side
    /// edit that keeps the first `size` bytes (copied) and adds zeros past the old end.
    /// Needs the rights to upload and overwrite there.
    pub async fn set_size(
        &self,
        path: &VirtualPath,
        size: u64,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        let mut upload = self.open_write(path, WriteMode::default(), None).await?;
        if upload.existing_size().is_none() {
            upload.abort().await;
            return Err(StorageError::NotFound);
        }
        if let Some(mtime) = mtime {
            upload.set_mtime(mtime);
        }
        if let Err(e) = upload.set_len(size) {
            upload.abort().await;
            return Err(e);
        }
        upload.finish().await.map(|_| ())
    }

    /// Fails with [`StorageError::IsADirectory`] if `path` is a directory (and no file).
    /// One LIST in the usual case, none when the session knows the parent directory's
    /// subdirectories; the HEAD only when a directory has the name (a file of the same
    /// name wins, and may be replaced).
    async fn refuse_directory(&self, path: &VirtualPath) -> Result<()> {
        let key = self.jail.file_key(path)?;
        if self.cache.get(&key).is_some() || self.dir_entry_unless_known(path).await?.is_none() {
            return Ok(());
        }
        match self.head(&key).await? {
            Some(_) => Ok(()),
            None => Err(StorageError::IsADirectory),
        }
    }

    /// Keeps `mtime` as the modification time of the file at `path` (SETSTAT after the
    /// upload): one HEAD, and one CopyObject in place unless the file has that time
    /// already (see [`set_mtime_of_key`](Self::set_mtime_of_key)). Allowed where the user
    /// may upload and overwrite, and on a file this session has written (an upload-only
    /// user may set the time of what it just uploaded). A directory's time is not kept
    /// (S3 has no directories): accepted and ignored. Returns whether a copy was made.
    pub async fn set_mtime(&self, path: &VirtualPath, mtime: SystemTime) -> Result<bool> {
        if path.is_root() {
            return Ok(false);
        }
        let key = self.jail.file_key(path)?;
        if !self.has_written(&key) {
            self.check(Permission::Upload, path)?;
            self.check(Permission::Overwrite, path)?;
        }
        if self.storage.writing().set_mtime(&key, mtime) {
            // Stored with the object when the upload commits, at no extra request.
            return Ok(false);
        }
        match self.set_mtime_of_key(&key, mtime).await {
            Err(StorageError::NotFound) => match self.dir_entry(path).await? {
                Some(_) => Ok(false),
                None => Err(StorageError::NotFound),
            },
            other => other,
        }
    }

    /// Free space as statvfs reports it: S3 has no limit, so large round numbers.
    pub fn statvfs(&self) -> StatVfs {
        StatVfs {
            block_size: 4096,
            blocks: 1 << 40,
            free_blocks: 1 << 39,
            files: 1 << 40,
            free_files: 1 << 39,
            name_max: 1024,
        }
    }
}

/// The numbers the `statvfs@openssh.com` extension returns.
#[derive(Debug, Clone, Copy)]
pub struct StatVfs {
    pub block_size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub files: u64,
    pub free_files: u64,
    pub name_max: u64,
}
