//! A small S3-compatible server over a local folder: s3sftp's embedded store, used when no
//! bucket is configured, and on its own (`examples/s3_store.rs`) by the benchmarks.
//!
//! It serves a data folder over HTTP on loopback, so s3sftp talks to it through
//! aws-sdk-s3 exactly as it talks to real S3. It is for trying s3sftp and for tests, not
//! for production, but it keeps the S3 semantics the server relies on and that simpler
//! stores lack: empty `dir/` markers are ordinary objects, `a`, `a/` and `a/b` coexist,
//! listings page by `max-keys` with opaque continuation tokens, ranges and preconditions
//! behave as on S3, and multipart uploads enforce S3's part rules.
//!
//! Modules:
//! - this file: [`EmbeddedS3`], which opens the data folder, generates the credentials and
//!   runs the HTTP server (hyper-util, serving `s3s`'s service) until shut down;
//! - `s3`: the `s3s::S3` operations for buckets and single objects, handing listings to
//!   `list` and multipart uploads to `multipart`;
//! - `store`: the on-disk layout, the folder lock and each bucket's in-memory key index;
//! - `list`: ListObjectsV2 and ListObjects (v1) as range queries over that index;
//! - `multipart`: create, parts (uploaded or copied), complete, abort, and their listings;
//! - `parts`: the on-disk state of unfinished uploads;
//! - `assembly`: parts written in place, so completing an upload moves no bytes;
//! - `conditions`: preconditions (`If-Match` and the rest) and byte ranges;
//! - `body`: request bodies into files (hashed as they arrive), files out as response
//!   bodies, file-to-file copies;
//! - `error`: [`EmbeddedError`] (start-up failures) and I/O failures as S3 error replies.
//!
//! A simple object's ETag is its MD5, checked against `Content-MD5` when the request sends
//! one; a part sent without `Content-MD5` gets a random ETag (see `body`).
//!
//! A `Content-MD5` is checked against the body it came with (`BadDigest`, nothing stored).
//!
//! The data folder is private (folders 0700, files 0600: [`private`]). At most
//! 1,024 connections are served at once, and a connection that sends no complete request
//! headers for 120 s (idle between requests included) is closed.
//!
//! Not supported: versioning, ACLs and policies, tagging, Object Lock, encryption and
//! storage classes (their headers are accepted and ignored), `x-amz-checksum-*` headers
//! other than CRC32C (which PutObject and UploadPart verify), virtual-hosted-style
//! addressing.

mod assembly;
mod body;
mod conditions;
mod error;
mod list;
mod multipart;
mod parts;
mod private;
mod s3;
mod store;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use rand::RngExt;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

pub use self::error::EmbeddedError;
use self::store::Store;

/// The region the embedded store claims to be in.
const REGION: &str = "us-east-1";
/// How long shutdown lets in-flight requests finish before cutting connections.
const GRACE: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog until one ends.
const MAX_CONNECTIONS: usize = 1024;
/// How long a connection may take to send a request's headers, counted from the end of
/// the previous request on a kept-alive connection, so it is also the idle timeout. Longer
/// than the S3 SDK's 90 s pool idle timeout: the client drops an idle connection before
/// the store would, and never reuses one the store has just closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(120);

/// A running embedded S3 store: its endpoint, credentials and bucket.
///
/// Exists so the rest of s3sftp can use a local folder as if it were an S3 bucket, through
/// the same client code as real S3. Dropping it stops the server (in-flight requests are
/// cut); [`EmbeddedS3::shutdown`] lets them finish briefly first.
pub struct EmbeddedS3 {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedS3 {
    /// Start the store over `data_dir` (created if missing), create `bucket` if missing, listen on
    /// `listen` (use "127.0.0.1:0" for an ephemeral port), with freshly generated random credentials.
    pub async fn start(
        data_dir: &Path,
        bucket: &str,
        listen: SocketAddr,
    ) -> Result<EmbeddedS3, EmbeddedError> {
        if !s3s::path::check_bucket_name(bucket) {
            return Err(EmbeddedError::InvalidBucketName(bucket.to_owned()));
        }
        let root = data_dir.to_owned();
        let bucket_name = bucket.to_owned();
        let store = tokio::task::spawn_blocking(move || {
            let store = Store::open(&root)?;
            store.ensure_bucket(&bucket_name)?;
            Ok::<_, EmbeddedError>(store)
        })
        .await
        .map_err(|e| EmbeddedError::Task(e.to_string()))??;

        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| EmbeddedError::Bind {
                addr: listen,
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| EmbeddedError::Bind {
                addr: listen,
                source,
            })?;

        let access_key = format!(
            "S3SFTP{}",
            random_token(14, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        );
        let secret_key = random_token(
            40,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        );
        let mut builder = S3ServiceBuilder::new(store);
        builder.set_auth(SimpleAuth::from_single(
            access_key.clone(),
            secret_key.clone(),
        ));
        let service = builder.build();

        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, service, stopped));
        let endpoint = format!("http://{}", connectable(local));
        info!(%endpoint, bucket, data_dir = %data_dir.display(), "embedded S3 store listening");
        Ok(EmbeddedS3 {
            endpoint,
            access_key,
            secret_key,
            bucket: bucket.to_owned(),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The URL clients use, e.g. `http://127.0.0.1:40123` (path-style addressing).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The generated access key id.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The generated secret key. Never log it.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The bucket created (or found) at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The region to sign requests for: `us-east-1`.
    pub fn region(&self) -> &str {
        REGION
    }

    /// Stops accepting connections, lets in-flight requests finish (up to a few seconds),
    /// then closes everything and releases the data folder.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                warn!(error = %err, "embedded S3 store: server task failed");
            }
        }
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Aborting drops the connection set, which aborts every connection task.
            task.abort();
        }
    }
}

impl fmt::Debug for EmbeddedS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedS3")
            .field("endpoint", &self.endpoint)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("bucket", &self.bucket)
            .finish()
    }
}

/// `len` characters drawn from `alphabet`.
fn random_token(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .filter_map(|_| alphabet.get(rng.random_range(0..alphabet.len())))
        .map(|&b| char::from(b))
        .collect()
}

/// An address clients can connect to: a wildcard listen address becomes loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Accepts connections until `stopped` fires (or its sender is dropped), then shuts down
/// gracefully. Connection tasks live in a `JoinSet` owned here, so aborting this task
/// aborts them too.
async fn serve(listener: TcpListener, service: S3Service, mut stopped: oneshot::Receiver<()>) {
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        // A free slot first: past the cap, connections wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut stopped => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Without this, a small response written as header + body waits for the
                    // client's delayed ACK: ~40 ms per request.
                    if let Err(err) = stream.set_nodelay(true) {
                        debug!(%peer, error = %err, "embedded S3 store: cannot set TCP_NODELAY");
                    }
                    let connection = builder.serve_connection(TokioIo::new(stream), service.clone()).into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        let _slot = slot;
                        if let Err(err) = connection.await {
                            debug!(%peer, error = %err, "embedded S3 store: connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    warn!(error = %err, "embedded S3 store: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => debug!("embedded S3 store: stopped"),
        () = tokio::time::sleep(GRACE) => warn!("embedded S3 store: requests still running after shutdown grace; cutting them"),
    }
    connections.shutdown().await;
}
