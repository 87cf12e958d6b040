//! One multipart upload's lifecycle, shared by streamed uploads (parts from bytes) and
//! server-side copies (parts copied from a source range): create, parts in flight,
//! complete (with the recovery of a Complete whose answer was lost), abort. Parts of
//! both kinds may be mixed in one upload, and an upload can be taken up again from the
//! parts S3 already has (ListParts).

use bytes::Bytes;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{ObjectOptions, Part, S3};
use crate::storage::{ObjectHead, Result, StorageError};

/// S3's part-count limit.
pub(crate) const MAX_PARTS: u64 = 10_000;

/// A byte range of another object to copy as one part.
#[derive(Debug, Clone)]
pub(crate) struct CopySource {
    pub key: String,
    /// First byte of the range.
    pub start: u64,
    /// Last byte of the range (inclusive).
    pub end: u64,
    /// The source's ETag the copy is pinned to, if known.
    pub if_match: Option<String>,
}

/// How [`Multipart::complete`] ended.
#[derive(Debug)]
pub(crate) enum Completed {
    /// S3 answered the Complete.
    Stored,
    /// The Complete's answer was lost, but the object these parts make is at the key
    /// (as HEAD told it).
    FoundInPlace(ObjectHead),
}

/// A multipart upload in progress. Not `Clone`: one owner completes or aborts it.
pub(crate) struct Multipart {
    s3: S3,
    key: String,
    upload_id: String,
    next_part: i32,
    in_flight: JoinSet<Result<Part>>,
    done: Vec<Part>,
    /// Whether the parts' ETags may be other than their MD5s (SSE-KMS): then the ETag of
    /// the object they make cannot be computed, and a lost Complete is recognised another
    /// way (see [`Multipart::in_place`]).
    opaque_etags: bool,
    /// Already aborted (by [`Multipart::in_place`]): a later abort has nothing to do.
    aborted: bool,
}

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipart")
            .field("key", &self.key)
            .field("upload_id", &self.upload_id)
            .field("next_part", &self.next_part)
            .finish()
    }
}

impl Multipart {
    /// Starts a multipart upload at `key`.
    pub(crate) async fn create(s3: S3, key: &str, options: &ObjectOptions) -> Result<Self> {
        let upload_id = s3.create_multipart(key, options).await?;
        tracing::debug!(%key, %upload_id, "multipart upload started");
        Ok(Multipart {
            s3,
            key: key.to_string(),
            upload_id,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            opaque_etags: options.encryption.is_kms(),
            aborted: false,
        })
    }

    /// Takes up `upload_id` again from the parts S3 has of it; new parts follow the last.
    #[allow(dead_code)] // the start of resumed uploads (issue 17); nothing resumes yet
    pub(crate) async fn resume(
        s3: S3,
        key: &str,
        upload_id: &str,
        options: &ObjectOptions,
    ) -> Result<(Self, u64)> {
        let listed = s3.list_parts(key, upload_id).await?;
        let size = listed.iter().map(|p| p.size).sum();
        let done: Vec<Part> = listed.into_iter().map(|p| p.part).collect();
        let next_part = done.last().map_or(1, |p| p.number + 1);
        Ok((
            Multipart {
                s3,
                key: key.to_string(),
                upload_id: upload_id.to_string(),
                next_part,
                in_flight: JoinSet::new(),
                done,
                opaque_etags: options.encryption.is_kms(),
                aborted: false,
            },
            size,
        ))
    }

    /// Parts sent so far, in flight or done.
    pub(crate) fn parts_started(&self) -> u64 {
        (self.next_part - 1).max(0) as u64
    }

    /// Collects the parts that have finished, without waiting; fails with the first
    /// part that failed.
    pub(crate) fn reap(&mut self) -> Result<()> {
        while let Some(joined) = self.in_flight.try_join_next() {
            self.done.push(joined_part(joined)?);
        }
        Ok(())
    }

    /// Waits until fewer than `max` parts are in flight.
    pub(crate) async fn wait_below(&mut self, max: usize) -> Result<()> {
        while self.in_flight.len() >= max {
            if let Some(joined) = self.in_flight.join_next().await {
                self.done.push(joined_part(joined)?);
            }
        }
        Ok(())
    }

    /// Waits for every part in flight.
    pub(crate) async fn join_all(&mut self) -> Result<()> {
        while let Some(joined) = self.in_flight.join_next().await {
            self.done.push(joined_part(joined)?);
        }
        Ok(())
    }

    fn take_number(&mut self) -> Result<i32> {
        if self.next_part as u64 > MAX_PARTS {
            return Err(StorageError::BadRequest(
                "the file is too large for S3 (10,000 parts)".into(),
            ));
        }
        let number = self.next_part;
        self.next_part += 1;
        Ok(number)
    }

    /// Sends `body` as the next part in the background; `recycle` gets the body back
    /// once S3 has it. Returns the part number.
    pub(crate) fn spawn_upload(
        &mut self,
        body: Bytes,
        recycle: impl FnOnce(Bytes) + Send + 'static,
    ) -> Result<i32> {
        let number = self.take_number()?;
        let s3 = self.s3.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone();
        self.in_flight.spawn(
            async move {
                let part = s3
                    .upload_part(&key, &upload_id, number, body.clone())
                    .await?;
                // The SDK has let go of its copies of the body once it has the answer.
                recycle(body);
                Ok(part)
            }
            .in_current_span(),
        );
        Ok(number)
    }

    /// Copies `source` as the next part in the background. Returns the part number.
    pub(crate) fn spawn_copy(&mut self, source: CopySource) -> Result<i32> {
        let number = self.take_number()?;
        let s3 = self.s3.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone();
        self.in_flight.spawn(
            async move { s3.upload_part_copy(&key, &upload_id, number, &source).await }
                .in_current_span(),
        );
        Ok(number)
    }

    /// Waits for the parts and completes the upload, `size` bytes in all. On error the
    /// upload is still open: the owner aborts it.
    pub(crate) async fn complete(&mut self, size: u64) -> Result<Completed> {
        self.join_all().await?;
        self.done.sort_by_key(|p| p.number);
        let parts = std::mem::take(&mut self.done);
        let Err(err) = self.s3.complete(&self.key, &self.upload_id, &parts).await else {
            return Ok(Completed::Stored);
        };
        // S3 may have carried out a Complete whose answer was lost: the SDK's retry then
        // gets NoSuchUpload (from most S3-compatible servers; AWS answers success) or the
        // error of the lost answer. If the object at the key is the one these parts make,
        // the upload did complete.
        let Some(head) = self.in_place(&parts, size).await else {
            self.done = parts;
            return Err(err);
        };
        tracing::info!(key = %self.key, "CompleteMultipartUpload failed but the object is in place: {err}");
        Ok(Completed::FoundInPlace(head))
    }

    /// The object at the key, if it is the one `parts` (`size` bytes) make.
    ///
    /// When every part's ETag is its MD5 (no SSE-KMS), the object's ETag is known (the MD5
    /// of the parts' MD5s, `-` part count): the object must have it and `size`; the
    /// upload, in case an identical object was already there and it is still open, is then
    /// aborted. Otherwise (under SSE-KMS, or when a part's ETag is no MD5, no ETag can be
    /// computed) the upload must be gone, which an abort answered with NoSuchUpload proves (an upload
    /// that is still open is aborted by that very request, and the object is not ours),
    /// and the object must be `size` bytes made of as many parts, as its ETag's `-N` says.
    async fn in_place(&mut self, parts: &[Part], size: u64) -> Option<ObjectHead> {
        let expected = (!self.opaque_etags)
            .then(|| multipart_etag(parts))
            .flatten();
        if let Some(etag) = expected {
            let head = self.s3.head_object(&self.key).await.ok().flatten()?;
            let matches = head.size == size && bare(&head) == Some(etag.as_str());
            if !matches {
                return None;
            }
            if let Err(failure) = self.s3.abort(&self.key, &self.upload_id).await {
                if !failure.is_not_found() {
                    tracing::warn!(key = %self.key, upload_id = %self.upload_id, "could not abort multipart upload: {}", failure.message);
                }
            }
            return Some(head);
        }
        match self.s3.abort(&self.key, &self.upload_id).await {
            Err(failure) if failure.is_not_found() => {}
            Ok(()) => {
                // It was still open: the Complete really failed (and the upload is gone now).
                self.aborted = true;
                return None;
            }
            Err(_) => return None,
        }
        let head = self.s3.head_object(&self.key).await.ok().flatten()?;
        let suffix = format!("-{}", parts.len());
        let matches = head.size == size && bare(&head).is_some_and(|e| e.ends_with(&suffix));
        matches.then_some(head)
    }

    /// Stops the parts in flight and aborts the upload; a failed abort is logged.
    pub(crate) async fn abort(mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.send_abort().await;
    }

    /// Like [`abort`](Self::abort), from a destructor: the abort runs in the background.
    pub(crate) fn abort_in_background(mut self) {
        self.in_flight.abort_all();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(self.abort().in_current_span());
            }
            Err(_) => {
                tracing::error!(key = %self.key, upload_id = %self.upload_id, "cannot abort multipart upload: no runtime")
            }
        }
    }

    async fn send_abort(&self) {
        let (key, upload_id) = (&self.key, &self.upload_id);
        if self.aborted {
            tracing::info!(%key, %upload_id, "multipart upload aborted");
            return;
        }
        match self.s3.abort(key, upload_id).await {
            Ok(()) => tracing::info!(%key, %upload_id, "multipart upload aborted"),
            Err(failure) => {
                let err = failure.into_storage_error("AbortMultipartUpload");
                tracing::error!(%key, %upload_id, "could not abort multipart upload: {err}");
            }
        }
    }
}

/// The object's ETag without quotes.
fn bare(head: &ObjectHead) -> Option<&str> {
    head.etag.as_deref().map(|e| e.trim_matches('"'))
}

/// A part task's result, its panic or cancellation an error.
fn joined_part(joined: std::result::Result<Result<Part>, tokio::task::JoinError>) -> Result<Part> {
    joined.map_err(|e| StorageError::Internal(format!("part task failed: {e}")))?
}

/// The ETag S3 gives the object these parts make (MD5 of the parts' MD5s, `-` part count),
/// when every part's ETag is a plain MD5 (not with SSE-KMS or SSE-C).
fn multipart_etag(parts: &[Part]) -> Option<String> {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    for part in parts {
        let hex = part.etag.as_deref()?.trim_matches('"');
        if hex.len() != 32 {
            return None;
        }
        hasher.update(hex::decode(hex).ok()?);
    }
    Some(format!(
        "{}-{}",
        hex::encode(hasher.finalize()),
        parts.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        let part = |number, etag: &str| Part {
            number,
            etag: Some(etag.to_string()),
            crc32c: None,
        };
        // Two parts whose MD5s are those of "a" and "b".
        let parts = [
            part(1, "\"0cc175b9c0f1b6a831c399e269772661\""),
            part(2, "92eb5ffee6ae2fec3ad71c777531578f"),
        ];
        let mut both = hex::decode("0cc175b9c0f1b6a831c399e269772661").unwrap();
        both.extend(hex::decode("92eb5ffee6ae2fec3ad71c777531578f").unwrap());
        use md5::Digest;
        let want = format!("{}-2", hex::encode(md5::Md5::digest(&both)));
        assert_eq!(multipart_etag(&parts), Some(want));
        assert_eq!(multipart_etag(&[part(1, "not-an-md5")]), None);
    }
}
