//! Start-up and shutdown: wires the users file, the storage (an external bucket or the
//! embedded store), the host key and the SSH listener into one running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

#[cfg(feature = "embedded-store")]
use crate::embedded::{EmbeddedError, EmbeddedS3};
use crate::lanes::Lanes;
use crate::readiness::Readiness;
use crate::sftp::SessionLimits;
use crate::ssh::bucket_hostkey;
use crate::ssh::{self, hostkey, Shared, SshSettings};
use crate::storage::client::{self, ConnectError, S3Settings};
use crate::storage::intent;
use crate::storage::s3::{ObjectOptions, S3};
use crate::storage::sweep::sweep_orphans;
use crate::storage::{ObjectLock, Storage, TransferSettings, UploadChecksum};
use crate::users::remote::{ObjectLocation, RemoteError, RemoteUsers};
use crate::users::{UsersError, UsersFile};

/// Stands in for the embedded store in a build without it (the `embedded-store` feature):
/// a type with no values, so a `RunningServer` there never holds one.
#[cfg(not(feature = "embedded-store"))]
#[derive(Debug)]
enum EmbeddedS3 {}

#[cfg(not(feature = "embedded-store"))]
impl EmbeddedS3 {
    async fn shutdown(self) {
        match self {}
    }
}

/// Bucket name the embedded store serves.
pub const EMBEDDED_BUCKET: &str = "s3sftp";

/// Everything `serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Host key files to serve; empty: the keys generated in `state_dir` ([`hostkey::load`]).
    pub host_keys: Vec<PathBuf>,
    pub users_file: PathBuf,
    /// How often a users object in the bucket (`s3://` users file) is polled.
    pub users_poll: Duration,
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
    /// The operations listener (metrics, health, readiness); `None`: off.
    pub ops: Option<OpsSettings>,
}

/// Settings of the operations listener.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    pub listen: SocketAddr,
    /// Time between readiness probes of S3.
    pub probe_every: Duration,
    /// On shutdown, how long /readyz fails before the SSH listener stops accepting.
    pub drain_delay: Duration,
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
            host_keys: Vec::new(),
            users_file: users_file.into(),
            users_poll: Duration::from_secs(10),
            s3: None,
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            transfer: TransferSettings::default(),
            ssh: SshSettings::default(),
            sftp: SessionLimits::default(),
            shutdown_grace: Duration::from_secs(60),
            orphan_age: Duration::from_secs(24 * 3600),
            orphan_sweep_every: None,
            session_threads: default_session_threads(),
            ops: None,
        }
    }
}

/// Why the server did not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(
        "users file {path} does not exist; create it with a first user: {add} (see docs/users.md)"
    )]
    NoUsersFile { path: PathBuf, add: String },
    #[error(transparent)]
    HostKey(#[from] hostkey::HostKeyError),
    #[error(transparent)]
    UsersObject(Box<RemoteError>),
    #[error(transparent)]
    Bucket(#[from] ConnectError),
    #[cfg(feature = "embedded-store")]
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[cfg(not(feature = "embedded-store"))]
    #[error(
        "no bucket configured, and this s3sftp was built without the embedded S3 store \
         (cargo feature `embedded-store`): pass a bucket with --bucket (S3SFTP_BUCKET)"
    )]
    NoEmbeddedStore,
    #[error(
        "the system prefix {system:?} (--system-prefix / S3SFTP_SYSTEM_PREFIX) overlaps the \
         prefix {user_prefix:?} of user {user}: the gateways' own objects must lie outside \
         every user's prefix; choose another system prefix or move the user"
    )]
    SystemPrefixOverlap {
        system: String,
        user: String,
        user_prefix: String,
    },
    #[error(
        "PROXY protocol is on but no load balancer is trusted: set --proxy-trusted-cidrs \
         (S3SFTP_PROXY_TRUSTED_CIDRS), or a header from anyone could claim any client address"
    )]
    ProxyWithoutTrust,
    #[error(
        "cannot start the session threads: {0} (check --session-threads / S3SFTP_SESSION_THREADS)"
    )]
    Threads(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("cannot listen for metrics on {addr}: {source} (check --metrics-listen / S3SFTP_METRICS_LISTEN)")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source} (check --listen / S3SFTP_LISTEN)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl From<RemoteError> for StartError {
    fn from(e: RemoteError) -> Self {
        StartError::UsersObject(Box::new(e))
    }
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
    /// The operations listener, when on.
    ops: Option<Ops>,
    /// The control socket for the admin commands, when it started.
    control: Option<crate::control::server::ControlSocket>,
}

/// The running operations listener and what shutdown does with it.
struct Ops {
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    drain_delay: Duration,
    /// Stops the listener and the readiness probe.
    stop: tokio_util::sync::CancellationToken,
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
    #[cfg(feature = "embedded-store")]
    pub fn embedded(&self) -> Option<&EmbeddedS3> {
        self.embedded.as_ref()
    }

    /// Stops accepting; lets transfers in flight finish for up to the grace period (idle
    /// SFTP sessions end at once); then disconnects whoever is left, which aborts their
    /// uploads (no partial object), and stops the embedded store.
    /// The address of the operations listener, when it is on.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|o| o.addr)
    }

    /// The control socket's path, when it started.
    pub fn control_socket(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(|c| c.path())
    }

    pub async fn shutdown(self) {
        if let Some(ops) = &self.ops {
            ops.readiness.set_draining();
            if !ops.drain_delay.is_zero() {
                tracing::info!(
                    seconds = ops.drain_delay.as_secs_f64(),
                    "shutting down: /readyz answers 503; still accepting connections while load balancers notice"
                );
                tokio::time::sleep(ops.drain_delay).await;
            }
        }
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
        if let Some(ops) = self.ops {
            ops.stop.cancel();
        }
        if let Some(control) = self.control {
            control.shutdown().await;
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
    // Before anything is created on disk (the host key).
    #[cfg(not(feature = "embedded-store"))]
    if config.s3.is_none() {
        return Err(StartError::NoEmbeddedStore);
    }
    let users_object = ObjectLocation::parse(&config.users_file)?;
    let mut key_objects = Vec::new();
    let mut key_files = Vec::new();
    for setting in &config.host_keys {
        match ObjectLocation::parse(setting)? {
            Some(location) => key_objects.push(location),
            None => key_files.push(setting.clone()),
        }
    }
    // The local file now; a users object (`Err`) once the bucket is reachable, below.
    let users_at = match users_object {
        Some(location) => Err(location),
        None => Ok(load_local_users(&config)?),
    };
    // Bucket keys alone replace the generated ones, as files do; the state directory is
    // still made, for the control socket the generated keys' directory would have held.
    let mut host_keys = if key_files.is_empty() && !key_objects.is_empty() {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| {
            hostkey::HostKeyError::Write {
                path: config.state_dir.clone(),
                source,
            }
        })?;
        Vec::new()
    } else {
        hostkey::load(&config.state_dir, &key_files)?
    };

    let (s3, embedded) = match &config.s3 {
        Some(s3) => (s3.clone(), None),
        #[cfg(feature = "embedded-store")]
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
        #[cfg(not(feature = "embedded-store"))]
        None => return Err(StartError::NoEmbeddedStore),
    };
    let client = client::build_client(&s3).await;
    let (users, users_etag, users_source) = match users_at {
        Ok(users) => (users, None, None),
        Err(location) => {
            let (users, etag, source) =
                load_users_object(&config, &client, &s3.bucket, &location).await?;
            (users, etag, Some(source))
        }
    };
    if !key_objects.is_empty() {
        for location in &key_objects {
            location.check_bucket(&s3.bucket)?;
        }
        let keys_s3 = S3::new(
            client.clone(),
            s3.bucket.as_str().into(),
            UploadChecksum::Md5,
        );
        let options = ObjectOptions::from_settings(&config.transfer.objects);
        let bucket_keys =
            bucket_hostkey::load(&keys_s3, &key_objects, &options, users.users()).await?;
        for key in bucket_keys {
            if host_keys
                .iter()
                .any(|k: &russh::keys::PrivateKey| k.algorithm() == key.algorithm())
            {
                return Err(StartError::HostKey(hostkey::HostKeyError::Bucket {
                    location: key_objects
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    message: format!(
                        "two host keys are {} keys; a client is shown one key per type, so give one of them only",
                        key.algorithm()
                    ),
                }));
            }
            host_keys.push(key);
        }
    }
    // A user's prefix, for the probe that replaces HeadBucket under a prefix-scoped policy.
    let probe = users.users().first().map(|u| u.key_prefix.clone());
    client::check_bucket(&client, &s3, probe.as_deref()).await?;
    tracing::info!(bucket = %s3.bucket, endpoint = s3.endpoint.as_deref().unwrap_or("AWS"), "bucket reachable");
    let lanes = Arc::new(Lanes::start(config.session_threads).map_err(StartError::Threads)?);
    let mut transfer = config.transfer.clone();
    // A checksum only where nothing else guards the bodies: not when the SDK sends one
    // S3 verifies, nor to the embedded store in this very process. CRC32C is the cheap
    // one; Content-MD5 where Object Lock may want it.
    let sdk_checksums = s3.checksum_mode() == client::ChecksumMode::WhenSupported;
    let covered = sdk_checksums || embedded.is_some();
    let auto = transfer.objects.upload_checksum == UploadChecksum::Auto && !covered;
    let lock = if auto {
        client::object_lock(&client, &s3.bucket).await
    } else {
        ObjectLock::Unknown
    };
    transfer.objects.upload_checksum = transfer.objects.upload_checksum.resolve(covered, lock);
    if auto && transfer.objects.upload_checksum == UploadChecksum::Crc32c {
        // CRC32C only where the store checks it (Ceph RGW before Squid and moto take the
        // header and check nothing): one probe object under the first user's prefix.
        let key = format!(
            "{}.s3sftp-probe-crc32c-{:016x}",
            probe.as_deref().unwrap_or_default(),
            rand::random::<u64>()
        );
        if client::checks_crc32c(&client, &s3.bucket, &key).await != Some(true) {
            transfer.objects.upload_checksum = UploadChecksum::Md5;
        }
    }
    tracing::info!(upload_checksum = ?transfer.objects.upload_checksum, sdk_checksums, object_lock = ?lock, "upload integrity header");
    // The probe lives under the first user's prefix: a least-privilege policy lets the
    // gateway write there (and nowhere else, perhaps).
    transfer.dir_markers = crate::storage::dir_markers::resolve(
        transfer.dir_markers,
        &client,
        &s3.bucket,
        &transfer.objects,
        probe.as_deref().unwrap_or_default(),
        embedded.is_some(),
    )
    .await;
    let storage = Storage::with_lanes(client, s3.bucket.clone(), transfer, &lanes);

    let listener = bind(config.listen).map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let shared = Shared::new(users, storage, config.sftp.clone(), &config.ssh);
    let russh_config = ssh::russh_config(host_keys, &config.ssh);
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
    shared.tasks.spawn(rename_roll_forwards(shared.clone()));
    let reload = Arc::new(tokio::sync::Notify::new());
    match users_source {
        Some(remote) => shared.tasks.spawn(crate::reload::watch_object(
            shared.clone(),
            remote,
            users_etag,
            config.users_poll,
            reload.clone(),
        )),
        None => shared.tasks.spawn(crate::reload::watch(
            shared.clone(),
            config.users_file.clone(),
            reload.clone(),
        )),
    };
    tracing::info!(%addr, session_threads = lanes.len(), "listening for SSH");
    if let Some(proxy) = &config.ssh.proxy_protocol {
        let trusted: Vec<String> = proxy.trusted.iter().map(|n| n.to_string()).collect();
        tracing::info!(
            trusted = %trusted.join(","),
            "PROXY protocol on: connections from the trusted networks must begin with a PROXY header"
        );
    }
    let ops = match &config.ops {
        Some(settings) => Some(start_ops(settings, &shared).await?),
        None => None,
    };
    let control = crate::control::server::start(&config.state_dir, shared.clone());
    Ok(RunningServer {
        control,
        addr,
        shared,
        accept,
        lanes,
        reload,
        embedded,
        grace: config.shutdown_grace,
        ops,
    })
}

/// Starts the metrics recorder, the readiness probe and the operations listener.
async fn start_ops(settings: &OpsSettings, shared: &Arc<Shared>) -> Result<Ops, StartError> {
    let metrics = crate::metrics::install()?;
    let listener = crate::ops_http::bind(settings.listen)
        .await
        .map_err(|source| StartError::MetricsListen {
            addr: settings.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::MetricsListen {
            addr: settings.listen,
            source,
        })?;
    // Three missed probes in a row make the gateway unready.
    let readiness = Readiness::new(settings.probe_every * 3);
    let stop = tokio_util::sync::CancellationToken::new();
    // The probe lists under a user's prefix: a least-privilege policy allows that, not
    // HeadBucket.
    let prefix = shared
        .users()
        .users()
        .iter()
        .find(|u| u.enabled)
        .map(|u| u.key_prefix.clone())
        .unwrap_or_default();
    tokio::spawn(readiness.clone().probe_loop(
        shared.storage.clone(),
        prefix,
        settings.probe_every,
        stop.clone(),
    ));
    let state = Arc::new(crate::ops_http::OpsState {
        metrics,
        readiness: readiness.clone(),
        storage: shared.storage.clone(),
        guard: shared.guard.clone(),
    });
    tokio::spawn(crate::ops_http::serve(listener, state, stop.clone()));
    tracing::info!(%addr, "operations listener: /metrics, /healthz, /readyz");
    Ok(Ops {
        addr,
        readiness,
        drain_delay: settings.drain_delay,
        stop,
    })
}

/// Reads the local users file at start (an empty one holds no users).
fn load_local_users(config: &ServerConfig) -> Result<UsersFile, StartError> {
    hostkey::warn_if_readable_by_others(&config.users_file);
    let users = match UsersFile::load_empty_ok(&config.users_file) {
        Err(UsersError::Read { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(StartError::NoUsersFile {
                add: add_user_command(&path),
                path,
            })
        }
        loaded => loaded?,
    };
    tracing::info!(users = users.users().len(), file = %config.users_file.display(), "users loaded");
    warn_if_no_users(config, &users);
    check_system_prefix(&config.transfer.system_prefix, &users)?;
    Ok(users)
}

/// Says that nobody can log in yet, and how to add a first user.
fn warn_if_no_users(config: &ServerConfig, users: &UsersFile) {
    if users.users().is_empty() {
        tracing::warn!(
            file = %config.users_file.display(),
            "the users file has no users: nobody can log in until one is added with: {}",
            add_user_command(&config.users_file)
        );
    }
}

/// Reads the users object at start: it must be in the served bucket, exist, be valid and
/// lie outside every user's prefix. Returns the users, the ETag read and the handle the
/// poll uses.
async fn load_users_object(
    config: &ServerConfig,
    client: &aws_sdk_s3::Client,
    bucket: &str,
    location: &ObjectLocation,
) -> Result<(UsersFile, Option<String>, RemoteUsers), StartError> {
    location.check_bucket(bucket)?;
    let s3 = S3::new(client.clone(), bucket.into(), UploadChecksum::Md5);
    let remote = RemoteUsers::new(
        s3,
        location.clone(),
        ObjectOptions::from_settings(&config.transfer.objects),
    );
    let (users, etag) = remote.load().await?;
    tracing::info!(users = users.users().len(), object = %location, "users loaded from the bucket");
    warn_if_no_users(config, &users);
    check_system_prefix(&config.transfer.system_prefix, &users)?;
    Ok((users, etag, remote))
}

/// The command that adds a first user to the users file at `path` (which it creates).
pub fn add_user_command(path: &std::path::Path) -> String {
    let path = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c);
    let path = if path.chars().all(safe) {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    };
    format!("s3sftp users --users-file {path} add NAME --prefix users/NAME/ --generate-password")
}

/// Binds the SSH listener. The unspecified IPv6 address (`[::]`, which `--listen :PORT`
/// means) is bound dual-stack, so IPv4 clients are accepted too whatever
/// `net.ipv6.bindv6only` says; on a kernel without IPv6 it falls back to `0.0.0.0`.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let any_v6 = addr.is_ipv6() && addr.ip().is_unspecified();
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
        Ok(socket) => socket,
        Err(e) if any_v6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(%addr, fallback = %v4, "no IPv6 on this host: listening on IPv4 only");
            return bind(v4);
        }
        Err(e) => return Err(e),
    };
    if any_v6 {
        socket.set_only_v6(false)?;
    }
    // As tokio's TcpListener::bind: a restart can reuse the port at once.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Refuses a system prefix that overlaps a user's prefix.
fn check_system_prefix(system: &str, users: &UsersFile) -> Result<(), StartError> {
    match users
        .users()
        .iter()
        .find(|u| !intent::outside_user_prefix(system, &u.key_prefix))
    {
        Some(user) => Err(StartError::SystemPrefixOverlap {
            system: system.to_string(),
            user: user.username.clone(),
            user_prefix: user.key_prefix.clone(),
        }),
        None => Ok(()),
    }
}

/// Finishes interrupted folder renames (see `storage::intent`): at start, then every
/// [`intent::SCAN_EVERY`], until shutdown.
async fn rename_roll_forwards(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.draining.cancelled() => return,
            result = shared.storage.roll_forward_stale() => match result {
                Ok(r) if r.found > 0 => tracing::info!(
                    found = r.found,
                    completed = r.completed,
                    alive = r.alive,
                    failed = r.failed,
                    "looked for interrupted folder renames"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("looking for interrupted folder renames failed: {e}"),
            }
        }
        tokio::select! {
            _ = shared.draining.cancelled() => return,
            _ = tokio::time::sleep(intent::SCAN_EVERY) => {}
        }
    }
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
