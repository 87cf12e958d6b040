//! READ on an `r+` handle: the file as the handle's writes left it, without a commit.
//! Paramiko and other libraries read back through the handle they write with.

use bytes::Bytes;

use super::super::Upload;
use crate::storage::s3::GetFailure;
use crate::storage::{Result, StorageError};

impl Upload {
    /// Up to `len` bytes of the file as this handle sees it, at `offset` (a READ on an
    /// `r+` handle): held writes from memory, the bytes in the part buffer, the base's by
    /// a ranged GET (pinned to its ETag), zeros in holes; empty at or past the end.
    /// Refused for bytes already sent to S3, and on an upload that is not an edit (a new
    /// or truncated file streamed from offset 0: reopen it to read it).
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes> {
        self.check_usable()?;
        let Some(edit) = self.edit.as_ref() else {
            return Err(StorageError::Unsupported(
                "this file is being uploaded from its first byte: reading it back is possible once it is closed",
            ));
        };
        let stop = offset.saturating_add(len).min(edit.end);
        if offset >= stop {
            return Ok(Bytes::new());
        }
        let buffered_from = self.written - self.buffer.len() as u64;
        if offset < buffered_from {
            return Err(StorageError::BadRequest(format!(
                "bytes {offset}..{buffered_from} of the new version are already sent to S3 and                  cannot be read back through this handle: close it and open the file again"
            )));
        }
        let mut out = bytes::BytesMut::with_capacity((stop - offset) as usize);
        let mut at = offset;
        while at < stop {
            if at < self.written {
                let from = (at - buffered_from) as usize;
                let until = (stop.min(self.written) - buffered_from) as usize;
                out.extend_from_slice(&self.buffer[from..until]);
                at = stop.min(self.written);
                continue;
            }
            let Some(edit) = self.edit.as_ref() else {
                return Err(StorageError::Internal("not an edit".into()));
            };
            let covering = edit
                .extents
                .range(..=at)
                .next_back()
                .filter(|(start, d)| *start + d.len() as u64 > at);
            if let Some((start, data)) = covering {
                let until = (start + data.len() as u64).min(stop);
                out.extend_from_slice(&data[(at - start) as usize..(until - start) as usize]);
                at = until;
                continue;
            }
            let next = edit
                .extents
                .range(at..)
                .next()
                .map_or(stop, |(start, _)| (*start).min(stop));
            let from_base = edit.base_valid.min(next);
            if at < from_base {
                let etag = edit.base.as_ref().and_then(|b| b.etag.clone());
                let got = read_base(self, at, from_base - at, etag.as_deref()).await?;
                out.extend_from_slice(&got);
                at = from_base;
            } else {
                out.resize(out.len() + (next - at) as usize, 0);
                at = next;
            }
        }
        Ok(out.freeze())
    }
}

/// `len` bytes of the base at `start`, by one ranged GET pinned to `etag`.
async fn read_base(upload: &Upload, start: u64, len: u64, etag: Option<&str>) -> Result<Bytes> {
    let s3 = upload.store.storage().s3();
    let out =
        s3.get_range(&upload.key, start, len, etag)
            .await
            .map_err(|failure| match failure {
                GetFailure::NotFound => StorageError::Changed,
                GetFailure::Denied(f) => f.into_error("GetObject"),
                GetFailure::Unsatisfiable(f) => f.into_storage_error("GetObject"),
                GetFailure::Other(e) => e,
            })?;
    let body = out.body.collect().await.map_err(|e| StorageError::S3 {
        op: "GetObject",
        status: None,
        message: format!("reading the body failed: {e}"),
        request_id: None,
    })?;
    let body = body.into_bytes();
    if body.len() as u64 != len {
        return Err(StorageError::S3Misbehaved(format!(
            "expected {len} bytes at offset {start}, got {}",
            body.len()
        )));
    }
    Ok(body)
}
