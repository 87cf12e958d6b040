//! Downloads with parallel ranged GETs: while the client reads sequentially, a window of
//! chunks ahead of it is already being fetched. A read elsewhere restarts the window at
//! that offset. Every GET is pinned to the ETag seen at open, so an object overwritten
//! mid-download gives an error, never a mix of old and new bytes.
//!
//! A chunk's buffer, once read past, is filled again by a later chunk of the same
//! download, with the budget reservation that pays for it: a long download maps its
//! buffers once instead of paying fresh zeroed pages (and their unmapping) for every
//! chunk (large buffers are mapped on their own, see `tune_allocator` in `main.rs`).
//!
//! The memory rule (for admins in `docs/configuration.md`, "Downloads"):
//! - every chunk a handle buffers, including the one the current READ falls in, is
//!   read-ahead: optional memory, reserved from the budget before its GET starts, and
//!   only if the budget gives it at once ([`Account::try_optional`]). A READ never waits
//!   for memory;
//! - a READ the window cannot cover (no memory for its chunk) is answered by a ranged
//!   GET of exactly the bytes asked for, which become the reply: that memory is the READ
//!   being answered, one per session at a time, and not the budget's;
//! - a handle not read for [`READAHEAD_IDLE`] lets go of its read-ahead (buffers and
//!   reservations), so idle handles cannot keep memory from anyone, their own user's
//!   other handles included.
//!
//! [`Account::try_optional`]: super::budget::Account::try_optional

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::budget::Reservation;
use super::s3::GetFailure;
use super::{ObjectHead, Result, StorageError, UserStore};

/// The first GET of a download opened while the budget is contended (or the user holds
/// its share of read-ahead) asks for this much instead of a whole chunk.
const SMALL_FIRST_RANGE: u64 = 256 * 1024;

/// A handle not read for this long gives its read-ahead back to the budget. Clients
/// downloading a file read it without such pauses; one that comes back later pays a
/// fresh GET.
pub const READAHEAD_IDLE: Duration = Duration::from_secs(2);

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

/// The memory a download holds: its chunks and spare buffers. Shared with the task that
/// lets it go once the handle is idle (see [`reap_when_idle`]).
struct Window {
    chunks: VecDeque<Chunk>,
    /// Buffers of chunks read past, for the next fetches; with the chunks, never more
    /// than `max_depth` chunks' worth.
    spares: Vec<Spare>,
    /// When the handle was last read (or opened).
    last_used: Instant,
    /// A reaper task watches this window.
    watched: bool,
}

impl Window {
    fn new() -> Self {
        Window {
            chunks: VecDeque::new(),
            spares: Vec::new(),
            last_used: Instant::now(),
            watched: false,
        }
    }

    fn holds_memory(&self) -> bool {
        !self.chunks.is_empty() || !self.spares.is_empty()
    }

    /// Drops every buffer (and aborts every fetch): their reservations go back.
    fn let_go(&mut self) {
        self.chunks.clear();
        self.spares.clear();
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
    window: Arc<Mutex<Window>>,
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
            window: Arc::new(Mutex::new(Window::new())),
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
        let shared = download.window.clone();
        // Nobody else has the new window yet: the lock is free.
        if let Ok(mut window) = shared.try_lock() {
            download.fill_window(&mut window, 0);
        }
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
        // only a small first range is fetched (and paid for); with no read-ahead memory
        // at all, one byte, for the headers.
        let account = store.account();
        let small = chunk_size.min(SMALL_FIRST_RANGE);
        let (mut reservation, first_range) = match account.try_optional(chunk_size) {
            Some(r) => (r, chunk_size),
            None => match account.try_optional(small) {
                Some(r) => (r, small),
                None => (Reservation::empty(), 1),
            },
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
        if reservation.bytes() == 0 {
            // Nothing to keep the body in: read the byte (so the HTTP connection is
            // reused) and start with an empty window; reads are direct until memory frees.
            let _ = read_body(out.body, first_len, BytesMut::new()).await;
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
            let spare = (BytesMut::new(), reservation);
            fetch_range(retry.0, retry.1, retry.2, 0, first_len, spare).await
        }
        .in_current_span());
        let shared = download.window.clone();
        if let Ok(mut window) = shared.try_lock() {
            window.chunks.push_back(Chunk {
                start: 0,
                len: first_len,
                state: ChunkState::Fetching(handle),
            });
            download.next_fetch = first_len;
            download.watch(&mut window);
        }
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
        let shared = self.window.clone();
        let mut window = shared.lock().await;
        window.last_used = Instant::now();
        let read = self.read_locked(&mut window, offset, end).await;
        window.last_used = Instant::now();
        self.watch(&mut window);
        read
    }

    async fn read_locked(&mut self, w: &mut Window, offset: u64, end: u64) -> Result<Bytes> {
        let sequential = offset == self.last_end;
        let in_window =
            w.chunks.front().is_some_and(|c| c.start <= offset) && offset < self.next_fetch;
        if !in_window {
            self.clear_window(w);
            self.next_fetch = offset;
            if !sequential {
                self.depth = 1;
            }
        }
        while w.chunks.front().is_some_and(|c| c.end() <= offset) {
            if let Some(chunk) = w.chunks.pop_front() {
                self.recycle(w, chunk);
            }
        }
        if sequential && self.depth < self.max_depth {
            self.depth += 1;
        }
        self.fill_window(w, end);
        let covered = w.chunks.front().is_some_and(|c| c.start <= offset) && self.next_fetch >= end;
        if !covered {
            // No read-ahead memory for this range: fetch just the bytes asked for.
            let data = fetch(
                &self.store,
                &self.key,
                self.etag.as_deref(),
                offset,
                end - offset,
                BytesMut::new(),
            )
            .await?;
            self.last_end = end;
            return Ok(data);
        }

        let mut pieces: Vec<Bytes> = Vec::with_capacity(2);
        let mut pos = offset;
        for chunk in w.chunks.iter_mut() {
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
                    self.clear_window(w);
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
        self.fill_window(w, end);
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
    fn recycle(&self, w: &mut Window, chunk: Chunk) {
        if w.spares.len() + w.chunks.len() < self.max_depth && !self.store.account().contended() {
            if let Some(spare) = chunk.into_spare() {
                w.spares.push(spare);
            }
        }
    }

    fn clear_window(&self, w: &mut Window) {
        while let Some(chunk) = w.chunks.pop_front() {
            self.recycle(w, chunk);
        }
    }

    /// Schedules GETs so the window covers `needed_end` and `depth` chunks, as far as
    /// read-ahead memory allows: when the budget will not give a chunk at once (someone
    /// waits, or this user holds its share of read-ahead), the window shrinks instead of
    /// waiting, and a read it does not cover is fetched directly.
    fn fill_window(&mut self, w: &mut Window, needed_end: u64) {
        if self.store.account().contended() {
            w.spares.clear();
        }
        while self.next_fetch < self.size
            && (w.chunks.len() < self.depth || self.next_fetch < needed_end)
        {
            let start = self.next_fetch;
            let len = self.chunk_size.min(self.size - start);
            let Some(spare) = self.memory_for(w, len) else {
                self.depth = w.chunks.len().max(1);
                break;
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
            w.chunks.push_back(Chunk {
                start,
                len,
                state: ChunkState::Fetching(handle),
            });
        }
        self.watch(w);
    }

    /// A buffer and a reservation for a chunk of `len` bytes: a spare (topped up if it is
    /// too small), or optional memory; `None` if the budget will not give it now.
    fn memory_for(&self, w: &mut Window, len: u64) -> Option<Spare> {
        let account = self.store.account();
        match w.spares.pop() {
            Some((buffer, mut reservation)) => {
                if !reservation.covers(len) {
                    reservation.merge(account.try_optional(len - reservation.bytes())?);
                }
                Some((buffer, reservation))
            }
            None => Some((BytesMut::new(), account.try_optional(len)?)),
        }
    }

    /// Makes sure a task lets the window's memory go once the handle is idle.
    fn watch(&self, w: &mut Window) {
        if w.watched || !w.holds_memory() {
            return;
        }
        w.watched = true;
        tokio::spawn(
            reap_when_idle(Arc::downgrade(&self.window), self.key.clone()).in_current_span(),
        );
    }
}

/// Lets go of a download's read-ahead once it has not been read for [`READAHEAD_IDLE`];
/// ends then, or when the download is gone. A window being read is not idle.
async fn reap_when_idle(window: Weak<Mutex<Window>>, key: String) {
    let mut wait = READAHEAD_IDLE;
    loop {
        tokio::time::sleep(wait).await;
        let Some(shared) = window.upgrade() else {
            return;
        };
        let Ok(mut w) = shared.try_lock() else {
            wait = READAHEAD_IDLE;
            continue;
        };
        let idle = w.last_used.elapsed();
        if idle >= READAHEAD_IDLE {
            tracing::debug!(key = %crate::log_text::escaped(&key), "handle idle; letting its read-ahead go");
            w.let_go();
            w.watched = false;
            return;
        }
        wait = READAHEAD_IDLE - idle;
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

/// Fetches `len` bytes at `start` into `spare`'s buffer, under its reservation.
async fn fetch_range(
    store: UserStore,
    key: String,
    etag: Option<String>,
    start: u64,
    len: u64,
    spare: Spare,
) -> Result<(Bytes, Reservation)> {
    let (buffer, reservation) = spare;
    let body = fetch(&store, &key, etag.as_deref(), start, len, buffer).await?;
    Ok((body, reservation))
}

/// Fetches `len` bytes at `start` into `buffer`, retrying a body that breaks off.
async fn fetch(
    store: &UserStore,
    key: &str,
    etag: Option<&str>,
    start: u64,
    len: u64,
    mut buffer: BytesMut,
) -> Result<Bytes> {
    let mut attempt = 1;
    loop {
        match get_range(store, key, etag, start, len, buffer).await {
            Ok(body) => return Ok(body),
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
    async fn letting_an_idle_window_go_gives_back_every_reservation() {
        let budget = MemoryBudget::new(8 << 20);
        let mut window = Window::new();
        assert!(!window.holds_memory());
        window
            .chunks
            .push_back(ready_chunk(&budget, Bytes::from(vec![2u8; 1 << 20])).await);
        window
            .spares
            .push((BytesMut::new(), budget.reserve(1 << 20).await));
        window.chunks.push_back(Chunk {
            start: 1 << 20,
            len: 1 << 20,
            state: ChunkState::Fetching(tokio::spawn({
                let reservation = budget.reserve(1 << 20).await;
                async move {
                    std::future::pending::<()>().await;
                    Ok((Bytes::new(), reservation))
                }
            })),
        });
        assert!(window.holds_memory());
        assert_eq!(budget.in_use(), 3 << 20);
        window.let_go();
        assert!(!window.holds_memory());
        // The aborted fetch drops its reservation once the runtime polls it again.
        for _ in 0..1000 {
            if budget.in_use() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
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
