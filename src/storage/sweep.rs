//! The orphan sweep: multipart uploads that a crashed or killed gateway never finished
//! or aborted keep their parts (and their cost) in the bucket. At start, and every
//! so often, uploads under the managed prefixes that are older than a set age are
//! aborted. Everything under a user's prefix is written by s3sftp, so an upload there
//! that old is one of ours that nobody will complete (uploads in flight are minutes or
//! hours old, not a day). The bucket's `AbortIncompleteMultipartUpload` lifecycle rule
//! is the backstop for prefixes no longer in the users file.

use std::time::{Duration, SystemTime};

use super::error::Result;
use super::Storage;

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
    let s3 = storage.s3();
    for prefix in prefixes {
        let mut markers = (None, None);
        loop {
            let page = s3
                .list_multipart_uploads(prefix, markers.0, markers.1)
                .await?;
            for upload in &page.uploads {
                let (key, id) = (&upload.key, &upload.upload_id);
                // Never trust the server's prefix filter with an abort (moto ignores it).
                if !key.starts_with(prefix.as_str()) {
                    continue;
                }
                report.seen += 1;
                if upload.initiated.is_none_or(|t| t > cutoff) {
                    continue;
                }
                match s3.abort(key, id).await {
                    Ok(()) => {
                        report.aborted += 1;
                        tracing::info!(%key, upload_id = %id, "orphaned multipart upload aborted");
                    }
                    Err(failure) => {
                        report.failed += 1;
                        let err = failure.into_storage_error("AbortMultipartUpload");
                        tracing::warn!(%key, upload_id = %id, "could not abort orphaned upload: {err}");
                    }
                }
            }
            match page.next {
                Some((None, None)) | None => break,
                Some(next) => markers = next,
            }
        }
    }
    Ok(report)
}
