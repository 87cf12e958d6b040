//! Errors of the embedded store: the start-up error type the rest of the project sees, and the
//! small helpers that turn local I/O failures into S3 error replies.

use std::io;
use std::path::PathBuf;

use s3s::{S3Error, S3ErrorCode};

/// Why the embedded store could not start (or could not open its data folder).
///
/// Request-time failures never use this type: they are S3 errors sent back to the client.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A file or folder of the data directory could not be created, read or written.
    #[error("embedded S3 store: cannot {action} {path}: {source}")]
    Io {
        /// What we were doing, e.g. "create folder".
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Another embedded store (maybe another s3sftp process) already serves this data folder.
    #[error(
        "embedded S3 store: data folder {0} is in use by another s3sftp process; \
         stop it or choose another data folder"
    )]
    Locked(PathBuf),
    /// The bucket name is not a valid S3 bucket name.
    #[error(
        "embedded S3 store: {0:?} is not a valid bucket name \
         (use 3-63 lowercase letters, digits, '.' or '-')"
    )]
    InvalidBucketName(String),
    /// The listen address could not be bound.
    #[error("embedded S3 store: cannot listen on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A background task of the store failed to run.
    #[error("embedded S3 store: internal task failed: {0}")]
    Task(String),
}

impl EmbeddedError {
    /// Builds an [`EmbeddedError::Io`] for `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Turns a local I/O failure on a request path into an S3 `InternalError`, logging the detail
/// (the client gets no file paths).
pub(crate) fn internal(context: &str, err: io::Error) -> S3Error {
    tracing::error!(error = %err, "embedded S3 store: {context}");
    S3Error::with_message(
        S3ErrorCode::InternalError,
        "embedded S3 store: local I/O failure",
    )
}

/// An S3 error with a code that `s3s` has no variant for (for example
/// `XAmzContentSHA256Mismatch`), sent with the given HTTP status.
pub(crate) fn custom(code: &str, status: u16, message: &str) -> S3Error {
    let code = match code.parse::<S3ErrorCode>() {
        Ok(code) => code,
        Err(never) => match never {},
    };
    let mut err = S3Error::with_message(code, message.to_owned());
    if let Ok(status) = http::StatusCode::from_u16(status) {
        err.set_status_code(status);
    }
    err
}
