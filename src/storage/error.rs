//! What can go wrong in the storage layer, in terms the front ends can turn into SFTP
//! status codes and SCP messages without knowing anything about S3.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::RequestId;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;

use super::path::PathError;

/// An error from a storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file already exists")]
    AlreadyExists,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("directory not empty")]
    DirectoryNotEmpty,
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    InvalidPath(#[from] PathError),
    /// The client asked for something the operation cannot do on S3: writes that no
    /// streamed upload can take (too far ahead, overlapping, leaving a gap), a file
    /// larger than 10,000 parts, a directory moved into itself, or a write handle used
    /// again after it failed or was finished.
    #[error("{0}")]
    BadRequest(String),
    /// S3 answered in a way its protocol does not allow: no upload id from
    /// CreateMultipartUpload, fewer bytes than the range asked for.
    #[error("{0}")]
    S3Misbehaved(String),
    /// A fault in s3sftp itself: a background task panicked or was cancelled, or a
    /// transfer's state broke an invariant its code relies on.
    #[error("{0}")]
    Internal(String),
    #[error("permission denied ({0} not allowed here)")]
    PermissionDenied(&'static str),
    #[error("the file changed in S3 while it was being read")]
    Changed,
    #[error("S3 {op} failed: {message}")]
    S3 {
        op: &'static str,
        /// HTTP status, when S3 answered.
        status: Option<u16>,
        message: String,
        request_id: Option<String>,
    },
}

impl StorageError {
    /// True for failures that are the storage's fault rather than the request's.
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            StorageError::S3 { .. } | StorageError::S3Misbehaved(_) | StorageError::Changed
        )
    }
}

/// The result type of the storage layer.
pub type Result<T> = std::result::Result<T, StorageError>;

/// A classified S3 failure, before it is turned into a [`StorageError`].
pub(crate) struct S3Failure {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
}

impl S3Failure {
    pub fn from_sdk<E>(err: &SdkError<E, Response>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let request_id = err.request_id().map(str::to_string);
        match err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().map(str::to_string);
                let message = match (e.code(), e.message()) {
                    (Some(c), Some(m)) => format!("{c}: {m}"),
                    (Some(c), None) => c.to_string(),
                    (None, Some(m)) => m.to_string(),
                    (None, None) => {
                        format!("HTTP {}: {}", status.unwrap_or(0), describe_chain(e))
                    }
                };
                S3Failure {
                    status,
                    code,
                    message,
                    request_id,
                }
            }
            other => S3Failure {
                status,
                code: None,
                message: describe_chain(other),
                request_id,
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
            || matches!(
                self.code.as_deref(),
                Some("NoSuchKey" | "NotFound" | "NoSuchUpload")
            )
    }

    /// 403: access denied (by a policy, or bad keys).
    pub fn is_denied(&self) -> bool {
        self.status == Some(403) || self.code.as_deref() == Some("AccessDenied")
    }

    pub fn is_precondition_failed(&self) -> bool {
        self.status == Some(412) || self.code.as_deref() == Some("PreconditionFailed")
    }

    /// The error a call reports: 404 is [`StorageError::NotFound`], 412
    /// [`StorageError::Changed`], anything else [`into_error`](Self::into_error).
    pub fn into_storage_error(self, op: &'static str) -> StorageError {
        if self.is_not_found() {
            StorageError::NotFound
        } else if self.is_precondition_failed() {
            StorageError::Changed
        } else {
            self.into_error(op)
        }
    }

    pub fn into_error(self, op: &'static str) -> StorageError {
        tracing::warn!(
            op,
            status = self.status,
            request_id = self.request_id.as_deref().unwrap_or("-"),
            "S3 request failed: {}",
            self.message
        );
        StorageError::S3 {
            op,
            status: self.status,
            message: self.message,
            request_id: self.request_id,
        }
    }
}

/// The error and its sources on one line ("dispatch failure: io error: connection refused").
pub(crate) fn describe_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Turns an SDK error into a [`StorageError`], mapping 404 to [`StorageError::NotFound`].
pub(crate) fn s3_error<E>(op: &'static str, err: SdkError<E, Response>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    S3Failure::from_sdk(&err).into_storage_error(op)
}
