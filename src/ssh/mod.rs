//! The SSH side: the russh configuration, the accept loop and per-connection handlers.
//! Front ends get a channel and a [`crate::storage::UserStore`]; nothing here knows S3.

mod handler;
pub mod hostkey;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use handler::Connection;

use crate::sftp::SessionLimits;
use crate::storage::Storage;
use crate::users::UsersFile;

/// SSH settings.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Every failed login takes at least this long, whether or not the user exists.
    pub auth_failure_delay: Duration,
    pub max_auth_attempts: usize,
    /// Time allowed for the client's SSH identification line.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            auth_failure_delay: Duration::from_millis(500),
            max_auth_attempts: 6,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// What every connection shares: the users, the storage and the task tracker.
pub struct Shared {
    users: RwLock<Arc<UsersFile>>,
    pub storage: Arc<Storage>,
    pub sftp_limits: SessionLimits,
    /// Every connection and front-end task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl Shared {
    pub fn new(users: UsersFile, storage: Arc<Storage>, sftp_limits: SessionLimits) -> Arc<Self> {
        Arc::new(Shared {
            users: RwLock::new(Arc::new(users)),
            storage,
            sftp_limits,
            tasks: TaskTracker::new(),
        })
    }

    /// The current users file.
    pub fn users(&self) -> Arc<UsersFile> {
        match self.users.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the users file for new logins.
    pub fn set_users(&self, users: UsersFile) {
        match self.users.write() {
            Ok(mut guard) => *guard = Arc::new(users),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(users),
        }
    }
}

/// The russh server configuration.
pub fn russh_config(host_key: PrivateKey, settings: &SshSettings) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-s3sftp_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: russh::MethodSet::from(
            &[russh::MethodKind::Password, russh::MethodKind::PublicKey][..],
        ),
        auth_rejection_time: settings.auth_failure_delay,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: settings.max_auth_attempts,
        inactivity_timeout: Some(settings.idle_timeout),
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    })
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    settings: SshSettings,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let config = config.clone();
        let shared2 = shared.clone();
        let shutdown = shutdown.clone();
        let handshake = settings.handshake_timeout;
        shared.tasks.spawn(async move {
            serve_connection(socket, peer, config, shared2, shutdown, handshake).await;
        });
    }
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    handshake: Duration,
) {
    tracing::debug!(%peer, "connection");
    let handler = Connection::new(shared, Some(peer));
    let session = match tokio::time::timeout(
        handshake,
        russh::server::run_stream(config, socket, handler),
    )
    .await
    {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::info!(%peer, "SSH handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "SSH handshake timed out");
            return;
        }
    };
    let handle = session.handle();
    tokio::select! {
        result = session => {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        _ = shutdown.cancelled() => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "server shutting down".into(), "en".into())
                .await;
        }
    }
    tracing::debug!(%peer, "connection closed");
}
