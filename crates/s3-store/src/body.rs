//! Moving object bytes: request bodies into temporary files (hashing as they arrive),
//! data files out as response bodies (in chunks, never whole), and file-to-file copies.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::dto::StreamingBlob;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{s3_error, S3Error, S3Result, StdError};
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, BufWriter, ReadBuf};

use super::error::{custom, internal};
use super::store::{random_hex, Bucket, TempPath};

/// Size of the chunks a GET body is read and sent in.
const READ_CHUNK: usize = 256 * 1024;
/// Write buffer between the network and a temporary file.
const WRITE_BUFFER: usize = 1024 * 1024;

/// A request body stored in a temporary file, with what S3 needs to know about it.
pub(crate) struct Received {
    pub(crate) file: TempPath,
    pub(crate) size: u64,
    /// The ETag of the simple object or part these bytes make (see [`EtagSource`]).
    pub(crate) etag: String,
}

/// How the ETag of a received body is made.
pub(crate) enum EtagSource {
    /// The hex MD5 of the bytes; when the request carried a Content-MD5, the bytes must
    /// match it (else `BadDigest` and nothing is stored).
    Md5 { expected: Option<[u8; 16]> },
    /// 16 random bytes in hex. For a part sent without Content-MD5: hashing it only to
    /// name it cost this store more CPU than receiving and writing it (MD5 runs at about
    /// 0.5 GB/s). A part's ETag is an opaque name that CompleteMultipartUpload hands back;
    /// S3's own part ETags are not MD5s either under SSE-KMS.
    Random,
}

impl EtagSource {
    /// A simple object's ETag is always its MD5: clients compare it with their own.
    pub(crate) fn object(content_md5: Option<&str>) -> S3Result<EtagSource> {
        Ok(EtagSource::Md5 {
            expected: content_md5.map(parse_content_md5).transpose()?,
        })
    }

    /// A part's ETag is its MD5 only when the client sent a Content-MD5 to check
    /// (rclone does, for every part); otherwise it is random.
    pub(crate) fn part(content_md5: Option<&str>) -> S3Result<EtagSource> {
        Ok(match content_md5 {
            Some(value) => EtagSource::Md5 {
                expected: Some(parse_content_md5(value)?),
            },
            None => EtagSource::Random,
        })
    }
}

/// The 16 bytes of a Content-MD5 header (base64), or `InvalidDigest`.
fn parse_content_md5(value: &str) -> S3Result<[u8; 16]> {
    base64_simd::STANDARD
        .decode_to_vec(value.trim())
        .ok()
        .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
        .ok_or_else(|| s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid."))
}

/// The value of an `x-amz-checksum-crc32c` header (base64 of the big-endian CRC32C),
/// which the body must match; `InvalidRequest` if it is no such value.
pub(crate) fn expected_crc32c(header: Option<&str>) -> S3Result<Option<u32>> {
    let Some(value) = header else {
        return Ok(None);
    };
    base64_simd::STANDARD
        .decode_to_vec(value.trim())
        .ok()
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        .map(|bytes| Some(u32::from_be_bytes(bytes)))
        .ok_or_else(|| {
            s3_error!(
                InvalidRequest,
                "Value for x-amz-checksum-crc32c header is invalid."
            )
        })
}

/// Streams `body` into a new temporary file of `bucket`, making its ETag as `etag` says;
/// with `crc32c`, the body must have that CRC32C (else `BadDigest`, nothing stored).
///
/// `expected_len` is the request's Content-Length; a body of another length is
/// `IncompleteBody`. A failed signature check of the payload surfaces here, at the end of
/// the stream, which is why nothing is renamed into place before this returns.
pub(crate) async fn receive(
    bucket: &Bucket,
    body: Option<StreamingBlob>,
    expected_len: Option<i64>,
    etag: EtagSource,
    crc32c: Option<u32>,
) -> S3Result<Received> {
    let tmp = bucket.temp_path();
    let file = crate::private::create_file_async(tmp.path())
        .await
        .map_err(|e| internal("create temporary file", e))?;
    let (size, etag) = write_body(file, body, None, etag, crc32c).await?;
    if expected_len.is_some_and(|expected| u64::try_from(expected).ok() != Some(size)) {
        return Err(incomplete_body());
    }
    Ok(Received {
        file: tmp,
        size,
        etag,
    })
}

/// Streams `body`, which must be exactly `len` bytes, into the file at `path` (created if
/// missing) from `offset` on: a part written in place in its upload's assembly file.
/// Writing stops before a longer body could reach the bytes after `offset + len`. Returns
/// the ETag. On error the region holds garbage that no part refers to.
pub(crate) async fn receive_at(
    path: &Path,
    offset: u64,
    len: u64,
    body: Option<StreamingBlob>,
    etag: EtagSource,
    crc32c: Option<u32>,
) -> S3Result<String> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| internal("open assembly file", e))?;
    file.seek(SeekFrom::Start(offset))
        .await
        .map_err(|e| internal("seek assembly file", e))?;
    let (size, etag) = write_body(file, body, Some(len), etag, crc32c).await?;
    if size != len {
        return Err(incomplete_body());
    }
    Ok(etag)
}

/// Writes the body through a buffer, hashing it if the ETag is an MD5 and checking its
/// CRC32C if one is expected; stops with `IncompleteBody` past `limit` bytes. Returns
/// the size and the ETag.
async fn write_body(
    file: tokio::fs::File,
    body: Option<StreamingBlob>,
    limit: Option<u64>,
    etag: EtagSource,
    crc32c: Option<u32>,
) -> S3Result<(u64, String)> {
    let mut file = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut md5 = match etag {
        EtagSource::Md5 { .. } => Some(Md5::new()),
        EtagSource::Random => None,
    };
    let mut crc = crc32c.map(|_| crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi));
    let mut size: u64 = 0;
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(body_error)?;
            size += chunk.len() as u64;
            if limit.is_some_and(|limit| size > limit) {
                return Err(incomplete_body());
            }
            if let Some(md5) = &mut md5 {
                md5.update(&chunk);
            }
            if let Some(crc) = &mut crc {
                crc.update(&chunk);
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| internal("write temporary file", e))?;
        }
    }
    file.flush()
        .await
        .map_err(|e| internal("write temporary file", e))?;
    drop(file);
    if let (Some(crc), Some(expected)) = (crc, crc32c) {
        if crc.finalize() as u32 != expected {
            return Err(s3_error!(
                BadDigest,
                "The CRC32C you specified did not match the calculated checksum."
            ));
        }
    }
    let etag = match (md5, etag) {
        (Some(md5), EtagSource::Md5 { expected }) => {
            let digest: [u8; 16] = md5.finalize().into();
            if expected.is_some_and(|expected| expected != digest) {
                return Err(s3_error!(
                    BadDigest,
                    "The Content-MD5 you specified did not match what we received."
                ));
            }
            hex::encode(digest)
        }
        _ => random_hex(16),
    };
    Ok((size, etag))
}

fn incomplete_body() -> S3Error {
    s3_error!(
        IncompleteBody,
        "You did not provide the number of bytes specified by the Content-Length HTTP header."
    )
}

/// Maps an error of the request body stream to the S3 error the client should see.
fn body_error(err: StdError) -> S3Error {
    match err.downcast::<S3Error>() {
        Ok(err) => *err,
        Err(err) => {
            let text = err.to_string();
            tracing::debug!(error = %text, "embedded S3 store: request body failed");
            if text.contains("Sha256Mismatch") {
                custom(
                    "XAmzContentSHA256Mismatch",
                    400,
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                )
            } else {
                s3_error!(
                    IncompleteBody,
                    "The request body ended early or could not be decoded."
                )
            }
        }
    }
}

/// Bodies up to this size are read at once, on the calling thread, like the `open` of the
/// data file before them: one read of a small file costs about what that `open` does,
/// while a read through tokio's blocking pool costs two thread wake-ups. Most of a GET of
/// a small object was that hand-off.
pub(crate) const SMALL_BODY: u64 = 64 * 1024;

/// A GET response body: `len` bytes of an already opened data file, read in chunks
/// (small bodies at once, see [`SMALL_BODY`]).
///
/// The file was opened under the bucket lock, so it is the version the response headers
/// describe even if the key is overwritten meanwhile. Reports its exact length so the
/// response carries a Content-Length.
pub(crate) struct FileBody {
    file: tokio::fs::File,
    /// A small body, already read.
    read: Option<Bytes>,
    remaining: u64,
    buf: Vec<u8>,
}

impl FileBody {
    /// A body of `len` bytes of `file` starting at `offset`. A data file shorter than
    /// that is an error here when the body is small, else when the stream reaches its end.
    pub(crate) fn new(mut file: fs::File, offset: u64, len: u64) -> io::Result<FileBody> {
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        let read = match usize::try_from(len) {
            Ok(n) if n > 0 && len <= SMALL_BODY => {
                let mut bytes = vec![0; n];
                file.read_exact(&mut bytes)?;
                Some(Bytes::from(bytes))
            }
            _ => None,
        };
        Ok(FileBody {
            file: tokio::fs::File::from_std(file),
            read,
            remaining: len,
            buf: Vec::new(),
        })
    }
}

impl Stream for FileBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(bytes) = this.read.take() {
            this.remaining = 0;
            return Poll::Ready(Some(Ok(bytes)));
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining)
            .unwrap_or(READ_CHUNK)
            .min(READ_CHUNK);
        if this.buf.len() != want {
            this.buf = vec![0; want];
        }
        let mut read_buf = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut read_buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => {
                this.remaining = 0;
                tracing::error!(error = %err, "embedded S3 store: cannot read object file");
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    this.remaining = 0;
                    let err = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "object file is shorter than its metadata",
                    );
                    return Poll::Ready(Some(Err(Box::new(err))));
                }
                let mut chunk = std::mem::take(&mut this.buf);
                chunk.truncate(n);
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Bytes::from(chunk))))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, None)
    }
}

impl ByteStream for FileBody {
    fn remaining_length(&self) -> RemainingLength {
        match usize::try_from(self.remaining) {
            Ok(n) => RemainingLength::new_exact(n),
            Err(_) => RemainingLength::unknown(),
        }
    }
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> S3Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(internal(what, err)),
        Err(err) => Err(internal(what, io::Error::other(err.to_string()))),
    }
}

/// Copies `len` bytes of `src` from `offset` into a new file `dst`; returns the hex MD5.
/// Blocking.
pub(crate) fn copy_range_hashing(
    mut src: fs::File,
    offset: u64,
    len: u64,
    dst: &Path,
) -> io::Result<String> {
    src.seek(SeekFrom::Start(offset))?;
    let mut src = src.take(len);
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, crate::private::create_file(dst)?);
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; WRITE_BUFFER];
    let mut copied: u64 = 0;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        md5.update(chunk);
        out.write_all(chunk)?;
        copied += n as u64;
    }
    out.flush()?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "source file is shorter than its metadata",
        ));
    }
    Ok(hex::encode(md5.finalize()))
}

/// Copies the whole of `src` into a new file `dst` (the kernel may do it without reading).
/// Blocking.
pub(crate) fn copy_file(mut src: fs::File, dst: &Path) -> io::Result<u64> {
    let mut out = crate::private::create_file(dst)?;
    io::copy(&mut src, &mut out)
}

/// Concatenates `sources` (file, offset, length) into a new file `dst`. Blocking.
pub(crate) fn concat_ranges(sources: &[(PathBuf, u64, u64)], dst: &Path) -> io::Result<()> {
    let mut out = crate::private::create_file(dst)?;
    for (path, offset, len) in sources {
        let mut file = fs::File::open(path)?;
        if *offset > 0 {
            file.seek(SeekFrom::Start(*offset))?;
        }
        let copied = io::copy(&mut file.take(*len), &mut out)?;
        if copied != *len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a part file is shorter than its metadata",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&bytes).expect("write");
        (file, bytes)
    }

    async fn collect(mut body: FileBody) -> (Vec<Bytes>, Option<String>) {
        let mut chunks = Vec::new();
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => chunks.push(chunk),
                Err(e) => return (chunks, Some(e.to_string())),
            }
        }
        (chunks, None)
    }

    #[tokio::test]
    async fn a_small_body_is_read_at_once_from_its_offset() {
        let (file, bytes) = data_file(200_000);
        let body = FileBody::new(file.reopen().expect("reopen"), 40_000, SMALL_BODY).expect("body");
        assert_eq!(body.remaining_length().exact(), Some(SMALL_BODY as usize));
        let (chunks, error) = collect(body).await;
        assert_eq!(error, None);
        assert_eq!(chunks.len(), 1, "one piece, read before the response");
        assert_eq!(&chunks[0][..], &bytes[40_000..40_000 + SMALL_BODY as usize]);
    }

    #[tokio::test]
    async fn a_large_body_streams_in_chunks() {
        let len = READ_CHUNK * 2 + 123;
        let (file, bytes) = data_file(len + 5);
        let body = FileBody::new(file.reopen().expect("reopen"), 5, len as u64).expect("body");
        let (chunks, error) = collect(body).await;
        assert_eq!(error, None);
        assert!(chunks.len() >= 3, "read in chunks of at most {READ_CHUNK}");
        assert!(chunks.iter().all(|c| c.len() <= READ_CHUNK));
        assert_eq!(chunks.concat(), &bytes[5..]);
    }

    #[tokio::test]
    async fn a_data_file_shorter_than_its_metadata_is_an_error() {
        let (file, _) = data_file(1_000);
        let small = FileBody::new(file.reopen().expect("reopen"), 0, 2_000);
        assert!(
            small.is_err(),
            "a small body fails before the response starts"
        );

        let (file, _) = data_file(READ_CHUNK);
        let large = FileBody::new(file.reopen().expect("reopen"), 0, READ_CHUNK as u64 * 2)
            .expect("a large body opens");
        let (chunks, error) = collect(large).await;
        assert_eq!(chunks.concat().len(), READ_CHUNK);
        assert!(error.is_some_and(|e| e.contains("shorter")));
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let (file, _) = data_file(10);
        let body = FileBody::new(file.reopen().expect("reopen"), 10, 0).expect("body");
        let (chunks, error) = collect(body).await;
        assert!(chunks.is_empty() && error.is_none());
    }
}
