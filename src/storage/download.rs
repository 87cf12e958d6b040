//! Downloads with parallel ranged GETs: while the client reads sequentially, a window of
//! chunks ahead of it is already being fetched. A read elsewhere restarts the window at
//! that offset. Every GET is pinned to the ETag seen at open, so an object overwritten
//! mid-download gives an error, never a mix of old and new bytes.
//!
//! A chunk's buffer, once read past, is filled again by a later chunk of the same
//! download, with the budget reservation that pays for it: a long download maps its
//! buffers once instead of paying fresh zeroed pages (and their unmapping) for every
//! chunk (large buffers are mapped on their own, see `tune_allocator` in `main.rs`).

use std::collections::VecDeque;
use std::time::SystemTime;
use tracing::Instrument;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::budget::Reservation;
use super::s3::GetFailure;
use super::{ObjectHead, Result, StorageError, UserStore};

/// The first GET of a download opened while the budget is contended (or the user holds
/// its share of read-ahead) asks for this much instead of a whole chunk.
const SMALL_FIRST_RANGE: u64 = 256 * 1024;

/// One ranged GET, in flight or done.
struct Chunk {
    start: u64,
    len: u64,
    state: ChunkState,
}

enum ChunkState {
    Fetching(JoinHandle<Result<(Bytes, Reservation)>>),
    Ready(Bytes, #[allow(dead_code)] Reservation),
    /// The fetch failed (already reported); its finished handle must not be polled again.
    Failed,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.len
    }

    async fn data(&mut self) -> Result<&Bytes> {
        if let ChunkState::Fetching(handle) = &mut self.state {
            let joined = handle.await;
            self.state = ChunkState::Failed;
            let (bytes, reservation) = joined
                .map_err(|e| StorageError::Internal(format!("download task failed: {e}")))??;
            self.state = ChunkState::Ready(bytes, reservation);
        }
        match &self.state {
            ChunkState::Ready(bytes, _) => Ok(bytes),
            ChunkState::Fetching(_) | ChunkState::Failed => {
                Err(StorageError::Internal("chunk not fetched".into()))
            }
        }
    }

    /// The chunk's buffer for reuse, if it was fetched and nothing else holds its bytes.
    fn into_spare(mut self) -> Option<Spare> {
        let state = std::mem::replace(&mut self.state, ChunkState::Failed);
        let ChunkState::Ready(bytes, reservation) = state else {
            return None;
        };
        let mut buffer = bytes.try_into_mut().ok()?;
        buffer.clear();
        Some((buffer, reservation))
    }
}

/// An empty chunk buffer and the reservation that pays for it.
type Spare = (BytesMut, Reservation);

impl Drop for Chunk {
    fn drop(&mut self) {
        if let ChunkState::Fetching(handle) = &self.state {
            handle.abort();
        }
    }
}

/// A file open for reading.
pub struct Download {
    store: UserStore,
    key: String,
    size: u64,
    etag: Option<String>,
    modified: Option<SystemTime>,
    chunk_size: u64,
    max_depth: usize,
    depth: usize,
    window: VecDeque<Chunk>,
    /// Buffers of chunks read past, for the next fetches; with the window, never more
    /// than `max_depth` chunks' worth.
    spares: Vec<Spare>,
    next_fetch: u64,
    last_end: u64,
    /// Opened from a cached listing entry and nothing read yet: if that version is gone,
    /// the first read opens the current one instead of failing.
    provisional: bool,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("key", &self.key)
            .field("size", &self.size)
            .finish()
    }
}

impl Download {
    pub(crate) fn new(store: UserStore, key: String, head: ObjectHead) -> Self {
        let settings = store.storage().settings();
        let chunk_size = settings.download_chunk.max(64 * 1024);
        let max_depth = (settings.transfer_budget / chunk_size).max(1) as usize;
        Download {
            store,
            key,
            size: head.size,
            modified: head.shown_time(),
            etag: head.etag,
            chunk_size,
            max_depth,
            depth: 2.min(max_depth),
            window: VecDeque::new(),
            spares: Vec::new(),
            next_fetch: 0,
            last_end: 0,
            provisional: false,
        }
    }

    /// Opens `key` as this session's metadata cache knows it (a listing or HEAD moments
    /// ago) without asking S3: the first GET starts now, pinned to the cached ETag, and the
    /// first read waits for it. Saves the OPEN its S3 round trip when a client fetches
    /// the files it has just listed (`get -r`, GUI clients). If the object changed or went
    /// away since, the first read reopens it (the current version, or "no such file").
    pub(crate) fn open_listed(store: UserStore, key: String, head: ObjectHead) -> Self {
        let mut download = Download::new(store, key, head);
        download.provisional = true;
        download.fill_window(0);
        download
    }

    /// Opens `key` with a GET of its first chunk instead of a HEAD: the response headers
    /// give the size, ETag and date the rest of the download is pinned to, and its body
    /// is the start of the read-ahead (for a small file, the whole file in one request).
    /// `None` if there is no such object.
    pub(crate) async fn open(store: UserStore, key: String) -> Result<Option<Self>> {
        let settings = store.storage().settings();
        let chunk_size = settings.download_chunk.max(64 * 1024);
        // The first chunk is read-ahead until the client asks for it: under contention,
        // only a small first range is fetched (and paid for).
        let (mut reservation, first_range) = match store.account().try_optional(chunk_size) {
            Some(r) => (r, chunk_size),
            None => {
                let small = chunk_size.min(SMALL_FIRST_RANGE);
                (store.account().reserve(small).await, small)
            }
        };
        let out = match store.get_first(&key, first_range).await {
            Ok(out) => out,
            Err(GetFailure::NotFound) => return Ok(None),
            Err(GetFailure::Unsatisfiable(_)) => {
                // An empty object has no byte 0 to range over.
                drop(reservation);
                return Ok(store
                    .head(&key)
                    .await?
                    .map(|head| Download::new(store.clone(), key, head)));
            }
            Err(GetFailure::Other(err)) => return Err(err),
            Err(GetFailure::Denied(failure)) => return Err(failure.into_error("GetObject")),
        };
        let head = out.head;
        let size = head.size;
        let first_len = first_range.min(size);
        reservation.shrink_to(first_len);
        let mut download = Download::new(store, key, head);
        if first_len == 0 {
            return Ok(Some(download));
        }
        let retry = (
            download.store.clone(),
            download.key.clone(),
            download.etag.clone(),
        );
        let body = out.body;
        let handle = tokio::spawn(
            async move {
            match read_body(body, first_len, BytesMut::new()).await {
                Ok(data) if data.len() as u64 == first_len => return Ok((data, reservation)),
                Ok(data) => {
                    tracing::info!(key = %retry.1, got = data.len(), expected = first_len, "first GetObject body was short, retrying");
                }
                Err(e) => {
                    tracing::info!(key = %retry.1, "first GetObject body failed, retrying: {e}");
                }
            }
            let spare = Some((BytesMut::new(), reservation));
            fetch_range(retry.0, retry.1, retry.2, 0, first_len, spare).await
        }
        .in_current_span());
        download.window.push_back(Chunk {
            start: 0,
            len: first_len,
            state: ChunkState::Fetching(handle),
        });
        download.next_fetch = first_len;
        Ok(Some(download))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn modified(&self) -> Option<SystemTime> {
        self.modified
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Up to `len` bytes at `offset`: exactly `len` unless the file ends first; empty at
    /// or past the end.
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes> {
        if !self.provisional {
            return self.read_window(offset, len).await;
        }
        self.provisional = false;
        match self.read_window(offset, len).await {
            Err(StorageError::Changed) => {
                tracing::debug!(key = %self.key, "object changed since it was listed, reopening");
                match Download::open(self.store.clone(), self.key.clone()).await? {
                    Some(current) => {
                        *self = current;
                        self.read_window(offset, len).await
                    }
                    None => Err(StorageError::NotFound),
                }
            }
            other => other,
        }
    }

    async fn read_window(&mut self, offset: u64, len: u64) -> Result<Bytes> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset + len.min(self.size - offset);
        let sequential = offset == self.last_end;
        let in_window =
            self.window.front().is_some_and(|c| c.start <= offset) && offset < self.next_fetch;
        if !in_window {
            self.clear_window();
            self.next_fetch = offset;
            if !sequential {
                self.depth = 1;
            }
        }
        while self.window.front().is_some_and(|c| c.end() <= offset) {
            if let Some(chunk) = self.window.pop_front() {
                self.recycle(chunk);
            }
        }
        if sequential && self.depth < self.max_depth {
            self.depth += 1;
        }
        self.fill_window(end);

        let mut pieces: Vec<Bytes> = Vec::with_capacity(2);
        let mut pos = offset;
        for chunk in self.window.iter_mut() {
            if pos >= end {
                break;
            }
            if chunk.end() <= pos {
                continue;
            }
            let from = (pos - chunk.start) as usize;
            let to = (end.min(chunk.end()) - chunk.start) as usize;
            let data = match chunk.data().await {
                Ok(data) => data,
                Err(e) => {
                    // Forget the window: a later read fetches its range again.
                    self.clear_window();
                    self.next_fetch = offset;
                    return Err(e);
                }
            };
            if to > data.len() || from >= to {
                return Err(StorageError::S3Misbehaved(
                    "S3 returned a short range".into(),
                ));
            }
            pieces.push(data.slice(from..to));
            pos += (to - from) as u64;
        }
        self.last_end = pos;
        self.fill_window(end);
        match pieces.len() {
            0 => Err(StorageError::Internal(
                "read found no data in the window".into(),
            )),
            1 => Ok(pieces.swap_remove(0)),
            _ => {
                let mut buf = BytesMut::with_capacity((pos - offset) as usize);
                for piece in &pieces {
                    buf.extend_from_slice(piece);
                }
                Ok(buf.freeze())
            }
        }
    }

    /// Keeps `chunk`'s buffer for a later fetch, if it has one free and there is room
    /// (and nobody waits for memory: then it goes back to the budget).
    fn recycle(&mut self, chunk: Chunk) {
        if self.spares.len() + self.window.len() < self.max_depth
            && !self.store.account().contended()
        {
            if let Some(spare) = chunk.into_spare() {
                self.spares.push(spare);
            }
        }
    }

    fn clear_window(&mut self) {
        while let Some(chunk) = self.window.pop_front() {
            self.recycle(chunk);
        }
    }

    /// Schedules GETs so the window covers `needed_end` and `depth` chunks. Chunks past
    /// `needed_end` are read-ahead, optional memory: when the budget will not give it at
    /// once (someone waits, or this user holds its share of read-ahead), the window
    /// shrinks instead of waiting.
    fn fill_window(&mut self, needed_end: u64) {
        if self.store.account().contended() {
            self.spares.clear();
        }
        while self.next_fetch < self.size
            && (self.window.len() < self.depth || self.next_fetch < needed_end)
        {
            let start = self.next_fetch;
            let len = self.chunk_size.min(self.size - start);
            let spare = match self.spares.pop() {
                Some(spare) => Some(spare),
                None if start >= needed_end => match self.store.account().try_optional(len) {
                    Some(reservation) => Some((BytesMut::new(), reservation)),
                    None => {
                        self.depth = self.window.len().max(1);
                        break;
                    }
                },
                None => None,
            };
            self.next_fetch += len;
            let handle = tokio::spawn(
                fetch_range(
                    self.store.clone(),
                    self.key.clone(),
                    self.etag.clone(),
                    start,
                    len,
                    spare,
                )
                .in_current_span(),
            );
            self.window.push_back(Chunk {
                start,
                len,
                state: ChunkState::Fetching(handle),
            });
        }
    }
}

/// Reads a GET body of `expected` bytes into `buf` (emptied first), copying each piece as
/// it arrives (collecting the pieces first would hold the chunk twice). Stops early past
/// `expected`.
async fn read_body(
    mut body: aws_sdk_s3::primitives::ByteStream,
    expected: u64,
    mut buf: BytesMut,
) -> std::result::Result<Bytes, aws_sdk_s3::primitives::ByteStreamError> {
    buf.clear();
    buf.reserve(usize::try_from(expected).unwrap_or(0));
    while let Some(piece) = body.try_next().await? {
        buf.extend_from_slice(&piece);
        if buf.len() as u64 > expected {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Attempts per chunk when the response body fails mid-way (the SDK retries a request
/// only until its body starts streaming; a body cut short is retried here).
const BODY_ATTEMPTS: u32 = 3;

/// Fetches `len` bytes at `start` into `spare`'s buffer, under its reservation, or into a
/// new buffer reserved from the budget.
async fn fetch_range(
    store: UserStore,
    key: String,
    etag: Option<String>,
    start: u64,
    len: u64,
    spare: Option<Spare>,
) -> Result<(Bytes, Reservation)> {
    let (mut buffer, reservation) = match spare {
        Some((buffer, mut reservation)) if reservation.covers(len) => {
            reservation.shrink_to(len);
            (buffer, reservation)
        }
        _ => (BytesMut::new(), store.account().reserve(len).await),
    };
    let mut attempt = 1;
    loop {
        match get_range(&store, &key, etag.as_deref(), start, len, buffer).await {
            Ok(body) => return Ok((body, reservation)),
            Err(Fetch::Body(message)) if attempt < BODY_ATTEMPTS => {
                tracing::info!(%key, start, attempt, "GetObject body failed, retrying: {message}");
                buffer = BytesMut::new();
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                    .await;
                attempt += 1;
            }
            Err(Fetch::Body(message)) => {
                return Err(StorageError::S3 {
                    op: "GetObject",
                    status: None,
                    message,
                    request_id: None,
                })
            }
            Err(Fetch::Request(e)) => return Err(e),
        }
    }
}

/// How one ranged GET failed.
enum Fetch {
    /// The request failed (after the SDK's own retries).
    Request(StorageError),
    /// The response body broke off or had the wrong length.
    Body(String),
}

/// One ranged GET pinned to `etag`, its body read into `buffer`.
async fn get_range(
    store: &UserStore,
    key: &str,
    etag: Option<&str>,
    start: u64,
    len: u64,
    buffer: BytesMut,
) -> std::result::Result<Bytes, Fetch> {
    let out = store
        .storage()
        .s3()
        .get_range(key, start, len, etag)
        .await
        .map_err(|failure| {
            Fetch::Request(match failure {
                GetFailure::NotFound => StorageError::Changed,
                GetFailure::Denied(failure) => failure.into_error("GetObject"),
                GetFailure::Unsatisfiable(failure) => failure.into_storage_error("GetObject"),
                GetFailure::Other(err) => err,
            })
        })?;
    let body = read_body(out.body, len, buffer)
        .await
        .map_err(|e| Fetch::Body(format!("reading the body failed: {e}")))?;
    if body.len() as u64 != len {
        return Err(Fetch::Body(format!(
            "expected {len} bytes at offset {start}, got {}",
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryBudget;

    async fn ready_chunk(budget: &MemoryBudget, bytes: Bytes) -> Chunk {
        Chunk {
            start: 0,
            len: bytes.len() as u64,
            state: ChunkState::Ready(bytes, budget.reserve(1 << 20).await),
        }
    }

    #[tokio::test]
    async fn a_read_chunk_gives_back_its_buffer_and_reservation() {
        let budget = MemoryBudget::new(8 << 20);
        let mut buffer = BytesMut::with_capacity(1 << 20);
        buffer.extend_from_slice(&[7u8; 1 << 20]);
        let at = buffer.as_ptr();
        let chunk = ready_chunk(&budget, buffer.freeze()).await;
        assert_eq!(budget.in_use(), 1 << 20);
        let (spare, reservation) = chunk.into_spare().expect("nothing else holds it");
        assert!(spare.is_empty());
        assert_eq!(spare.as_ptr(), at, "the same memory");
        assert!(spare.capacity() >= 1 << 20);
        assert!(reservation.covers(1 << 20));
        assert_eq!(budget.in_use(), 1 << 20, "still paid for");
        drop((spare, reservation));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_chunk_still_being_sent_keeps_its_buffer() {
        let budget = MemoryBudget::new(8 << 20);
        let bytes = Bytes::from(vec![1u8; 4096]);
        let reply = bytes.slice(10..20);
        let chunk = ready_chunk(&budget, bytes).await;
        assert!(chunk.into_spare().is_none());
        assert_eq!(&reply[..], &[1u8; 10]);
        assert_eq!(budget.in_use(), 0, "its reservation went with it");
    }
}
