//! Start-up and shutdown: wires the users file, the storage (an external bucket or the
//! embedded store), the host key and the SSH listener into one running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::embedded::{EmbeddedError, EmbeddedS3};
use crate::lanes::Lanes;
use crate::sftp::SessionLimits;
use crate::ssh::{self, hostkey, Shared, SshSettings};
use crate::storage::client::{self, ConnectError, S3Settings};
use crate::storage::sweep::sweep_orphans;
use crate::storage::{Storage, TransferSettings};
use crate::users::{UsersError, UsersFile};

/// Bucket name the embedded store serves.
pub const EMBEDDED_BUCKET: &str = "s3sftp";

/// Everything `serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub users_file: PathBuf,
    /// `None` starts the embedded store over `embedded_data_dir`.
    pub s3: Option<S3Settings>,
    pub embedded_data_dir: PathBuf,
    pub embedded_listen: SocketAddr,
    pub transfer: TransferSettings,
    pub ssh: SshSettings,
    pub sftp: SessionLimits,
    /// How long shutdown waits for transfers in flight before aborting them.
    pub shutdown_grace: Duration,
    /// Multipart uploads older than this under the users' prefixes are aborted.
    pub orphan_age: Duration,
    /// How often the orphan sweep runs after the one at start (None: only at start).
    pub orphan_sweep_every: Option<Duration>,
    /// Single-threaded runtimes the SSH connections are spread over ([`crate::lanes`]).
    pub session_threads: usize,
}

/// One session thread per CPU the process may use.
pub fn default_session_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ServerConfig {
    /// Defaults for everything but the paths: loopback port 2222, the embedded store.
    pub fn new(state_dir: impl Into<PathBuf>, users_file: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            embedded_data_dir: state_dir.join("data"),
            state_dir,
            users_file: users_file.into(),
            s3: None,
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            transfer: TransferSettings::default(),
            ssh: SshSettings::default(),
            sftp: SessionLimits::default(),
            shutdown_grace: Duration::from_secs(60),
            orphan_age: Duration::from_secs(24 * 3600),
            orphan_sweep_every: None,
            session_threads: default_session_threads(),
        }
    }
}

/// Why the server did not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    HostKey(#[from] hostkey::HostKeyError),
    #[error(transparent)]
    Bucket(#[from] ConnectError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error(
        "PROXY protocol is on but no load balancer is trusted: set --proxy-trusted-cidrs \
         (S3SFTP_PROXY_TRUSTED_CIDRS), or a header from anyone could claim any client address"
    )]
    ProxyWithoutTrust,
    #[error(
        "cannot start the session threads: {0} (check --session-threads / S3SFTP_SESSION_THREADS)"
    )]
    Threads(std::io::Error),
    #[error("cannot listen on {addr}: {source} (check --listen / S3SFTP_LISTEN)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started server.
pub struct RunningServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    lanes: Arc<Lanes>,
    reload: Arc<tokio::sync::Notify>,
    embedded: Option<EmbeddedS3>,
    grace: Duration,
}

impl RunningServer {
    /// The address SSH clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The storage every session uses (tests look at the bucket through it).
    pub fn storage(&self) -> &Arc<Storage> {
        &self.shared.storage
    }

    /// The shared state (users file, tasks).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Connections on each session thread now.
    pub fn session_threads(&self) -> Vec<usize> {
        self.lanes.connections()
    }

    /// Reloads the users file now (what SIGHUP does).
    pub fn reload_users(&self) {
        self.reload.notify_one();
    }

    /// The embedded store, when it is in use.
    pub fn embedded(&self) -> Option<&EmbeddedS3> {
        self.embedded.as_ref()
    }

    /// Stops accepting; lets transfers in flight finish for up to the grace period (idle
    /// SFTP sessions end at once); then disconnects whoever is left, which aborts their
    /// uploads (no partial object), and stops the embedded store.
    pub async fn shutdown(self) {
        self.shared.draining.cancel();
        let _ = self.accept.await;
        self.shared.tasks.close();
        tracing::info!(
            grace_seconds = self.grace.as_secs(),
            "shutting down: letting transfers in flight finish"
        );
        if tokio::time::timeout(self.grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.shared.tasks.len(),
                "grace period over: disconnecting the remaining sessions and aborting their uploads"
            );
            self.shared.hard_stop.cancel();
            if tokio::time::timeout(HARD_STOP_WAIT, self.shared.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("some sessions did not end after the disconnect; exiting anyway");
            }
        }
        // Drops whatever still runs there (nothing, unless the disconnect above timed out).
        self.lanes.stop().await;
        if let Some(embedded) = self.embedded {
            embedded.shutdown().await;
        }
        tracing::info!("server stopped");
    }
}

/// How long shutdown waits for sessions to end after disconnecting them.
const HARD_STOP_WAIT: Duration = Duration::from_secs(15);

/// Starts the server described by `config`.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    if config
        .ssh
        .proxy_protocol
        .as_ref()
        .is_some_and(|p| p.trusted.is_empty())
    {
        return Err(StartError::ProxyWithoutTrust);
    }
    hostkey::warn_if_readable_by_others(&config.users_file);
    let users = UsersFile::load(&config.users_file)?;
    tracing::info!(users = users.users().len(), file = %config.users_file.display(), "users loaded");
    let host_key = hostkey::load_or_create(&config.state_dir)?;

    let (s3, embedded) = match &config.s3 {
        Some(s3) => (s3.clone(), None),
        None => {
            let store = EmbeddedS3::start(
                &config.embedded_data_dir,
                EMBEDDED_BUCKET,
                config.embedded_listen,
            )
            .await?;
            tracing::warn!(
                endpoint = %store.endpoint(),
                data = %config.embedded_data_dir.display(),
                "no bucket configured: using the embedded S3 store (for trying s3sftp and for tests, not for production data)"
            );
            let settings = S3Settings::custom(
                &store.endpoint(),
                store.bucket(),
                store.region(),
                store.access_key(),
                store.secret_key(),
            );
            (settings, Some(store))
        }
    };
    let client = client::build_client(&s3).await;
    // A user's prefix, for the probe that replaces HeadBucket under a prefix-scoped policy.
    let probe = users.users().first().map(|u| u.key_prefix.clone());
    client::check_bucket(&client, &s3, probe.as_deref()).await?;
    tracing::info!(bucket = %s3.bucket, endpoint = s3.endpoint.as_deref().unwrap_or("AWS"), "bucket reachable");
    let lanes = Arc::new(Lanes::start(config.session_threads).map_err(StartError::Threads)?);
    let mut transfer = config.transfer.clone();
    // Content-MD5 only where nothing else guards the bodies: not when the SDK sends a
    // checksum S3 verifies, nor to the embedded store in this very process.
    let sdk_checksums = s3.checksum_mode() == client::ChecksumMode::WhenSupported;
    let covered = sdk_checksums || embedded.is_some();
    transfer.objects.upload_checksum = transfer.objects.upload_checksum.resolve(covered);
    tracing::info!(upload_checksum = ?transfer.objects.upload_checksum, sdk_checksums, "upload integrity header");
    let storage = Storage::with_lanes(client, s3.bucket.clone(), transfer, &lanes);

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let shared = Shared::new(
        users,
        storage,
        config.sftp.clone(),
        config.ssh.guard.clone(),
    );
    let russh_config = ssh::russh_config(host_key, &config.ssh);
    let accept = tokio::spawn(ssh::accept_loop(
        listener,
        russh_config,
        config.ssh.clone(),
        shared.clone(),
        lanes.clone(),
    ));
    shared.tasks.spawn(orphan_sweeps(
        shared.clone(),
        config.orphan_age,
        config.orphan_sweep_every,
    ));
    let reload = Arc::new(tokio::sync::Notify::new());
    shared.tasks.spawn(crate::reload::watch(
        shared.clone(),
        config.users_file.clone(),
        reload.clone(),
    ));
    tracing::info!(%addr, session_threads = lanes.len(), "listening for SSH");
    if let Some(proxy) = &config.ssh.proxy_protocol {
        let trusted: Vec<String> = proxy.trusted.iter().map(|n| n.to_string()).collect();
        tracing::info!(
            trusted = %trusted.join(","),
            "PROXY protocol on: connections from the trusted networks must begin with a PROXY header"
        );
    }
    Ok(RunningServer {
        addr,
        shared,
        accept,
        lanes,
        reload,
        embedded,
        grace: config.shutdown_grace,
    })
}

/// Runs the orphan sweep at start and then every `every`, until shutdown.
async fn orphan_sweeps(shared: Arc<Shared>, age: Duration, every: Option<Duration>) {
    loop {
        let prefixes: Vec<String> = shared
            .users()
            .users()
            .iter()
            .map(|u| u.key_prefix.clone())
            .collect();
        let sweep = sweep_orphans(&shared.storage, &prefixes, age);
        tokio::select! {
            _ = shared.draining.cancelled() => return,
            result = sweep => match result {
                Ok(r) => tracing::info!(
                    seen = r.seen,
                    aborted = r.aborted,
                    failed = r.failed,
                    age_hours = age.as_secs() / 3600,
                    "orphaned multipart upload sweep done"
                ),
                Err(e) => tracing::warn!("orphaned multipart upload sweep failed: {e}"),
            }
        }
        let Some(every) = every else { return };
        tokio::select! {
            _ = shared.draining.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
