//! Rename as S3 allows it: a server-side copy (CopyObject up to 5 GiB, parallel
//! UploadPartCopy beyond), then delete the source. The source is deleted only after the
//! copy succeeded, so a failure leaves the original in place.

use super::s3::{Completed, CopySource, Multipart, ObjectOptions};
use super::{Entry, EntryKind, ObjectHead, Result, StorageError, UserStore, VirtualPath};
use crate::users::Permission;

/// What [`UserStore::rename_target`] found.
enum Target {
    /// No directory has the name; a file may.
    NoDirectory,
    /// What a full lookup found.
    Found(Entry),
}

/// CopyObject's size limit.
const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;
/// Part size for UploadPartCopy of large objects.
const COPY_PART: u64 = 512 * 1024 * 1024;
/// UploadPartCopy requests in flight.
const COPY_CONCURRENCY: usize = 4;

impl UserStore {
    /// Renames `from` to `to`. With `overwrite` false an existing target is an error
    /// (SFTP RENAME); with it true the target is replaced (posix-rename).
    pub async fn rename(
        &self,
        from: &VirtualPath,
        to: &VirtualPath,
        overwrite: bool,
    ) -> Result<()> {
        if from.is_root() || to.is_root() {
            return Err(StorageError::Unsupported(
                "the home directory cannot be renamed",
            ));
        }
        self.check(Permission::Rename, from)?;
        self.check(Permission::Rename, to)?;
        if from == to {
            return self.stat(from).await.map(|_| ());
        }
        // Both lookups go out together: a rename costs one round of S3 requests less.
        let (source, target) = tokio::join!(self.stat(from), self.rename_target(to, overwrite));
        let source = source?;
        if to.starts_with(from) {
            return Err(StorageError::Invalid(
                "cannot move a directory into itself".into(),
            ));
        }
        let target = match target {
            // Only a file may replace a file: a directory needs the whole answer.
            Ok(Target::NoDirectory) if source.kind == EntryKind::Dir => self.stat(to).await,
            Ok(Target::NoDirectory) => Err(StorageError::NotFound),
            Ok(Target::Found(entry)) => Ok(entry),
            Err(e) => Err(e),
        };
        match target {
            Ok(target) if target.is_dir() => return Err(StorageError::AlreadyExists),
            Ok(_) if !overwrite || source.kind == EntryKind::Dir => {
                return Err(StorageError::AlreadyExists)
            }
            Ok(_) => self.check(Permission::Overwrite, to)?,
            Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
        match source.kind {
            EntryKind::File => self.rename_file(from, to).await,
            EntryKind::Dir => self.rename_empty_dir(from, to).await,
        }
    }

    /// What is at a rename's target, as far as the rename needs to know. A rename that
    /// may replace a file (posix-rename, with the right to overwrite) only has to know
    /// whether a directory has the name: no HEAD, and no LIST either when this session
    /// knows there is none (it listed the parent, or looked the name up, moments ago).
    async fn rename_target(&self, to: &VirtualPath, overwrite: bool) -> Result<Target> {
        if overwrite
            && self.allows(Permission::Overwrite, to)
            && self.dir_entry_unless_known(to).await?.is_none()
        {
            return Ok(Target::NoDirectory);
        }
        // Otherwise the whole lookup: a file of the name wins over a directory.
        self.stat(to).await.map(Target::Found)
    }

    async fn rename_file(&self, from: &VirtualPath, to: &VirtualPath) -> Result<()> {
        let src = self.jail().file_key(from)?;
        let dst = self.jail().file_key(to)?;
        let head = self
            .cached_head(&src)
            .await?
            .ok_or(StorageError::NotFound)?;
        self.cache().forget(&dst);
        self.cache().note_created(&dst);
        if let Some(copied) = self.copy_object(&src, &dst, &head).await? {
            // What this session just wrote: a STAT or a rename back needs no HEAD.
            self.cache().insert(&dst, copied);
        }
        self.delete_key(&src).await?;
        tracing::debug!(from = %src, to = %dst, "renamed");
        Ok(())
    }

    async fn rename_empty_dir(&self, from: &VirtualPath, to: &VirtualPath) -> Result<()> {
        let src = self.jail().dir_prefix(from)?;
        let dst = self.jail().dir_prefix(to)?;
        let keys = self.first_keys(&src, 2).await?;
        if keys.iter().any(|(k, _)| *k != src) {
            return Err(StorageError::Unsupported(
                "renaming a non-empty directory is not supported on S3",
            ));
        }
        if keys.is_empty() {
            return Err(StorageError::NotFound);
        }
        let head = self.head(&src).await?.ok_or(StorageError::NotFound)?;
        self.cache().note_created(&dst);
        self.copy_object(&src, &dst, &head).await?;
        self.delete_key(&src).await
    }

    /// Server-side copy of `src` to `dst`, pinned to the source's ETag. Returns the copy's
    /// metadata when S3 told its ETag (CopyObject does; the multipart copy of objects
    /// above 5 GiB is not looked at).
    pub(crate) async fn copy_object(
        &self,
        src: &str,
        dst: &str,
        head: &ObjectHead,
    ) -> Result<Option<ObjectHead>> {
        if head.size > MAX_COPY_OBJECT {
            return self.copy_multipart(src, dst, head).await.map(|_| None);
        }
        let copied = self
            .storage()
            .s3()
            .copy_object(src, dst, head.etag.as_deref(), &ObjectOptions::default())
            .await?;
        // The size is the source's only when the copy was pinned to its ETag.
        let pinned = head.etag.is_some();
        Ok(copied
            .filter(|_| pinned)
            .map(|(etag, modified)| ObjectHead {
                size: head.size,
                etag: Some(etag),
                modified,
                dir_marker: false,
            }))
    }

    /// Copies `src` to `dst` part by part (UploadPartCopy, a few in flight).
    async fn copy_multipart(&self, src: &str, dst: &str, head: &ObjectHead) -> Result<Completed> {
        let s3 = self.storage().s3();
        let mut mp = Multipart::create(s3, dst, &ObjectOptions::default()).await?;
        let result = copy_parts(&mut mp, src, head).await;
        let result = match result {
            Ok(()) => mp.complete(head.size).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            mp.abort().await;
        }
        result
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
