//! Rename as S3 allows it: a server-side copy (CopyObject up to 5 GiB, parallel
//! UploadPartCopy beyond), then delete the source. The source is deleted only after the
//! copy succeeded, so a failure leaves the original in place.

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::task::JoinSet;

use super::error::s3_error;
use super::{
    to_system_time, Entry, EntryKind, ObjectHead, Result, StorageError, UserStore, VirtualPath,
};
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
        let storage = self.storage();
        let source = copy_source(storage.bucket(), src);
        if head.size <= MAX_COPY_OBJECT {
            let mut request = storage
                .client()
                .copy_object()
                .bucket(storage.bucket())
                .key(dst)
                .copy_source(&source);
            if let Some(etag) = &head.etag {
                request = request.copy_source_if_match(etag);
            }
            let out = request
                .send()
                .await
                .map_err(|e| s3_error("CopyObject", e))?;
            // The size is the source's only when the copy was pinned to its ETag.
            let pinned = head.etag.is_some();
            return Ok(out
                .copy_object_result()
                .filter(|_| pinned)
                .and_then(|result| {
                    Some(ObjectHead {
                        size: head.size,
                        etag: Some(result.e_tag()?.to_string()),
                        modified: result.last_modified().and_then(to_system_time),
                        dir_marker: false,
                    })
                }));
        }
        self.copy_multipart(&source, dst, head).await.map(|()| None)
    }

    async fn copy_multipart(&self, source: &str, dst: &str, head: &ObjectHead) -> Result<()> {
        let storage = self.storage();
        let client = storage.client();
        let out = client
            .create_multipart_upload()
            .bucket(storage.bucket())
            .key(dst)
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", e))?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| StorageError::Invalid("S3 returned no upload id".into()))?
            .to_string();
        let result = self.copy_parts(source, dst, head, &upload_id).await;
        let completed = match result {
            Ok(parts) => client
                .complete_multipart_upload()
                .bucket(storage.bucket())
                .key(dst)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| s3_error("CompleteMultipartUpload", e)),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            let _ = client
                .abort_multipart_upload()
                .bucket(storage.bucket())
                .key(dst)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        completed
    }

    async fn copy_parts(
        &self,
        source: &str,
        dst: &str,
        head: &ObjectHead,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let part_size = COPY_PART.max(head.size.div_ceil(10_000));
        let mut tasks: JoinSet<Result<CompletedPart>> = JoinSet::new();
        let mut done = Vec::new();
        let mut start = 0u64;
        let mut part_number = 1i32;
        while start < head.size {
            while tasks.len() >= COPY_CONCURRENCY {
                if let Some(joined) = tasks.join_next().await {
                    done.push(join_copy(joined)?);
                }
            }
            let end = (start + part_size).min(head.size) - 1;
            let storage = self.storage();
            let mut request = storage
                .client()
                .upload_part_copy()
                .bucket(storage.bucket())
                .key(dst)
                .upload_id(upload_id)
                .part_number(part_number)
                .copy_source(source)
                .copy_source_range(format!("bytes={start}-{end}"));
            if let Some(etag) = &head.etag {
                request = request.copy_source_if_match(etag);
            }
            tasks.spawn(async move {
                let out = request
                    .send()
                    .await
                    .map_err(|e| s3_error("UploadPartCopy", e))?;
                Ok(CompletedPart::builder()
                    .part_number(part_number)
                    .set_e_tag(
                        out.copy_part_result()
                            .and_then(|r| r.e_tag())
                            .map(str::to_string),
                    )
                    .build())
            });
            start = end + 1;
            part_number += 1;
        }
        while let Some(joined) = tasks.join_next().await {
            done.push(join_copy(joined)?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }
}

fn join_copy(
    joined: std::result::Result<Result<CompletedPart>, tokio::task::JoinError>,
) -> Result<CompletedPart> {
    joined.map_err(|e| StorageError::Invalid(format!("copy task failed: {e}")))?
}

/// `bucket/key` with the key percent-encoded, as the x-amz-copy-source header wants it.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    out.push_str(bucket);
    out.push('/');
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_source_encodes_everything_but_unreserved() {
        assert_eq!(
            super::copy_source("b", "u/a b+c%#ü"),
            "b/u/a%20b%2Bc%25%23%C3%BC"
        );
    }
}
