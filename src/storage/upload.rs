//! Streaming uploads: bytes arrive in order (or slightly out of order), fill a part
//! buffer, and full parts go to S3 concurrently while the client keeps sending.
//!
//! A file that fits in one part becomes one PutObject at [`Upload::finish`]; anything
//! larger becomes a multipart upload that is completed at `finish` and aborted on any
//! failure or when the `Upload` is dropped unfinished. Either way nothing is visible at
//! the key until the whole object is committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::budget::Reservation;
use super::error::{s3_error, S3Failure};
use super::{Result, StorageError, UserStore};

/// S3's part-count limit.
const MAX_PARTS: u64 = 10_000;
/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3's smallest part (except the last).
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// How a file was opened for writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteMode {
    /// Fail if the file exists (SFTP `EXCL`).
    pub exclusive: bool,
    /// The file is created or truncated: whether one exists does not matter to the caller
    /// (SFTP `CREAT|TRUNC`, SCP), so the open need not wait to find out.
    pub replace: bool,
}

/// A multipart upload in progress.
struct Multipart {
    upload_id: String,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
}

/// An empty part buffer with the budget reservation that pays for it. Reusing it spares
/// the allocator a fresh multi-MiB mapping, and the kernel its page faults, for each part.
struct PartBuffer {
    buffer: BytesMut,
    reservation: Reservation,
}

/// Where a finished part task leaves its buffer for the next part. One spare is all a
/// steady stream needs; a task that finds the slot taken frees its buffer (and its share
/// of the budget) at once, as does one whose body the SDK still shares.
type SpareSlot = Arc<std::sync::Mutex<Option<PartBuffer>>>;

/// One file being written. Not `Clone`: exactly one owner decides to finish or abort.
pub struct Upload {
    store: UserStore,
    key: String,
    part_size: u64,
    max_in_flight: usize,
    /// Bytes accepted contiguously from offset 0.
    written: u64,
    buffer: BytesMut,
    reservation: Option<Reservation>,
    /// Out-of-order writes waiting for the gap before them to fill.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: u64,
    multipart: Option<Multipart>,
    /// The buffer of a part S3 has, ready to be filled again.
    spare: SpareSlot,
    /// Set after the first failure; every later call reports it.
    failed: Option<String>,
    finished: bool,
    /// The size of the object at the key when opened: `Some(None)` when there was none,
    /// `None` when the open did not look.
    existed: Option<Option<u64>>,
    /// The check, still running, that the name is not a directory.
    preflight: Option<AbortOnDropHandle<Result<()>>>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("key", &self.key)
            .field("written", &self.written)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// The part size for an upload of about `size_hint` bytes: the configured size, grown so
/// that the hinted size fits in 9,000 parts (slack for a file that grows while sent).
pub fn initial_part_size(base: u64, size_hint: Option<u64>) -> u64 {
    let base = base.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    match size_hint {
        Some(size) => {
            let needed = size.div_ceil(MAX_PARTS - 1000).div_ceil(MIB) * MIB;
            needed.clamp(base, MAX_PART_SIZE)
        }
        None => base,
    }
}

/// The part size after `parts_done` parts: without a size hint the part size doubles every
/// 1,000 parts, so a stream of unknown length can reach S3's 5 TiB object limit.
fn grown_part_size(current: u64, parts_done: u64) -> u64 {
    if parts_done > 0 && parts_done.is_multiple_of(1000) {
        (current * 2).min(MAX_PART_SIZE)
    } else {
        current
    }
}

impl Upload {
    pub(crate) fn new(
        store: UserStore,
        key: String,
        size_hint: Option<u64>,
        existed: Option<Option<u64>>,
        preflight: Option<AbortOnDropHandle<Result<()>>>,
    ) -> Self {
        let settings = store.storage().settings();
        let part_size = initial_part_size(settings.part_size, size_hint);
        let max_in_flight = in_flight_limit(settings.transfer_budget, part_size);
        Upload {
            store,
            key,
            part_size,
            max_in_flight,
            written: 0,
            buffer: BytesMut::new(),
            reservation: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            multipart: None,
            spare: SpareSlot::default(),
            failed: None,
            finished: false,
            existed,
            preflight,
        }
    }

    /// The object key this upload will create.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether an object existed at the key when the upload was opened; `None` when the
    /// open did not look (see [`WriteMode::replace`]).
    pub fn replaces_existing(&self) -> Option<bool> {
        self.existed.map(|size| size.is_some())
    }

    /// The size of the object the upload will replace, when the open looked and found one.
    pub fn existing_size(&self) -> Option<u64> {
        self.existed.flatten()
    }

    /// Bytes accepted so far, counting out-of-order data waiting for its gap.
    pub fn len(&self) -> u64 {
        self.pending
            .iter()
            .next_back()
            .map(|(off, data)| off + data.len() as u64)
            .unwrap_or(0)
            .max(self.written)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accepts `data` at `offset`. Waits when the memory budget is spent.
    pub async fn write(&mut self, offset: u64, data: Bytes) -> Result<()> {
        self.check_usable()?;
        if self.preflight.as_ref().is_some_and(|p| p.is_finished()) {
            self.await_preflight().await?;
        }
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.saturating_add(data.len() as u64);
        if offset < self.written {
            return Err(StorageError::Unsupported(
                "rewriting data that was already written is not supported on S3",
            ));
        }
        if offset > self.written {
            if self.written == 0 && self.pending.is_empty() {
                return Err(StorageError::Unsupported(
                    "resuming an upload is not supported on S3: upload the whole file again",
                ));
            }
            let window = self.store.storage().settings().reorder_window;
            if end - self.written > window {
                return self.fail(format!(
                    "write at offset {offset} is more than {window} bytes past the written end {}",
                    self.written
                ));
            }
            if self.pending.contains_key(&offset) {
                return self.fail(format!("two writes at offset {offset}"));
            }
            self.pending_bytes += data.len() as u64;
            self.pending.insert(offset, data);
            return Ok(());
        }
        self.append(data).await?;
        while let Some(entry) = self.pending.first_entry() {
            let off = *entry.key();
            if off > self.written {
                break;
            }
            let chunk = entry.remove();
            self.pending_bytes -= chunk.len() as u64;
            if off < self.written {
                return self.fail(format!("overlapping writes at offset {off}"));
            }
            self.append(chunk).await?;
        }
        Ok(())
    }

    /// Commits the object. Returns only once S3 has it; on error nothing is left behind.
    pub async fn finish(mut self) -> Result<u64> {
        let result = self.commit().await;
        self.finished = true;
        if result.is_err() {
            self.abort_now().await;
        }
        result
    }

    /// Gives up: nothing is written at the key and any multipart upload is aborted.
    pub async fn abort(mut self) {
        self.finished = true;
        self.abort_now().await;
    }

    /// Waits for the open's background check; its refusal fails the upload.
    async fn await_preflight(&mut self) -> Result<()> {
        let Some(check) = self.preflight.take() else {
            return Ok(());
        };
        let result = check
            .await
            .map_err(|e| StorageError::Invalid(format!("open check failed: {e}")))
            .and_then(|r| r);
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.fail_with(e),
        }
    }

    async fn commit(&mut self) -> Result<u64> {
        self.check_usable()?;
        self.await_preflight().await?;
        self.store.cache().forget(&self.key);
        if let Some(&gap_end) = self.pending.keys().next() {
            return self.fail(format!(
                "the upload has a gap: bytes {}..{gap_end} were never written",
                self.written
            ));
        }
        let size = self.written;
        if self.multipart.is_none() {
            let body = self.buffer.split().freeze();
            let storage = self.store.storage();
            storage
                .client()
                .put_object()
                .bucket(storage.bucket())
                .key(&self.key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| s3_error("PutObject", e))?;
            self.reservation = None;
            tracing::debug!(key = %self.key, size, "object stored");
            return Ok(size);
        }
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        let Some(mp) = self.multipart.as_mut() else {
            return Err(StorageError::Invalid("multipart upload vanished".into()));
        };
        while let Some(joined) = mp.in_flight.join_next().await {
            mp.done.push(joined_part(joined)?);
        }
        mp.done.sort_by_key(|p| p.part_number());
        let parts = std::mem::take(&mut mp.done);
        let upload_id = mp.upload_id.clone();
        // Every part is back: no buffer is needed any more.
        self.drop_spare();
        let count = parts.len();
        let expected_etag = multipart_etag(&parts);
        let storage = self.store.storage();
        let completed = storage
            .client()
            .complete_multipart_upload()
            .bucket(storage.bucket())
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", e));
        if let Err(err) = completed {
            // S3 may have carried out a Complete whose answer was lost: the SDK's retry
            // then gets NoSuchUpload (from most S3-compatible servers; AWS answers success)
            // or the error of the lost answer. If the object at the key is exactly the one
            // these parts make, the upload did complete.
            if !self.is_at_key(expected_etag.as_deref(), size).await {
                return Err(err);
            }
            tracing::info!(key = %self.key, "CompleteMultipartUpload failed but the object is in place: {err}");
            // In case an identical object was already there and this upload is still open.
            abort_quietly(&self.store, &self.key, &upload_id).await;
        }
        self.multipart = None;
        tracing::debug!(key = %self.key, size, parts = count, "multipart object stored");
        Ok(size)
    }

    /// Whether the object at the key has `etag` and `size` (false if unknown).
    async fn is_at_key(&self, etag: Option<&str>, size: u64) -> bool {
        let Some(etag) = etag else { return false };
        match self.store.head(&self.key).await {
            Ok(Some(head)) => {
                head.size == size && head.etag.as_deref().map(|e| e.trim_matches('"')) == Some(etag)
            }
            _ => false,
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.failed {
            Some(msg) => Err(StorageError::Invalid(format!(
                "upload failed earlier: {msg}"
            ))),
            None if self.finished => Err(StorageError::Invalid("upload already finished".into())),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, msg: String) -> Result<T> {
        self.failed = Some(msg.clone());
        Err(StorageError::Invalid(msg))
    }

    fn fail_with<T>(&mut self, err: StorageError) -> Result<T> {
        self.failed = Some(err.to_string());
        Err(err)
    }

    async fn append(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            if self.reservation.is_none() {
                self.take_buffer().await;
            }
            let room = (self.part_size as usize).saturating_sub(self.buffer.len());
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data.split_to(take));
            self.written += take as u64;
            if self.buffer.len() as u64 >= self.part_size {
                if let Err(e) = self.send_part().await {
                    return self.fail_with(e);
                }
            }
        }
        Ok(())
    }

    /// Frees the spare part buffer, if any.
    fn drop_spare(&self) {
        if let Ok(mut slot) = self.spare.lock() {
            *slot = None;
        }
    }

    /// Makes an empty buffer for the next part: a spare if one is big enough, else a new
    /// one, reserved in the memory budget first (which may wait).
    async fn take_buffer(&mut self) {
        let part_size = self.part_size as usize;
        let spare = self.spare.lock().ok().and_then(|mut slot| slot.take());
        if let Some(spare) = spare.filter(|s| s.buffer.capacity() >= part_size) {
            self.buffer = spare.buffer;
            self.reservation = Some(spare.reservation);
            return;
        }
        let budget = self.store.storage().budget().clone();
        self.reservation = Some(budget.reserve(self.part_size).await);
        self.buffer = BytesMut::with_capacity(part_size);
    }

    /// Hands the current buffer to a background UploadPart, starting the multipart upload
    /// first if needed and waiting while too many parts are in flight.
    async fn send_part(&mut self) -> Result<()> {
        if self.multipart.is_none() {
            let storage = self.store.storage();
            let out = storage
                .client()
                .create_multipart_upload()
                .bucket(storage.bucket())
                .key(&self.key)
                .send()
                .await
                .map_err(|e| s3_error("CreateMultipartUpload", e))?;
            let upload_id = out
                .upload_id()
                .ok_or_else(|| StorageError::Invalid("S3 returned no upload id".into()))?
                .to_string();
            tracing::debug!(key = %self.key, %upload_id, "multipart upload started");
            self.multipart = Some(Multipart {
                upload_id,
                next_part: 1,
                in_flight: JoinSet::new(),
                done: Vec::new(),
            });
        }
        let max_in_flight = self.max_in_flight;
        let Some(mp) = self.multipart.as_mut() else {
            return Err(StorageError::Invalid("multipart upload vanished".into()));
        };
        while let Some(joined) = mp.in_flight.try_join_next() {
            mp.done.push(joined_part(joined)?);
        }
        while mp.in_flight.len() >= max_in_flight {
            if let Some(joined) = mp.in_flight.join_next().await {
                mp.done.push(joined_part(joined)?);
            }
        }
        if mp.next_part as u64 > MAX_PARTS {
            return Err(StorageError::Invalid(
                "the file is too large for S3 (10,000 parts)".into(),
            ));
        }
        let part_number = mp.next_part;
        mp.next_part += 1;
        let body = std::mem::take(&mut self.buffer).freeze();
        let reservation = self.reservation.take();
        let client = self.store.storage().client().clone();
        let bucket = self.store.storage().bucket().to_string();
        let key = self.key.clone();
        let upload_id = mp.upload_id.clone();
        let spare_slot = self.spare.clone();
        mp.in_flight.spawn(async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(ByteStream::from(body.clone()))
                .send()
                .await
                .map_err(|e| s3_error("UploadPart", e))?;
            // The SDK has let go of its copies of the body once it has the answer.
            if let (Ok(mut buffer), Some(reservation)) = (body.try_into_mut(), reservation) {
                buffer.clear();
                if let Ok(mut slot) = spare_slot.lock() {
                    if slot.is_none() {
                        *slot = Some(PartBuffer {
                            buffer,
                            reservation,
                        });
                    }
                }
            }
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        });
        let grown = grown_part_size(self.part_size, part_number as u64);
        if grown != self.part_size {
            self.part_size = grown;
            self.max_in_flight =
                in_flight_limit(self.store.storage().settings().transfer_budget, grown);
        }
        Ok(())
    }

    async fn abort_now(&mut self) {
        self.preflight = None;
        self.buffer = BytesMut::new();
        self.reservation = None;
        self.drop_spare();
        self.pending.clear();
        if let Some(mut mp) = self.multipart.take() {
            mp.in_flight.abort_all();
            while mp.in_flight.join_next().await.is_some() {}
            abort_multipart(&self.store, &self.key, &mp.upload_id).await;
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let Some(mut mp) = self.multipart.take() else {
            return;
        };
        mp.in_flight.abort_all();
        let store = self.store.clone();
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    while mp.in_flight.join_next().await.is_some() {}
                    abort_multipart(&store, &key, &mp.upload_id).await;
                });
            }
            Err(_) => {
                tracing::error!(%key, upload_id = %mp.upload_id, "cannot abort multipart upload: no runtime")
            }
        }
    }
}

type AbortError = aws_sdk_s3::error::SdkError<
    aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError,
    aws_smithy_runtime_api::client::orchestrator::HttpResponse,
>;

/// Sends AbortMultipartUpload for `upload_id`; callers decide how loudly a failure is told.
async fn send_abort(
    store: &UserStore,
    key: &str,
    upload_id: &str,
) -> std::result::Result<(), AbortError> {
    let storage = store.storage();
    storage
        .client()
        .abort_multipart_upload()
        .bucket(storage.bucket())
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .map(|_| ())
}

async fn abort_multipart(store: &UserStore, key: &str, upload_id: &str) {
    match send_abort(store, key, upload_id).await {
        Ok(()) => tracing::info!(%key, %upload_id, "multipart upload aborted"),
        Err(e) => {
            let err = s3_error("AbortMultipartUpload", e);
            tracing::error!(%key, %upload_id, "could not abort multipart upload: {err}");
        }
    }
}

/// Aborts an upload that may no longer exist, without complaint if it does not.
async fn abort_quietly(store: &UserStore, key: &str, upload_id: &str) {
    if let Err(e) = send_abort(store, key, upload_id).await {
        let failure = S3Failure::from_sdk(&e);
        if !failure.is_not_found() {
            tracing::warn!(%key, %upload_id, "could not abort multipart upload: {}", failure.message);
        }
    }
}

/// The ETag S3 gives the object these parts make (MD5 of the parts' MD5s, `-` part count),
/// when every part's ETag is a plain MD5 (not with SSE-KMS or SSE-C).
fn multipart_etag(parts: &[CompletedPart]) -> Option<String> {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    for part in parts {
        let hex = part.e_tag()?.trim_matches('"');
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

fn joined_part(
    joined: std::result::Result<Result<CompletedPart>, tokio::task::JoinError>,
) -> Result<CompletedPart> {
    joined.map_err(|e| StorageError::Invalid(format!("part upload task failed: {e}")))?
}

/// Parts in flight while one more buffer fills. The per-transfer budget holds them, the
/// filling one, and one part's worth of headroom for what else a transfer costs (its SSH
/// channel and HTTP buffers), so that an upload's whole footprint stays within the budget.
/// At least one part is in flight whatever the budget.
fn in_flight_limit(transfer_budget: u64, part_size: u64) -> usize {
    ((transfer_budget / part_size.max(1)).saturating_sub(2)).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_fits_ten_thousand_parts() {
        assert_eq!(initial_part_size(8 * MIB, None), 8 * MIB);
        assert_eq!(initial_part_size(1, None), MIN_PART_SIZE);
        assert_eq!(initial_part_size(8 * MIB, Some(1 << 30)), 8 * MIB);
        let five_tib = 5u64 << 40;
        let p = initial_part_size(8 * MIB, Some(five_tib));
        assert!(five_tib.div_ceil(p) <= MAX_PARTS, "{p}");
        assert_eq!(p % MIB, 0);
    }

    #[test]
    fn unknown_size_grows_to_reach_five_tib() {
        let mut size = 8 * MIB;
        let mut total = 0u64;
        for part in 1..=MAX_PARTS {
            total += size;
            size = grown_part_size(size, part);
        }
        assert!(total >= 5u64 << 40, "{total}");
    }

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        let part = |n, etag: &str| CompletedPart::builder().part_number(n).e_tag(etag).build();
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

    #[test]
    fn in_flight_respects_budget() {
        assert_eq!(in_flight_limit(64 * MIB, 8 * MIB), 6);
        assert_eq!(in_flight_limit(24 * MIB, 8 * MIB), 1);
        assert_eq!(in_flight_limit(8 * MIB, 8 * MIB), 1);
        assert_eq!(in_flight_limit(8 * MIB, 64 * MIB), 1);
    }
}
