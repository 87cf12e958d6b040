//! The orphan sweep: multipart uploads that a crashed or killed gateway never finished
//! or aborted keep their parts (and their cost) in the bucket. At start, and every
//! so often, uploads under the managed prefixes that are older than a set age are
//! aborted. Everything under a user's prefix is written by s3sftp, so an upload there
//! that old is one of ours that nobody will complete (uploads in flight are minutes or
//! hours old, not a day). The bucket's `AbortIncompleteMultipartUpload` lifecycle rule
//! is the backstop for prefixes no longer in the users file.

use std::time::{Duration, SystemTime};

use super::error::{s3_error, Result};
use super::{to_system_time, Storage};

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Uploads seen under the prefixes.
    pub seen: usize,
    /// Uploads aborted because they were older than the limit.
    pub aborted: usize,
    /// Aborts that failed (logged; retried at the next sweep).
    pub failed: usize,
}

/// Aborts multipart uploads under `prefixes` initiated more than `older_than` ago.
pub async fn sweep_orphans(
    storage: &Storage,
    prefixes: &[String],
    older_than: Duration,
) -> Result<SweepReport> {
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = SweepReport::default();
    for prefix in prefixes {
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let page = storage
                .client()
                .list_multipart_uploads()
                .bucket(storage.bucket())
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await
                .map_err(|e| s3_error("ListMultipartUploads", e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                // Never trust the server's prefix filter with an abort (moto ignores it).
                if !key.starts_with(prefix.as_str()) {
                    continue;
                }
                report.seen += 1;
                let started = upload.initiated().and_then(to_system_time);
                if started.is_none_or(|t| t > cutoff) {
                    continue;
                }
                match storage
                    .client()
                    .abort_multipart_upload()
                    .bucket(storage.bucket())
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                {
                    Ok(_) => {
                        report.aborted += 1;
                        tracing::info!(%key, upload_id = %id, "orphaned multipart upload aborted");
                    }
                    Err(e) => {
                        report.failed += 1;
                        let err = s3_error("AbortMultipartUpload", e);
                        tracing::warn!(%key, upload_id = %id, "could not abort orphaned upload: {err}");
                    }
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_marker.is_none() {
                break;
            }
        }
    }
    Ok(report)
}
