//! A session's calls on the bucket: every S3 call that reads or changes an object,
//! wrapped with the metadata-cache work it implies (what a HEAD, GET or listing taught
//! is remembered; a key written or removed is forgotten; a key created marks its
//! directories). Flows (`mod.rs`, `upload`, `download`, `rename`, `list`) call these, so
//! a new call site cannot forget the bookkeeping.

use std::collections::HashSet;
use std::time::SystemTime;

use bytes::Bytes;

use super::cache::Snapshot;
use super::mtime::whole_seconds;
use super::s3::{
    Completed, CopySource, GetFailure, HeadFailure, ListPage, Multipart, ObjectOptions, Ranged,
    MTIME_KEY,
};
use super::{ObjectHead, Result, UserStore, DIRECTORY_CONTENT_TYPE};

/// Keys per ListObjectsV2 page of a directory listing (the S3 maximum).
const PAGE: i32 = 1000;
/// CopyObject's size limit.
const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;
/// Part size for UploadPartCopy of large objects.
const COPY_PART: u64 = 512 * 1024 * 1024;
/// UploadPartCopy requests in flight.
const COPY_CONCURRENCY: usize = 4;

impl UserStore {
    /// HEAD of one key; `None` if it does not exist. Remembered.
    ///
    /// A 403 is "not found" when a listing under the key proves that nothing is there:
    /// a policy that grants `s3:ListBucket` only under the users' prefixes makes S3 answer
    /// a HEAD of a missing key with 403. One ListObjectsV2 more, only on a 403.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectHead>> {
        let head = self
            .absent_if_denied(key, self.s3().head_object(key).await)
            .await?;
        if let Some(head) = &head {
            self.cache().insert(key, head.clone());
        }
        Ok(head)
    }

    /// Whether a listing under `key` (one key, no delimiter) shows that there is no
    /// object at `key`. A failed listing proves nothing.
    /// A HEAD's answer, with a 403 taken as "not found" when a listing proves it (see
    /// [`UserStore::head`]).
    async fn absent_if_denied<T>(
        &self,
        key: &str,
        answer: std::result::Result<Option<T>, HeadFailure>,
    ) -> Result<Option<T>> {
        match answer {
            Ok(found) => Ok(found),
            Err(HeadFailure::Other(err)) => Err(err),
            Err(HeadFailure::Denied(_)) if self.listing_proves_absent(key).await => Ok(None),
            Err(HeadFailure::Denied(failure)) => Err(failure.into_error("HeadObject")),
        }
    }

    async fn listing_proves_absent(&self, key: &str) -> bool {
        match self.s3().list_page(key, None, 1, None).await {
            // The key itself sorts before every other key it is a prefix of.
            Ok(page) => page.objects.first().is_none_or(|o| o.key != key),
            Err(_) => false,
        }
    }

    /// What this session recently learnt about `key`, else a HEAD.
    pub(crate) async fn cached_head(&self, key: &str) -> Result<Option<ObjectHead>> {
        match self.cache().get(key) {
            Some(head) => Ok(Some(head)),
            None => self.head(key).await,
        }
    }

    /// The first (up to) `max` keys under `prefix`, without a delimiter.
    pub(crate) async fn first_keys(
        &self,
        prefix: &str,
        max: i32,
    ) -> Result<Vec<(String, Option<SystemTime>)>> {
        let page = self.s3().list_page(prefix, None, max, None).await?;
        Ok(page
            .objects
            .into_iter()
            .map(|o| (o.key, o.head.modified))
            .collect())
    }

    /// The first key under the directory prefix `prefix`, if any. A lookup that finds
    /// nothing is remembered (unless this session created a key meanwhile).
    pub(crate) async fn first_key_in(
        &self,
        prefix: &str,
    ) -> Result<Option<(String, Option<SystemTime>)>> {
        let looked = self.cache().snapshot();
        let first = self.first_keys(prefix, 1).await?.into_iter().next();
        if first.is_none() {
            self.cache().insert_absent(prefix, looked);
        }
        Ok(first)
    }

    /// One page of the directory `prefix` (grouped by `/`), from `token`. The objects
    /// listed are remembered.
    pub(crate) async fn list_dir_page(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<ListPage> {
        let page = self.s3().list_page(prefix, Some("/"), PAGE, token).await?;
        let cache = self.cache();
        for object in &page.objects {
            if object
                .key
                .strip_prefix(prefix)
                .is_some_and(|name| !name.is_empty())
            {
                // A HEAD's kept time stays known while the object is the same version.
                let mut head = object.head.clone();
                if let Some(known) = cache.get(&object.key) {
                    if known.etag.is_some() && known.etag == head.etag {
                        head.mtime = known.mtime;
                    }
                }
                cache.insert(&object.key, head);
            }
        }
        Ok(page)
    }

    /// The first `len` bytes of `key`, with the object's metadata, which is remembered.
    pub(crate) async fn get_first(
        &self,
        key: &str,
        len: u64,
    ) -> std::result::Result<Ranged, GetFailure> {
        let out = match self.s3().get_range(key, 0, len, None).await {
            Ok(out) => out,
            // As for a HEAD (see `head`): a 403 of a missing key under a prefix-scoped policy.
            Err(GetFailure::Denied(failure)) => {
                return Err(if self.listing_proves_absent(key).await {
                    GetFailure::NotFound
                } else {
                    GetFailure::Other(failure.into_error("GetObject"))
                });
            }
            Err(other) => return Err(other),
        };
        self.cache().insert(key, out.head.clone());
        Ok(out)
    }

    /// Writes the `dir/` marker `marker` of a directory that had nothing under its name
    /// as of `looked`: the new directory is remembered as having no subdirectories, so
    /// uploads into it need not ask S3 for one.
    pub(crate) async fn put_dir_marker(&self, marker: &str, looked: Snapshot) -> Result<()> {
        let options = ObjectOptions {
            content_type: Some(DIRECTORY_CONTENT_TYPE),
            ..self.storage().object_options()
        };
        self.s3().put_object(marker, Bytes::new(), &options).await?;
        self.cache().insert_dir(marker, HashSet::new(), looked);
        self.cache().note_created(marker);
        Ok(())
    }

    /// PutObject of an upload's bytes, with its kept modification time when the client
    /// set one (the open marked the key created).
    pub(crate) async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        self.cache().forget(key);
        let options = ObjectOptions {
            mtime,
            ..self.storage().object_options()
        };
        self.s3().put_object(key, body, &options).await?;
        self.note_filled(key);
        Ok(())
    }

    /// Stores `mtime` as the modification time of the object at `key`, unless it has
    /// that time already (to the second: SFTP v3 times are whole seconds). One HEAD,
    /// then one CopyObject onto itself (MetadataDirective REPLACE, pinned to the ETag the
    /// HEAD saw) that keeps Content-Type and the other user metadata and writes class and
    /// encryption as configured. Returns whether a copy was made; `NotFound` if there is
    /// no object.
    pub(crate) async fn set_mtime_of_key(&self, key: &str, mtime: SystemTime) -> Result<bool> {
        let found = self
            .absent_if_denied(key, self.s3().head_object_full(key).await)
            .await?;
        let Some((head, mut extra)) = found else {
            return Err(super::StorageError::NotFound);
        };
        let stored = head.mtime.flatten().map(whole_seconds);
        if stored == Some(whole_seconds(mtime)) {
            self.cache().insert(key, head);
            return Ok(false);
        }
        if head.size > MAX_COPY_OBJECT {
            return Err(super::StorageError::Unsupported(
                "setting the modification time of a file over 5 GiB after its upload is not supported",
            ));
        }
        extra
            .metadata
            .insert(MTIME_KEY.to_string(), super::mtime::format(mtime));
        self.cache().forget(key);
        let copied = self
            .s3()
            .replace_metadata(
                key,
                head.etag.as_deref(),
                &extra,
                &self.storage().object_options(),
            )
            .await?;
        if let Some((etag, modified)) = copied {
            self.cache().insert(
                key,
                ObjectHead {
                    size: head.size,
                    etag: Some(etag),
                    modified,
                    dir_marker: head.dir_marker,
                    mtime: Some(Some(mtime)),
                },
            );
        }
        tracing::debug!(%key, "modification time stored by a copy in place");
        Ok(true)
    }

    /// Completes an upload's `mp` at `key`, `size` bytes (the open marked the key created).
    pub(crate) async fn complete_upload(
        &self,
        mp: &mut Multipart,
        key: &str,
        size: u64,
    ) -> Result<()> {
        self.cache().forget(key);
        if let Completed::FoundInPlace(head) = mp.complete(size).await? {
            self.cache().insert(key, head);
        }
        self.note_filled(key);
        Ok(())
    }

    /// Removes `key`. On a store without markers, the directory the removed file was in
    /// stays (kept in memory) when it is left empty, as on a file system.
    pub(crate) async fn delete_key(&self, key: &str) -> Result<()> {
        self.cache().forget(key);
        self.s3().delete_object(key).await?;
        if self.storage().empty_dirs().is_some() && !key.ends_with('/') {
            self.keep_emptied_parent(key).await;
        }
        Ok(())
    }

    /// An object was written at `key`: the empty directories kept in memory on its way
    /// now exist by it.
    fn note_filled(&self, key: &str) {
        if let Some(dirs) = self.storage().empty_dirs() {
            dirs.filled(key);
        }
    }

    /// Keeps in memory the directory of the removed file `key` if nothing is left in it
    /// (the home directory always exists). One LIST, on stores without markers only.
    async fn keep_emptied_parent(&self, key: &str) {
        let Some(dirs) = self.storage().empty_dirs() else {
            return;
        };
        let Some(parent) = key.rfind('/').and_then(|end| key.get(..=end)) else {
            return;
        };
        if parent.len() <= self.jail().prefix().len() {
            return;
        }
        match self.first_keys(parent, 1).await {
            Ok(keys) if keys.is_empty() => {
                if dirs.insert(parent, self.jail().prefix()).is_err() {
                    tracing::warn!(dir = %parent, "too many empty directories kept in memory: this one is gone");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(dir = %parent, "could not tell whether the directory is empty: {e}")
            }
        }
    }

    /// Server-side copy of `src` (as `head` describes it) to `dst`, pinned to the source's
    /// ETag: CopyObject up to 5 GiB, parallel UploadPartCopy beyond. The copy is
    /// remembered when S3 told its ETag (CopyObject does; the multipart copy is not
    /// looked at).
    pub(crate) async fn copy_object(&self, src: &str, dst: &str, head: &ObjectHead) -> Result<()> {
        self.cache().forget(dst);
        self.cache().note_created(dst);
        if head.size > MAX_COPY_OBJECT {
            self.copy_multipart(src, dst, head).await?;
            self.note_filled(dst);
            return Ok(());
        }
        let copied = self
            .s3()
            .copy_object(
                src,
                dst,
                head.etag.as_deref(),
                &self.storage().object_options(),
            )
            .await?;
        // The size is the source's only when the copy was pinned to its ETag.
        if let (Some((etag, modified)), true) = (copied, head.etag.is_some()) {
            // What this session just wrote: a STAT or a rename back needs no HEAD.
            let copy = ObjectHead {
                size: head.size,
                etag: Some(etag),
                modified,
                dir_marker: head.dir_marker,
                mtime: head.mtime,
            };
            self.cache().insert(dst, copy);
        }
        self.note_filled(dst);
        Ok(())
    }

    /// Copies `src` to `dst` part by part; on failure the copy's upload is aborted.
    async fn copy_multipart(&self, src: &str, dst: &str, head: &ObjectHead) -> Result<()> {
        let options = self.storage().object_options();
        let mut mp = Multipart::create(self.s3(), dst, &options).await?;
        let result = match copy_parts(&mut mp, src, head).await {
            Ok(()) => mp.complete(head.size).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                mp.abort().await;
                Err(e)
            }
        }
    }
}

/// Copies `head.size` bytes of `src` into `mp`, in parts of at least [`COPY_PART`].
async fn copy_parts(mp: &mut Multipart, src: &str, head: &ObjectHead) -> Result<()> {
    let part_size = COPY_PART.max(head.size.div_ceil(10_000));
    let mut start = 0u64;
    while start < head.size {
        mp.wait_below(COPY_CONCURRENCY).await?;
        let end = (start + part_size).min(head.size) - 1;
        mp.spawn_copy(CopySource {
            key: src.to_string(),
            start,
            end,
            if_match: head.etag.clone(),
        })?;
        start = end + 1;
    }
    mp.join_all().await
}
