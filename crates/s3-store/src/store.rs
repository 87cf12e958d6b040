//! On-disk layout and in-memory index of the embedded store.
//!
//! Keys are never used as file names, so any two keys (`a`, `a/`, `a/b`) can coexist and a
//! key can hold any bytes. Layout under the data folder:
//!
//! ```text
//! <data>/.lock                                       advisory lock: one store per folder
//! <data>/<bucket>/bucket.json                        marks a bucket (name, creation time)
//! <data>/<bucket>/objects/<hh>/<sha256(key)>         object bytes
//! <data>/<bucket>/objects/<hh>/<sha256(key)>.json    ObjectMeta sidecar
//! <data>/<bucket>/uploads/<upload_id>/...            multipart uploads (see `parts.rs`)
//! <data>/<bucket>/tmp/                               bodies being received; emptied at start
//! ```
//!
//! Each bucket keeps a `BTreeMap<key, ObjectMeta>` rebuilt from the sidecars at start, so a
//! listing is a range query. Every change of an object (rename of its data file and sidecar)
//! and every open of a data file for reading happens under the bucket's lock, so a reader
//! always gets the bytes that match the metadata it was given.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use s3s::{s3_error, S3Error, S3Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::error::{internal, EmbeddedError};
use super::parts::Upload;

/// What we know about one stored object; also its JSON sidecar on disk.
///
/// Exists so that HEAD, listings and preconditions never touch the data file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ObjectMeta {
    /// The full object key.
    pub(crate) key: String,
    /// Length of the data file in bytes.
    pub(crate) size: u64,
    /// ETag without quotes: hex MD5, or `<hex>-<parts>` for a multipart object.
    pub(crate) etag: String,
    /// Last modification, milliseconds since the Unix epoch.
    pub(crate) last_modified_ms: i64,
    /// Content-Type given at upload, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`), names lowercased.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) metadata: BTreeMap<String, String>,
    /// Part sizes of a multipart object (empty otherwise), for `GET ?partNumber=`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) part_sizes: Vec<u64>,
}

/// The `bucket.json` marker: a folder under the data folder is a bucket only if it has one.
#[derive(Debug, Serialize, Deserialize)]
struct BucketMarker {
    name: String,
    created_ms: i64,
}

/// The whole embedded store: the data folder, its buckets, and the folder lock.
pub(crate) struct Store {
    root: PathBuf,
    buckets: RwLock<BTreeMap<String, Arc<Bucket>>>,
    /// Held open for the store's lifetime; its advisory lock keeps a second store out.
    _lock: fs::File,
}

/// One bucket: its folder and the index of its objects and unfinished uploads.
pub(crate) struct Bucket {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) created_ms: i64,
    state: RwLock<BucketState>,
}

/// The mutable part of a bucket, guarded by one lock so that a listing, a read and a
/// commit each see one consistent state.
#[derive(Default)]
pub(crate) struct BucketState {
    /// Every object, ordered by key bytes (UTF-8 order is byte order).
    pub(crate) objects: BTreeMap<String, ObjectMeta>,
    /// Unfinished multipart uploads by upload id (ids sort by creation time).
    pub(crate) uploads: BTreeMap<String, Upload>,
}

/// How [`Bucket::snapshot_object`] secured the source bytes of a copy.
pub(crate) enum Snapshot {
    /// The destination temporary path is a hard link to the source data file.
    Linked,
    /// Linking failed; the caller copies from this open file.
    Opened(fs::File),
}

/// A file under the bucket's `tmp/` folder that is deleted when dropped unless it was
/// renamed into place first. Keeps failed or abandoned uploads from leaving debris.
pub(crate) struct TempPath {
    path: Option<PathBuf>,
}

impl TempPath {
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the file to `dest` and disarms the guard.
    pub(crate) fn persist(mut self, dest: &Path) -> io::Result<()> {
        let Some(path) = self.path.take() else {
            return Err(io::Error::other("temporary file already persisted"));
        };
        match fs::rename(&path, dest) {
            Ok(()) => {
                // When `path` and `dest` were links to the same file (a copy onto itself),
                // rename(2) succeeds without removing `path`.
                let _ = fs::remove_file(&path);
                Ok(())
            }
            Err(err) => {
                self.path = Some(path);
                Err(err)
            }
        }
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `ms` since the epoch as an `s3s` timestamp.
pub(crate) fn timestamp(ms: i64) -> s3s::dto::Timestamp {
    let ms = u64::try_from(ms).unwrap_or(0);
    s3s::dto::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Lowercase hex of `n` random bytes.
pub(crate) fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    let bytes: Vec<u8> = (0..n).map(|_| rng.random::<u8>()).collect();
    hex::encode(bytes)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

impl Store {
    /// Opens (creating if needed) the data folder, takes its lock and loads every bucket.
    /// Blocking: call from `spawn_blocking`.
    pub(crate) fn open(root: &Path) -> Result<Store, EmbeddedError> {
        crate::private::create_dir_all(root)
            .and_then(|()| crate::private::restrict_dir(root))
            .map_err(|e| EmbeddedError::io("create folder", root, e))?;
        let lock_path = root.join(".lock");
        let lock = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| EmbeddedError::io("open", &lock_path, e))?;
        take_lock(&lock, root)?;

        let mut buckets = BTreeMap::new();
        let entries = fs::read_dir(root).map_err(|e| EmbeddedError::io("read folder", root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| EmbeddedError::io("read folder", root, e))?;
            let dir = entry.path();
            if !dir.join("bucket.json").is_file() {
                continue;
            }
            match Bucket::load(&dir) {
                Ok(bucket) => {
                    buckets.insert(bucket.name.clone(), Arc::new(bucket));
                }
                Err(err) => {
                    warn!(dir = %dir.display(), error = %err, "embedded S3 store: skipping unreadable bucket")
                }
            }
        }
        Ok(Store {
            root: root.to_owned(),
            buckets: RwLock::new(buckets),
            _lock: lock,
        })
    }

    /// The bucket called `name`, or `NoSuchBucket`.
    pub(crate) fn bucket(&self, name: &str) -> S3Result<Arc<Bucket>> {
        let buckets = self.buckets.read().unwrap_or_else(PoisonError::into_inner);
        buckets
            .get(name)
            .cloned()
            .ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))
    }

    /// Every bucket, by name.
    pub(crate) fn buckets(&self) -> Vec<Arc<Bucket>> {
        let buckets = self.buckets.read().unwrap_or_else(PoisonError::into_inner);
        buckets.values().cloned().collect()
    }

    /// Creates bucket `name`; `BucketAlreadyOwnedByYou` if it exists.
    pub(crate) fn add_bucket(&self, name: &str) -> S3Result<Arc<Bucket>> {
        let mut buckets = self.buckets.write().unwrap_or_else(PoisonError::into_inner);
        if buckets.contains_key(name) {
            return Err(s3_error!(BucketAlreadyOwnedByYou, "Your previous request to create the named bucket succeeded and you already own it."));
        }
        let bucket = Bucket::create(&self.root.join(name), name)
            .map_err(|e| internal("create bucket", e))?;
        let bucket = Arc::new(bucket);
        buckets.insert(name.to_owned(), Arc::clone(&bucket));
        Ok(bucket)
    }

    /// Creates bucket `name` at start-up unless it exists.
    pub(crate) fn ensure_bucket(&self, name: &str) -> Result<(), EmbeddedError> {
        let mut buckets = self.buckets.write().unwrap_or_else(PoisonError::into_inner);
        if buckets.contains_key(name) {
            return Ok(());
        }
        let dir = self.root.join(name);
        let bucket = Bucket::create(&dir, name)
            .map_err(|e| EmbeddedError::io("create bucket folder", &dir, e))?;
        buckets.insert(name.to_owned(), Arc::new(bucket));
        Ok(())
    }

    /// Deletes an empty bucket (unfinished uploads go with it).
    pub(crate) fn remove_bucket(&self, name: &str) -> S3Result<()> {
        let mut buckets = self.buckets.write().unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = buckets.get(name) else {
            return Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ));
        };
        if !bucket.read().objects.is_empty() {
            return Err(s3_error!(
                BucketNotEmpty,
                "The bucket you tried to delete is not empty"
            ));
        }
        let dir = bucket.dir.clone();
        buckets.remove(name);
        // Remove the marker first so a half-removed folder is not loaded again.
        let _ = fs::remove_file(dir.join("bucket.json"));
        fs::remove_dir_all(&dir).map_err(|e| internal("delete bucket", e))
    }
}

/// Takes the folder's advisory lock, waiting up to two seconds for a store that is still
/// shutting down in this process.
fn take_lock(lock: &fs::File, root: &Path) -> Result<(), EmbeddedError> {
    for _ in 0..40 {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(50)),
            Err(fs::TryLockError::Error(err)) => {
                return Err(EmbeddedError::io("lock", root.join(".lock"), err));
            }
        }
    }
    Err(EmbeddedError::Locked(root.to_owned()))
}

impl Bucket {
    fn create(dir: &Path, name: &str) -> io::Result<Bucket> {
        for sub in ["objects", "uploads", "tmp"] {
            crate::private::create_dir_all(&dir.join(sub))?;
        }
        let marker = BucketMarker {
            name: name.to_owned(),
            created_ms: now_ms(),
        };
        let json = serde_json::to_vec_pretty(&marker).map_err(io::Error::other)?;
        let tmp = dir
            .join("tmp")
            .join(format!("bucket-{}.json", random_hex(8)));
        std::io::Write::write_all(&mut crate::private::create_file(&tmp)?, &json)?;
        fs::rename(&tmp, dir.join("bucket.json"))?;
        Ok(Bucket {
            name: marker.name,
            dir: dir.to_owned(),
            created_ms: marker.created_ms,
            state: RwLock::new(BucketState::default()),
        })
    }

    /// Loads a bucket folder: empties `tmp/`, reads every object sidecar and upload.
    fn load(dir: &Path) -> io::Result<Bucket> {
        let marker: BucketMarker = read_json(&dir.join("bucket.json"))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        for sub in ["objects", "uploads", "tmp"] {
            crate::private::create_dir_all(&dir.join(sub))?;
        }
        let bucket = Bucket {
            name: marker.name,
            dir: dir.to_owned(),
            created_ms: marker.created_ms,
            state: RwLock::new(BucketState::default()),
        };
        let mut state = BucketState::default();
        for shard in fs::read_dir(dir.join("objects"))? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in fs::read_dir(&shard)? {
                let path = file?.path();
                if path.extension().is_some_and(|ext| ext == "json") {
                    match bucket.load_object(&path) {
                        Ok(meta) => {
                            state.objects.insert(meta.key.clone(), meta);
                        }
                        Err(err) => {
                            warn!(file = %path.display(), error = %err, "embedded S3 store: skipping object")
                        }
                    }
                }
            }
        }
        state.uploads = bucket.load_uploads()?;
        *bucket.write() = state;
        Ok(bucket)
    }

    fn load_object(&self, sidecar: &Path) -> io::Result<ObjectMeta> {
        let meta: ObjectMeta = read_json(sidecar)?;
        let (data, expected_sidecar) = self.object_paths(&meta.key);
        if expected_sidecar != sidecar {
            return Err(io::Error::other("sidecar is not named after its key"));
        }
        let len = fs::metadata(&data)?.len();
        if len != meta.size {
            return Err(io::Error::other(format!(
                "data file has {len} bytes, sidecar says {}",
                meta.size
            )));
        }
        Ok(meta)
    }

    /// The bucket's state for reading.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, BucketState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bucket's state for changing.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, BucketState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh, not yet created, temporary file path under `tmp/`.
    pub(crate) fn temp_path(&self) -> TempPath {
        TempPath {
            path: Some(self.dir.join("tmp").join(random_hex(16))),
        }
    }

    /// Writes `value` as JSON to a temporary file, ready to be renamed into place.
    pub(crate) fn write_temp_json<T: Serialize>(&self, value: &T) -> io::Result<TempPath> {
        let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        let tmp = self.temp_path();
        std::io::Write::write_all(&mut crate::private::create_file(tmp.path())?, &json)?;
        Ok(tmp)
    }

    /// Data file and sidecar of `key`: `objects/<hh>/<sha256hex>` and `….json`.
    pub(crate) fn object_paths(&self, key: &str) -> (PathBuf, PathBuf) {
        let hash = hex::encode(Sha256::digest(key.as_bytes()));
        let shard = self.dir.join("objects").join(hash.get(..2).unwrap_or("00"));
        let sidecar = shard.join(format!("{hash}.json"));
        (shard.join(hash), sidecar)
    }

    /// The metadata of `key`, if it exists.
    pub(crate) fn meta(&self, key: &str) -> Option<ObjectMeta> {
        self.read().objects.get(key).cloned()
    }

    /// Metadata and an open data file of `key`, taken together under the lock so that they
    /// describe the same version even if the object is being overwritten.
    pub(crate) fn open_object(&self, key: &str) -> S3Result<(ObjectMeta, fs::File)> {
        let state = self.read();
        let Some(meta) = state.objects.get(key) else {
            return Err(no_such_key());
        };
        let (data, _) = self.object_paths(key);
        let file = fs::File::open(&data).map_err(|e| internal("open object", e))?;
        Ok((meta.clone(), file))
    }

    /// Metadata of `key` and its bytes at `dest` (a temporary path of any bucket): a hard
    /// link when the file system allows it (a copy costs nothing then, which makes SFTP
    /// renames cheap), else an open file to copy from. Taken under the lock, like a read.
    pub(crate) fn snapshot_object(
        &self,
        key: &str,
        dest: &Path,
    ) -> S3Result<(ObjectMeta, Snapshot)> {
        let state = self.read();
        let Some(meta) = state.objects.get(key) else {
            return Err(no_such_key());
        };
        let (data, _) = self.object_paths(key);
        let snapshot = match fs::hard_link(&data, dest) {
            Ok(()) => Snapshot::Linked,
            Err(_) => {
                Snapshot::Opened(fs::File::open(&data).map_err(|e| internal("open object", e))?)
            }
        };
        Ok((meta.clone(), snapshot))
    }

    /// Makes `data` the content of `meta.key`. `check` sees the current version (if any)
    /// under the lock and may refuse the write (conditional PUT, copy onto itself, …).
    pub(crate) fn commit_object(
        &self,
        data: TempPath,
        meta: ObjectMeta,
        check: impl FnOnce(Option<&ObjectMeta>) -> S3Result<()>,
    ) -> S3Result<()> {
        let (data_path, sidecar_path) = self.object_paths(&meta.key);
        if let Some(shard) = data_path.parent() {
            crate::private::create_dir_all(shard)
                .map_err(|e| internal("create object folder", e))?;
        }
        let sidecar = self
            .write_temp_json(&meta)
            .map_err(|e| internal("write object metadata", e))?;

        let mut state = self.write();
        check(state.objects.get(&meta.key))?;
        data.persist(&data_path)
            .map_err(|e| internal("store object", e))?;
        if let Err(err) = sidecar.persist(&sidecar_path) {
            // The bytes are in place; keep the index right and report the stale sidecar.
            tracing::error!(error = %err, key = %meta.key, "embedded S3 store: cannot write object metadata");
        }
        state.objects.insert(meta.key.clone(), meta);
        Ok(())
    }

    /// Deletes `key` if `check` accepts its current version; returns whether it existed.
    pub(crate) fn delete_object(
        &self,
        key: &str,
        check: impl FnOnce(Option<&ObjectMeta>) -> S3Result<()>,
    ) -> S3Result<bool> {
        let (data, sidecar) = self.object_paths(key);
        let mut state = self.write();
        check(state.objects.get(key))?;
        if state.objects.remove(key).is_none() {
            return Ok(false);
        }
        // Sidecar first: a crash in between leaves an orphan data file, never a resurrection.
        remove_if_exists(&sidecar).map_err(|e| internal("delete object metadata", e))?;
        remove_if_exists(&data).map_err(|e| internal("delete object", e))?;
        Ok(true)
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The `NoSuchKey` error.
pub(crate) fn no_such_key() -> S3Error {
    s3_error!(NoSuchKey, "The specified key does not exist.")
}
