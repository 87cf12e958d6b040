//! Streaming uploads: bytes arrive in order (or slightly out of order), fill a part
//! buffer, and full parts go to S3 concurrently while the client keeps sending.
//!
//! A file that fits in one part becomes one PutObject at [`Upload::finish`]; anything
//! larger becomes a multipart upload that is completed at `finish` and aborted on any
//! failure or when the `Upload` is dropped unfinished. Either way nothing is visible at
//! the key until the whole object is committed.
//!
//! Writes that do not follow on from the bytes before them (an existing file opened
//! without truncation, appends, holes, a size set) switch the upload to edit mode
//! ([`edit`]), which builds the same object a local file system would hold.

mod edit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio_util::task::AbortOnDropHandle;

use super::budget::Reservation;
use super::s3::multipart::MAX_PARTS;
use super::s3::Multipart;
use super::writing::Shown;
use super::{Result, StorageError, UserStore};
pub(crate) use edit::Base;
pub use edit::MAX_HOLE;

/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3's smallest part (except the last).
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// The first allocation of a part buffer (or the data's size, if larger); it doubles
/// from there as data arrives, up to the part size.
const FIRST_BUFFER: usize = 64 * 1024;
/// How long an out-of-order write waits for the budget to pay for it before it is
/// refused. The upload already holds its part buffer and other held writes: waiting
/// without end while holding them could leave uploads waiting on each other.
const HOLD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
/// S3's largest object: a larger announced size is not believed.
const MAX_OBJECT: u64 = 5 << 40;

/// How a file was opened for writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteMode {
    /// Fail if the file exists (SFTP `EXCL`).
    pub exclusive: bool,
    /// The file is created or truncated: whether one exists does not matter to the caller
    /// (SFTP `CREAT|TRUNC`, SCP), so the open need not wait to find out.
    pub replace: bool,
}

/// What the open found at the key, for the front ends' OPEN semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// The open did not look (see [`WriteMode::replace`]).
    NotLooked,
    /// There was no object.
    Absent,
    /// There was an object of `size` bytes.
    Present { size: u64 },
}

/// Where an upload is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Taking writes.
    Open,
    /// A write or the commit failed with this message; every later call reports it.
    Failed(String),
    /// Finished or aborted.
    Finished,
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
    /// Bytes in `pending`; never more than `reorder_window`.
    pending_bytes: u64,
    /// What pays for `pending` in the memory budget.
    pending_reservation: Reservation,
    multipart: Option<Multipart>,
    /// The buffer of a part S3 has, ready to be filled again.
    spare: SpareSlot,
    state: State,
    /// What the open found at the key.
    existing: Existing,
    /// The check, still running, that the name is not a directory.
    preflight: Option<AbortOnDropHandle<Result<()>>>,
    /// The modification time the client set on the handle (OPEN attributes, FSETSTAT):
    /// stored with the object at commit.
    mtime: Option<SystemTime>,
    /// The time the multipart upload was created with, when one was: a different time
    /// set later costs a copy in place after the commit.
    multipart_mtime: Option<SystemTime>,
    /// The file's entry among those being written (see `writing`), for a new or truncated
    /// file: STAT and listings show it until the upload is dropped.
    shown: Option<Shown>,
    /// Edit mode: writes anywhere, over the object opened or over nothing (see [`edit`]).
    edit: Option<edit::Edit>,
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
            let size = size.min(MAX_OBJECT);
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
        existing: Existing,
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
            pending_reservation: Reservation::empty(),
            multipart: None,
            spare: SpareSlot::default(),
            state: State::Open,
            existing,
            preflight,
            mtime: None,
            multipart_mtime: None,
            shown: None,
            edit: None,
        }
    }

    /// Shows the file to STAT and listings of every session of this gateway, with the
    /// bytes written so far, until the upload is committed or given up (see `writing`).
    pub(crate) fn show_while_written(&mut self) {
        let shown = self
            .store
            .storage()
            .writing()
            .register(&self.key, self.store.writer_id());
        if let Some(mtime) = self.mtime {
            shown.set_mtime(mtime);
        }
        self.shown = Some(shown);
    }

    /// Keeps `mtime` as the object's modification time. Free while the object's first
    /// request (PutObject, or CreateMultipartUpload once the first part is full) is not
    /// sent; after that, the commit costs one CopyObject more.
    pub fn set_mtime(&mut self, mtime: SystemTime) {
        self.mtime = Some(mtime);
        if let Some(shown) = &self.shown {
            shown.set_mtime(mtime);
        }
    }

    /// The object key this upload will create.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether an object existed at the key when the upload was opened; `None` when the
    /// open did not look (see [`WriteMode::replace`]).
    pub fn replaces_existing(&self) -> Option<bool> {
        match self.existing {
            Existing::NotLooked => None,
            Existing::Absent => Some(false),
            Existing::Present { .. } => Some(true),
        }
    }

    /// The size of the object the upload will replace, when the open looked and found one.
    pub fn existing_size(&self) -> Option<u64> {
        match self.existing {
            Existing::Present { size } => Some(size),
            Existing::NotLooked | Existing::Absent => None,
        }
    }

    /// Bytes accepted so far, counting out-of-order data waiting for its gap; in edit
    /// mode, the file's size as the client sees it.
    pub fn len(&self) -> u64 {
        if let Some(len) = self.edit_len() {
            return len;
        }
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
        if self.edit.is_some() {
            return self.edit_write(offset, data).await.map_err(edit::conflict);
        }
        if offset < self.written {
            return Err(StorageError::Unsupported(
                "rewriting data that was already written is not supported on S3",
            ));
        }
        if offset > self.written {
            if self.written == 0 && self.pending.is_empty() {
                // A new file that starts with a hole: the bytes before read as zeros.
                self.start_edit(None);
                return self.edit_write(offset, data).await;
            }
            return self.hold_out_of_order(offset, data).await;
        }
        let end = offset + data.len() as u64;
        if self.pending.keys().next().is_some_and(|&held| held < end) {
            // Over a held write: the newest bytes win, as in edit mode.
            self.start_edit(None);
            return self.edit_write(offset, data).await;
        }
        self.append(data).await?;
        while let Some(entry) = self.pending.first_entry() {
            let off = *entry.key();
            if off > self.written {
                break;
            }
            let chunk = entry.remove();
            self.pending_bytes -= chunk.len() as u64;
            self.pending_reservation.shrink_to(self.pending_bytes);
            if off < self.written {
                return self.fail(format!("overlapping writes at offset {off}"));
            }
            self.append(chunk).await?;
        }
        Ok(())
    }

    /// Keeps a write that arrived before the bytes in front of it, paid for in the memory
    /// budget first. Refused (and the upload failed: the file would have a hole) when it
    /// lies more than `reorder_window` past the written end, overlaps another held write,
    /// would take the held bytes past `reorder_window`, or the budget cannot pay for it
    /// within [`HOLD_PATIENCE`].
    async fn hold_out_of_order(&mut self, offset: u64, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        let end = offset.saturating_add(len);
        let window = self.store.storage().settings().reorder_window;
        let before = self.pending.range(..=offset).next_back();
        let after = self.pending.range(offset..).next();
        let overlaps = before.is_some_and(|(off, d)| off + d.len() as u64 > offset)
            || after.is_some_and(|(off, _)| *off < end);
        if end - self.written > window || overlaps || self.pending_bytes + len > window {
            // Not a reordering any more: a hole, or a write over a held one. Edit mode
            // keeps the bytes a local file would (zeros in holes, the newest write wins).
            self.start_edit(None);
            return self.edit_write(offset, data).await;
        }
        let account = self.store.account().clone();
        let Ok(more) = tokio::time::timeout(HOLD_PATIENCE, account.reserve(len)).await else {
            return self.fail(format!(
                "the server's memory for out-of-order writes stayed full for {} s: send the file in order",
                HOLD_PATIENCE.as_secs()
            ));
        };
        self.pending_reservation.merge(more);
        self.pending_bytes += len;
        self.pending.insert(offset, data);
        Ok(())
    }

    /// Commits the object. Returns only once S3 has it; on error nothing is left behind.
    pub async fn finish(mut self) -> Result<u64> {
        let result = self.commit().await.map_err(edit::conflict);
        self.state = State::Finished;
        if result.is_err() {
            self.abort_now().await;
        }
        result
    }

    /// Gives up: nothing is written at the key and any multipart upload is aborted.
    pub async fn abort(mut self) {
        self.state = State::Finished;
        self.abort_now().await;
    }

    /// Waits for the open's background check; its refusal fails the upload.
    async fn await_preflight(&mut self) -> Result<()> {
        let Some(check) = self.preflight.take() else {
            return Ok(());
        };
        let result = check
            .await
            .map_err(|e| StorageError::Internal(format!("open check failed: {e}")))
            .and_then(|r| r);
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.fail_with(e),
        }
    }

    async fn commit(&mut self) -> Result<u64> {
        self.check_usable()?;
        // The latest time set, on the handle or by a SETSTAT of the path meanwhile.
        if let Some(mtime) = self.shown.as_ref().and_then(Shown::mtime) {
            self.mtime = Some(mtime);
        }
        self.await_preflight().await?;
        if !self.pending.is_empty() {
            // Bytes never written before a held write read as zeros.
            self.start_edit(None);
        }
        if self.edit_unchanged() {
            // An existing file opened and left as it was: no request, but a time set.
            if let Some(mtime) = self.mtime {
                self.store.set_mtime_of_key(&self.key, mtime).await?;
            }
            return Ok(self.len());
        }
        if self.edit.is_some() {
            self.finish_edit().await?;
        }
        let size = self.written;
        if self.multipart.is_none() {
            let body = self.buffer.split().freeze();
            self.store.put_object(&self.key, body, self.mtime).await?;
            self.reservation = None;
            tracing::debug!(key = %self.key, size, "object stored");
            return Ok(size);
        }
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        let Some(mp) = self.multipart.as_mut() else {
            return Err(StorageError::Internal("multipart upload vanished".into()));
        };
        mp.join_all().await?;
        // Every part is back: no buffer is needed any more.
        drop_spare(&self.spare);
        let count = mp.parts_started();
        self.store.complete_upload(mp, &self.key, size).await?;
        self.multipart = None;
        tracing::debug!(key = %self.key, size, parts = count, "multipart object stored");
        if let Some(mtime) = self.mtime.filter(|t| Some(*t) != self.multipart_mtime) {
            // Set after the multipart upload began: the one case that needs a copy.
            self.store.set_mtime_of_key(&self.key, mtime).await?;
        }
        Ok(size)
    }

    fn check_usable(&self) -> Result<()> {
        match &self.state {
            State::Open => Ok(()),
            State::Failed(msg) => Err(StorageError::BadRequest(format!(
                "upload failed earlier: {msg}"
            ))),
            State::Finished => Err(StorageError::BadRequest("upload already finished".into())),
        }
    }

    fn fail<T>(&mut self, msg: String) -> Result<T> {
        self.state = State::Failed(msg.clone());
        Err(StorageError::BadRequest(msg))
    }

    fn fail_with<T>(&mut self, err: StorageError) -> Result<T> {
        self.state = State::Failed(err.to_string());
        Err(err)
    }

    async fn append(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let room = (self.part_size as usize).saturating_sub(self.buffer.len());
            let take = room.min(data.len());
            if let Err(e) = self.make_room(self.buffer.len() + take).await {
                return self.fail_with(e);
            }
            let room = self.buffer.capacity() - self.buffer.len();
            let take = take.min(room);
            if take == 0 {
                continue;
            }
            self.buffer.extend_from_slice(&data.split_to(take));
            self.written += take as u64;
            if let Some(shown) = &self.shown {
                shown.set_written(self.written);
            }
            if self.buffer.len() as u64 >= self.part_size {
                if let Err(e) = self.send_part().await {
                    return self.fail_with(e);
                }
            }
        }
        Ok(())
    }

    /// Grows the part buffer so that it holds `needed` bytes (at most a part), paying for
    /// the growth in the memory budget first: the buffer grows as data arrives, whatever
    /// size the client announced. The budget pays 64 KiB first (a small file costs no
    /// more), then a minimal part (5 MiB), then each doubling up to the part size. A
    /// buffer already big enough to be a part is sent as one when the budget cannot pay
    /// for its growth at once, instead of holding it while waiting (which could leave
    /// every buffer waiting on the others).
    async fn make_room(&mut self, needed: usize) -> Result<()> {
        if self.buffer.capacity() >= needed {
            return Ok(());
        }
        if self.buffer.is_empty() {
            let spare = self.spare.lock().ok().and_then(|mut slot| slot.take());
            if let Some(spare) = spare {
                self.buffer = spare.buffer;
                self.reservation = Some(spare.reservation);
                if self.buffer.capacity() >= needed {
                    return Ok(());
                }
            }
        }
        let part_size = self.part_size as usize;
        let new_cap = needed
            .max(self.buffer.capacity().saturating_mul(2))
            .max(FIRST_BUFFER)
            .min(part_size)
            .max(needed);
        let paid = self.reservation.as_ref().map_or(0, |r| r.bytes());
        // Past the first allocation, the reservation goes straight to a minimal part (the
        // allocation still doubles as data arrives): from there the buffer never waits
        // while holding memory (it is sent as a part instead), so uploads cannot all wait
        // on each other while each holds a little; only the first 64 KiB are held while
        // waiting.
        let want = if new_cap <= FIRST_BUFFER {
            new_cap as u64
        } else {
            (new_cap as u64).max(MIN_PART_SIZE.min(self.part_size))
        };
        let extra = want.saturating_sub(paid);
        if extra > 0 {
            let account = self.store.account().clone();
            let more = if self.buffer.len() as u64 >= MIN_PART_SIZE {
                match account.try_reserve(extra) {
                    Some(more) => more,
                    None => return self.send_part().await,
                }
            } else {
                account.reserve(extra).await
            };
            self.reservation
                .get_or_insert_with(Reservation::empty)
                .merge(more);
        }
        let reservation = self.reservation.get_or_insert_with(Reservation::empty);
        // Pay only for what the buffer may use (the budget clamps a huge request).
        let cap = new_cap.min(usize::try_from(reservation.bytes()).unwrap_or(usize::MAX));
        let mut grown = BytesMut::with_capacity(cap);
        grown.extend_from_slice(&self.buffer);
        self.buffer = grown;
        Ok(())
    }

    /// Starts the multipart upload unless it is started, with the object's options and
    /// the modification time known now.
    async fn ensure_multipart(&mut self) -> Result<()> {
        if self.multipart.is_none() {
            let storage = self.store.storage();
            let options = super::s3::ObjectOptions {
                mtime: self.mtime,
                ..storage.object_options()
            };
            let mp = Multipart::create(storage.s3(), &self.key, &options).await?;
            self.multipart = Some(mp);
            self.multipart_mtime = self.mtime;
        }
        Ok(())
    }

    /// Hands the current buffer to a background UploadPart, starting the multipart upload
    /// first if needed and waiting while too many parts are in flight.
    async fn send_part(&mut self) -> Result<()> {
        self.ensure_multipart().await?;
        let max_in_flight = self.max_in_flight;
        let Some(mp) = self.multipart.as_mut() else {
            return Err(StorageError::Internal("multipart upload vanished".into()));
        };
        mp.reap()?;
        mp.wait_below(max_in_flight).await?;
        let body = std::mem::take(&mut self.buffer).freeze();
        let recycle = keep_as_spare(self.spare.clone(), self.reservation.take());
        let part_number = mp.spawn_upload(body, recycle)?;
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
        drop_spare(&self.spare);
        self.pending.clear();
        self.pending_bytes = 0;
        self.pending_reservation = Reservation::empty();
        if let Some(mp) = self.multipart.take() {
            mp.abort().await;
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(mp) = self.multipart.take() {
            mp.abort_in_background();
        }
    }
}

/// What a sent part's body becomes: the spare buffer (with `reservation`) if the slot
/// is free and nothing else holds the bytes, else freed.
fn keep_as_spare(slot: SpareSlot, reservation: Option<Reservation>) -> impl FnOnce(Bytes) {
    move |body| {
        let (Ok(mut buffer), Some(reservation)) = (body.try_into_mut(), reservation) else {
            return;
        };
        buffer.clear();
        if let Ok(mut slot) = slot.lock() {
            if slot.is_none() {
                *slot = Some(PartBuffer {
                    buffer,
                    reservation,
                });
            }
        }
    }
}

/// Frees the spare part buffer, if any.
fn drop_spare(spare: &SpareSlot) {
    if let Ok(mut slot) = spare.lock() {
        *slot = None;
    }
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
    fn an_absurd_declared_size_is_not_believed() {
        let five_tib = initial_part_size(8 * MIB, Some(5u64 << 40));
        assert_eq!(
            initial_part_size(8 * MIB, Some(1_000_000_000_000_000)),
            five_tib
        );
        assert_eq!(initial_part_size(8 * MIB, Some(u64::MAX)), five_tib);
        assert!(five_tib < MAX_PART_SIZE);
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
    fn in_flight_respects_budget() {
        assert_eq!(in_flight_limit(64 * MIB, 8 * MIB), 6);
        assert_eq!(in_flight_limit(24 * MIB, 8 * MIB), 1);
        assert_eq!(in_flight_limit(8 * MIB, 8 * MIB), 1);
        assert_eq!(in_flight_limit(8 * MIB, 64 * MIB), 1);
    }
}
