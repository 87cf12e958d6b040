//! In-place edits: the bytes a local file would hold after writes anywhere in it, built
//! on S3 without the whole file in memory or on disk.
//!
//! An [`Upload`] in edit mode stands for a file of `end` bytes made of three layers: the
//! writes held in memory (sorted, non-overlapping extents, the newest write winning),
//! under them the object the handle was opened on (its first `base_valid` bytes, pinned
//! to the ETag seen at OPEN), and zeros everywhere else (holes, a grown size). The new
//! object is streamed from offset 0 up, in order: [`Upload::fill_to`] brings the stream
//! up to an offset from the base (UploadPartCopy for unchanged ranges of 5 MiB and more,
//! a ranged GET for shorter ones and to top a buffered part up to S3's 5 MiB minimum) or
//! from zeros; held extents follow at their offsets. Extents are streamed when they pass
//! a quarter of the per-transfer budget (lowest first) and at commit; a write below the
//! streamed position is then refused at the WRITE, as is a hole past [`MAX_HOLE`].
//!
//! The copies and GETs are conditional on the ETag seen at OPEN: if someone replaced the
//! object meanwhile, S3 answers 412 and the edit fails with a conflict (at the WRITE that
//! streams, or at CLOSE), and the other version stays.

mod read;

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Upload, HOLD_PATIENCE, MIB, MIN_PART_SIZE};
use crate::storage::budget::Reservation;
use crate::storage::s3::{CopySource, GetFailure};
use crate::storage::{Result, StorageError};

/// The most zeros a write past the end of a file (or a size set past it) may add: a
/// larger hole is refused at the WRITE (each zero byte is uploaded).
pub const MAX_HOLE: u64 = 1 << 30;
/// The largest unchanged range copied as one part (S3 takes up to 5 GiB).
const COPY_PIECE: u64 = 512 * MIB;
/// The smallest unchanged range at the end of a file copied as the last part (which S3
/// lets be under 5 MiB); a shorter one is read with a GET.
const TAIL_COPY_MIN: u64 = MIB;
/// UploadPartCopy requests of one edit in flight.
const COPY_IN_FLIGHT: usize = 4;
/// Zeros appended a piece at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The stored object an edit starts from, as OPEN saw it.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub size: u64,
    /// What every copy and GET of it is pinned to.
    pub etag: Option<String>,
}

/// The state of an upload in edit mode (see the module doc).
#[derive(Debug)]
pub(super) struct Edit {
    /// The object the handle was opened on; `None` for a new file.
    base: Option<Base>,
    /// The base's bytes still in the file: `0..base_valid` (a smaller size set cuts it,
    /// and growing again adds zeros, not the old bytes).
    base_valid: u64,
    /// The file's size as the client sees it.
    end: u64,
    /// Writes not yet streamed, by offset; all at or past the streamed position.
    extents: BTreeMap<u64, Bytes>,
    /// Bytes in `extents`.
    held: u64,
    /// What pays for `extents` in the memory budget.
    reservation: Reservation,
    /// Held bytes past which the lowest extents are streamed.
    limit: u64,
    /// Whether the file differs from the base: a write, or another size.
    changed: bool,
}

impl Edit {
    /// Inserts `data` at `offset` over whatever it overlaps (the newest write wins).
    fn insert(&mut self, offset: u64, data: Bytes) {
        let end = offset + data.len() as u64;
        let overlapping: Vec<u64> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(start, d)| *start + d.len() as u64 > offset)
            .map(|(start, _)| *start)
            .collect();
        for start in overlapping {
            let Some(old) = self.extents.remove(&start) else {
                continue;
            };
            let old_end = start + old.len() as u64;
            self.held -= old.len() as u64;
            // What is left of an old write is copied out: a slice would keep the whole old
            // allocation alive, unaccounted, under a few bytes.
            if start < offset {
                let left = Bytes::copy_from_slice(&old[..(offset - start) as usize]);
                self.held += left.len() as u64;
                self.extents.insert(start, left);
            }
            if old_end > end {
                let right = Bytes::copy_from_slice(&old[(end - start) as usize..]);
                self.held += right.len() as u64;
                self.extents.insert(end, right);
            }
        }
        self.held += data.len() as u64;
        self.extents.insert(offset, data);
    }

    /// Drops every held byte at or past `size`.
    fn cut_at(&mut self, size: u64) {
        let beyond: Vec<u64> = self.extents.range(size..).map(|(s, _)| *s).collect();
        for start in beyond {
            if let Some(d) = self.extents.remove(&start) {
                self.held -= d.len() as u64;
            }
        }
        if let Some(mut last) = self.extents.last_entry() {
            let start = *last.key();
            let len = last.get().len() as u64;
            if start + len > size {
                let kept = Bytes::copy_from_slice(&last.get()[..(size - start) as usize]);
                self.held -= len - kept.len() as u64;
                *last.get_mut() = kept;
            }
        }
        self.reservation.shrink_to(self.held);
    }
}

impl Upload {
    /// Switches to edit mode over `base` (or over nothing, for a new file): writes may
    /// land anywhere from now on. Writes held for reordering become extents.
    pub(crate) fn start_edit(&mut self, base: Option<Base>) {
        if self.edit.is_some() {
            return;
        }
        let base_valid = base.as_ref().map_or(0, |b| b.size);
        let end = self.len().max(base_valid);
        let settings = self.store.storage().settings();
        let mut edit = Edit {
            base,
            base_valid,
            end,
            extents: BTreeMap::new(),
            held: 0,
            reservation: std::mem::replace(&mut self.pending_reservation, Reservation::empty()),
            limit: (settings.transfer_budget / 4).max(MIB),
            changed: self.written > 0 || !self.pending.is_empty(),
        };
        for (offset, data) in std::mem::take(&mut self.pending) {
            edit.insert(offset, data);
        }
        self.pending_bytes = 0;
        self.edit = Some(edit);
    }

    /// Whether the upload is an edit that has changed nothing (yet).
    pub(crate) fn edit_unchanged(&self) -> bool {
        self.edit.as_ref().is_some_and(|e| !e.changed)
    }

    /// The file's size in edit mode.
    pub(super) fn edit_len(&self) -> Option<u64> {
        self.edit.as_ref().map(|e| e.end)
    }

    /// A write in edit mode: held as an extent (or streamed at once when it continues
    /// the stream and nothing is held). Refused, the upload unharmed, when it lands below
    /// the streamed position or leaves a hole past [`MAX_HOLE`].
    pub(super) async fn edit_write(&mut self, offset: u64, data: Bytes) -> Result<()> {
        let Some(edit) = self.edit.as_ref() else {
            return Err(StorageError::Internal("not an edit".into()));
        };
        let len = data.len() as u64;
        let write_end = offset.saturating_add(len);
        if offset < self.written {
            return Err(StorageError::BadRequest(format!(
                "a write at offset {offset} changes bytes already sent to S3 (the first {} \
                 bytes of the new version): write a file's changes within {} MiB of each \
                 other, or rewrite it whole",
                self.written,
                edit.limit / MIB
            )));
        }
        if offset > edit.end && offset - edit.end > MAX_HOLE {
            return Err(StorageError::BadRequest(format!(
                "a write at offset {offset} would leave a hole of {} bytes past the end of \
                 the file ({} bytes); at most {} GiB of zeros are added",
                offset - edit.end,
                edit.end,
                MAX_HOLE >> 30
            )));
        }
        let streams_on = offset == self.written && edit.extents.is_empty() && self.written > 0;
        let account = self.store.account().clone();
        let reserved = if streams_on {
            None
        } else {
            match account.try_reserve(len) {
                Some(more) => Some(more),
                None => {
                    // Stream what is held below this write first: that frees memory, and a
                    // write that then continues the stream needs none of its own.
                    self.flush_below(offset).await?;
                    None
                }
            }
        };
        let streams_on = reserved.is_none()
            && offset == self.written
            && self.edit.as_ref().is_some_and(|e| e.extents.is_empty());
        if streams_on {
            self.append(data).await?;
        } else {
            let more = match reserved {
                Some(more) => more,
                None => {
                    let Ok(more) = tokio::time::timeout(HOLD_PATIENCE, account.reserve(len)).await
                    else {
                        return Err(StorageError::BadRequest(format!(
                            "the server's memory for edits stayed full for {} s",
                            HOLD_PATIENCE.as_secs()
                        )));
                    };
                    more
                }
            };
            let Some(edit) = self.edit.as_mut() else {
                return Err(StorageError::Internal("not an edit".into()));
            };
            edit.reservation.merge(more);
            edit.insert(offset, data);
            edit.reservation.shrink_to(edit.held);
        }
        let Some(edit) = self.edit.as_mut() else {
            return Err(StorageError::Internal("not an edit".into()));
        };
        edit.end = edit.end.max(write_end);
        edit.changed = true;
        if edit.held > edit.limit {
            let keep = edit.limit / 2;
            self.flush_extents(keep).await?;
        }
        Ok(())
    }

    /// Sets the file's size (SETSTAT/FSETSTAT size, `ftruncate`): a smaller size drops the
    /// bytes past it, a larger one adds zeros. Refused when the bytes to drop are already
    /// in S3's hands (past the current part buffer), or the zeros would pass [`MAX_HOLE`].
    pub fn set_len(&mut self, size: u64) -> Result<()> {
        self.check_usable()?;
        if self.edit.is_none() {
            if size == self.len() {
                return Ok(());
            }
            self.start_edit(None);
        }
        let Some(edit) = self.edit.as_mut() else {
            return Err(StorageError::Internal("not an edit".into()));
        };
        if size > edit.end && size - edit.end > MAX_HOLE {
            return Err(StorageError::BadRequest(format!(
                "growing the file from {} to {size} bytes would add more than {} GiB of zeros",
                edit.end,
                MAX_HOLE >> 30
            )));
        }
        if size < self.written {
            let cut = self.written - size;
            if cut > self.buffer.len() as u64 {
                return Err(StorageError::BadRequest(format!(
                    "the file cannot be cut to {size} bytes: its first {} bytes are already \
                     sent to S3; set the size before writing far into the file",
                    self.written - self.buffer.len() as u64
                )));
            }
            let kept = self.buffer.len() - cut as usize;
            self.buffer.truncate(kept);
            self.written = size;
        }
        edit.cut_at(size);
        edit.base_valid = edit.base_valid.min(size);
        if size != edit.end {
            edit.changed = true;
        }
        edit.end = size;
        Ok(())
    }

    /// Streams held extents, lowest first, until at most `keep` bytes are held.
    async fn flush_extents(&mut self, keep: u64) -> Result<()> {
        loop {
            let Some(edit) = self.edit.as_mut() else {
                return Ok(());
            };
            if edit.held <= keep {
                return Ok(());
            }
            let Some((offset, data)) = edit.extents.pop_first() else {
                return Ok(());
            };
            edit.held -= data.len() as u64;
            // Its share of the budget goes to the part buffer it is copied into: a buffer
            // never waits for memory that the held writes keep.
            edit.reservation.shrink_to(edit.held);
            self.fill_to(offset, false).await?;
            self.append(data).await?;
        }
    }

    /// Streams the held extents that end at or before `offset`.
    async fn flush_below(&mut self, offset: u64) -> Result<()> {
        loop {
            let Some(edit) = self.edit.as_mut() else {
                return Ok(());
            };
            let Some(first) = edit.extents.first_entry() else {
                return Ok(());
            };
            if *first.key() + first.get().len() as u64 > offset {
                return Ok(());
            }
            let (start, data) = first.remove_entry();
            edit.held -= data.len() as u64;
            edit.reservation.shrink_to(edit.held);
            self.fill_to(start, false).await?;
            self.append(data).await?;
        }
    }

    /// Streams everything: the held extents and whatever follows them up to the end.
    pub(super) async fn finish_edit(&mut self) -> Result<()> {
        self.flush_extents(0).await?;
        let end = self.edit.as_ref().map_or(self.written, |e| e.end);
        self.fill_to(end, true).await
    }

    /// Brings the stream up to `target` with the base's bytes where it has them and zeros
    /// beyond. Unchanged ranges of 5 MiB and more are copied server-side (after the part
    /// buffer is sent, once it is a valid part), and so is the file's unchanged tail of
    /// 1 MiB or more (`last`: nothing follows `target`) in a file of more than a part,
    /// as the last part; shorter ranges are read with ranged GETs.
    async fn fill_to(&mut self, target: u64, last: bool) -> Result<()> {
        while self.written < target {
            let Some(edit) = self.edit.as_ref() else {
                return Err(StorageError::Internal("not an edit".into()));
            };
            let from_base = edit.base_valid.min(target);
            if self.written >= from_base {
                let zeros = target - self.written;
                self.append_zeros(zeros).await?;
                continue;
            }
            let len = from_base - self.written;
            let buffered = self.buffer.len() as u64;
            let ends_file = last && from_base == target && edit.end > self.part_size;
            let copyable = |n: u64| n >= MIN_PART_SIZE || (ends_file && n >= TAIL_COPY_MIN);
            let top_up = MIN_PART_SIZE.saturating_sub(buffered);
            if copyable(len) && (buffered == 0 || buffered >= MIN_PART_SIZE) {
                if buffered > 0 {
                    if let Err(e) = self.send_part().await {
                        return self.fail_with(e);
                    }
                }
                if let Err(e) = self.copy_base(self.written, from_base).await {
                    return self.fail_with(e);
                }
            } else if len > top_up && copyable(len - top_up) {
                // Top the buffer up to a minimal part; the rest is copied next round.
                self.get_base(self.written, top_up).await?;
            } else {
                self.get_base(self.written, len).await?;
            }
        }
        Ok(())
    }

    async fn append_zeros(&mut self, mut len: u64) -> Result<()> {
        while len > 0 {
            let take = len.min(ZEROS.len() as u64);
            self.append(Bytes::from_static(&ZEROS[..take as usize]))
                .await?;
            len -= take;
        }
        Ok(())
    }

    /// UploadPartCopy of the base's `start..end` as the next parts (each at least 5 MiB).
    async fn copy_base(&mut self, start: u64, end: u64) -> Result<()> {
        let if_match = self
            .edit
            .as_ref()
            .and_then(|e| e.base.as_ref())
            .and_then(|b| b.etag.clone());
        self.ensure_multipart().await?;
        let total = end - start;
        let pieces = total.div_ceil(COPY_PIECE);
        let piece = total.div_ceil(pieces);
        let key = self.key.clone();
        let Some(mp) = self.multipart.as_mut() else {
            return Err(StorageError::Internal("multipart upload vanished".into()));
        };
        let mut at = start;
        while at < end {
            let until = (at + piece).min(end);
            mp.reap()?;
            mp.wait_below(COPY_IN_FLIGHT).await?;
            mp.spawn_copy(CopySource {
                key: key.clone(),
                start: at,
                end: until - 1,
                if_match: if_match.clone(),
            })?;
            at = until;
        }
        self.written = end;
        tracing::debug!(key = %self.key, start, end, "unchanged range copied server-side");
        Ok(())
    }

    /// A ranged GET of the base's `len` bytes at `start`, appended as they arrive.
    async fn get_base(&mut self, start: u64, len: u64) -> Result<()> {
        let if_match = self
            .edit
            .as_ref()
            .and_then(|e| e.base.as_ref())
            .and_then(|b| b.etag.clone());
        let s3 = self.store.storage().s3();
        let out = match s3
            .get_range(&self.key, start, len, if_match.as_deref())
            .await
        {
            Ok(out) => out,
            Err(failure) => {
                let err = match failure {
                    GetFailure::NotFound => StorageError::Changed,
                    GetFailure::Denied(f) => f.into_error("GetObject"),
                    GetFailure::Unsatisfiable(f) => f.into_storage_error("GetObject"),
                    GetFailure::Other(e) => e,
                };
                return self.fail_with(err);
            }
        };
        let mut body = out.body;
        let mut got = 0u64;
        loop {
            let piece = match body.try_next().await {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(e) => {
                    return self.fail_with(StorageError::S3 {
                        op: "GetObject",
                        status: None,
                        message: format!("reading the body failed: {e}"),
                        request_id: None,
                    })
                }
            };
            got += piece.len() as u64;
            if got > len {
                break;
            }
            self.append(piece).await?;
        }
        if got != len {
            return self.fail_with(StorageError::S3Misbehaved(format!(
                "expected {len} bytes at offset {start}, got {got}"
            )));
        }
        Ok(())
    }
}

/// What an edit's failure tells the client: a 412 (the base was replaced since OPEN)
/// becomes a conflict it can act on.
pub(super) fn conflict(err: StorageError) -> StorageError {
    match err {
        StorageError::Changed => StorageError::BadRequest(
            "the file was replaced in S3 since it was opened (by another client or gateway): \
             these changes were not stored and the other version stays; open it again and \
             redo them"
                .into(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit() -> Edit {
        Edit {
            base: None,
            base_valid: 0,
            end: 0,
            extents: BTreeMap::new(),
            held: 0,
            reservation: Reservation::empty(),
            limit: MIB,
            changed: false,
        }
    }

    fn flat(e: &Edit) -> Vec<(u64, Vec<u8>)> {
        e.extents.iter().map(|(o, d)| (*o, d.to_vec())).collect()
    }

    #[test]
    fn the_newest_write_wins_and_nothing_overlaps() {
        let mut e = edit();
        e.insert(10, Bytes::from_static(b"abcdef"));
        e.insert(20, Bytes::from_static(b"xyz"));
        e.insert(12, Bytes::from_static(b"12"));
        assert_eq!(
            flat(&e),
            vec![
                (10, b"ab".to_vec()),
                (12, b"12".to_vec()),
                (14, b"ef".to_vec()),
                (20, b"xyz".to_vec())
            ]
        );
        e.insert(8, Bytes::from_static(b"0123456789abcd"));
        assert_eq!(
            flat(&e),
            vec![(8, b"0123456789abcd".to_vec()), (22, b"z".to_vec())]
        );
        assert_eq!(e.held, 15);
    }

    #[test]
    fn a_cut_drops_what_lies_past_it() {
        let mut e = edit();
        e.insert(0, Bytes::from_static(b"abcdef"));
        e.insert(10, Bytes::from_static(b"ghij"));
        e.cut_at(3);
        assert_eq!(flat(&e), vec![(0, b"abc".to_vec())]);
        assert_eq!(e.held, 3);
    }
}
