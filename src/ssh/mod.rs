//! The SSH side: the russh configuration, the accept loop and per-connection handlers.
//! Front ends get a channel and a [`crate::storage::UserStore`]; nothing here knows S3.

pub mod bucket_hostkey;
mod connection;
pub mod guard;
mod handler;
pub mod hostkey;
mod lifeline;
mod password_checks;
pub mod proxy_protocol;
pub mod registry;
mod source;
mod unclaimed;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use guard::{Guard, GuardSettings};
pub use handler::Connection;
pub use password_checks::{default_password_checks, PasswordChecks};
pub use proxy_protocol::ProxySettings;
pub use source::source_of;

use crate::lanes::Lanes;
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
    /// A connection with no traffic for this long is closed (SFTP sessions also track
    /// their own idleness, which client keepalives do not reset).
    pub idle_timeout: Duration,
    /// A connection must have authenticated within this long.
    pub auth_deadline: Duration,
    /// Bans and connection limits.
    pub guard: GuardSettings,
    /// PROXY protocol from trusted load balancers; `None`: off, every peer is the client.
    pub proxy_protocol: Option<ProxySettings>,
    /// Channels one connection may hold at once (sshd's MaxSessions).
    pub max_channels: usize,
    /// A channel with no subsystem or exec request within this long is closed.
    pub channel_claim_timeout: Duration,
    /// Password checks (argon2) running at once in the whole server; the rest wait.
    pub max_password_checks: usize,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            auth_failure_delay: Duration::from_millis(500),
            max_auth_attempts: 6,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            auth_deadline: Duration::from_secs(60),
            guard: GuardSettings::default(),
            proxy_protocol: None,
            max_channels: 10,
            channel_claim_timeout: unclaimed::CLAIM_TIMEOUT,
            max_password_checks: default_password_checks(),
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
    /// Bans and connection counts.
    pub guard: Arc<Guard>,
    /// Logged-in connections per user.
    pub registry: Arc<registry::Registry>,
    /// Permits for password checks, shared by every connection.
    pub password_checks: PasswordChecks,
    /// Cancelled when shutdown begins: front ends finish what is in flight, take nothing new.
    pub draining: CancellationToken,
    /// Cancelled when the grace period is over: connections are cut, uploads aborted.
    pub hard_stop: CancellationToken,
}

impl Shared {
    pub fn new(
        users: UsersFile,
        storage: Arc<Storage>,
        sftp_limits: SessionLimits,
        ssh: &SshSettings,
    ) -> Arc<Self> {
        Arc::new(Shared {
            users: RwLock::new(Arc::new(users)),
            storage,
            sftp_limits,
            tasks: TaskTracker::new(),
            guard: Guard::new(ssh.guard.clone()),
            registry: Arc::default(),
            password_checks: PasswordChecks::new(ssh.max_password_checks),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
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
/// `host_keys`: one per algorithm ([`hostkey::load`]); only the algorithms in
/// [`hostkey::ALGORITHMS`] are offered (never SHA-1 `ssh-rsa`).
pub fn russh_config(
    host_keys: Vec<PrivateKey>,
    settings: &SshSettings,
) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-s3sftp_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: russh::MethodSet::from(
            &[russh::MethodKind::Password, russh::MethodKind::PublicKey][..],
        ),
        auth_rejection_time: settings.auth_failure_delay,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: host_keys,
        max_auth_attempts: settings.max_auth_attempts,
        inactivity_timeout: Some(settings.idle_timeout),
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            key: std::borrow::Cow::Borrowed(hostkey::ALGORITHMS),
            compression: std::borrow::Cow::Borrowed(COMPRESSION),
            ..russh::Preferred::default()
        },
        ..Default::default()
    })
}

/// Compression offered: none, or OpenSSH's delayed zlib, which starts only after login.
/// Plain `zlib` would inflate whatever an unauthenticated client sends.
const COMPRESSION: &[russh::compression::Name] =
    &[russh::compression::NONE, russh::compression::ZLIB_LEGACY];

/// Logs that `ip`'s source was banned for `length` (after failed logins, connections
/// without a login, or refusals by its own limits: all count as failed logins).
fn log_ban(ip: IpAddr, length: Duration) {
    tracing::warn!(
        peer = %ip,
        source = %source_of(ip),
        seconds = length.as_secs(),
        "address banned after repeated failed logins"
    );
}

/// Ciphers offered, AES-GCM first: with AES-NI it is the fastest here, and russh's own
/// default list has no aes128-gcm. (The client's order decides; OpenSSH's puts
/// chacha20-poly1305 first.)
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Accepts connections until `shared.draining` is cancelled, and runs each on the session
/// thread with the fewest connections. Only the total connection limit is checked here;
/// everything that needs the client's address (a PROXY header may have to be read first)
/// happens in the connection's own task, so a slow peer never holds up accepts.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    settings: SshSettings,
    shared: Arc<Shared>,
    lanes: Arc<Lanes>,
) {
    let settings = Arc::new(settings);
    loop {
        let (socket, peer) = tokio::select! {
            _ = shared.draining.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match shared.guard.reserve() {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::info!(%peer, reason = %refusal, "connection refused");
                crate::metrics::connection_refused(refusal.label());
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        // The socket leaves this runtime's reactor here and joins the lane's in the task.
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(%peer, "cannot hand the connection to a session thread: {e}");
                continue;
            }
        };
        let Some(placement) = lanes.place() else {
            tracing::warn!(%peer, "no session thread to run the connection on");
            continue;
        };
        let config = config.clone();
        let shared2 = shared.clone();
        let settings = settings.clone();
        let lane = placement.handle().clone();
        shared.tasks.spawn_on(
            async move {
                let _placement = placement;
                let mut socket = match tokio::net::TcpStream::from_std(socket) {
                    Ok(socket) => socket,
                    Err(e) => {
                        tracing::warn!(%peer, "cannot run the connection on its session thread: {e}");
                        return;
                    }
                };
                let Some(client) = client_address(
                    &mut socket,
                    peer,
                    settings.proxy_protocol.as_ref(),
                    &shared2,
                )
                .await
                else {
                    return;
                };
                let mut admission = match slot.admit(client.ip()) {
                    Ok(a) => a,
                    Err(refusal) => {
                        tracing::info!(peer = %client, reason = %refusal, "connection refused");
                        crate::metrics::connection_refused(refusal.label());
                        return;
                    }
                };
                connection::serve_connection(socket, client, config, shared2, settings, &mut admission)
                    .await;
                drop(admission);
            },
            &lane,
        );
    }
}

/// The client's address: the one in the PROXY header when `peer` is a trusted load balancer,
/// else `peer` itself (an untrusted peer's bytes are never read as a header). `None`: a
/// trusted peer sent no valid header, and the connection is to be closed.
async fn client_address(
    socket: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    proxy: Option<&ProxySettings>,
    shared: &Shared,
) -> Option<SocketAddr> {
    let proxy = match proxy {
        Some(p) if p.trusts(peer.ip()) => p,
        _ => return Some(peer),
    };
    let header = tokio::select! {
        header = proxy_protocol::read_header(socket, proxy.header_timeout) => header,
        // The connection would be told to go as soon as it started.
        _ = shared.draining.cancelled() => return None,
    };
    match header {
        Ok(header) => {
            let client = header.client(peer);
            tracing::debug!(
                peer = %client,
                proxy = %peer,
                version = %header.version,
                "PROXY header read"
            );
            Some(client)
        }
        Err(proxy_protocol::ProxyError::Closed { received: 0 }) => {
            // What a load balancer's TCP health check looks like.
            tracing::debug!(proxy = %peer, "connection closed before any PROXY header");
            None
        }
        Err(e) => {
            tracing::warn!(proxy = %peer, "closing a connection from a trusted proxy: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::{Algorithm, HashAlg};

    use super::*;

    #[test]
    fn no_sha1_rsa_and_no_zlib_before_login_are_offered() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("key");
        let config = russh_config(vec![key], &SshSettings::default());
        // `preferred.key` is also what russh sends as `server-sig-algs`.
        assert!(!config
            .preferred
            .key
            .contains(&Algorithm::Rsa { hash: None }));
        assert!(config.preferred.key.contains(&Algorithm::Rsa {
            hash: Some(HashAlg::Sha256)
        }));
        let compression: Vec<&str> = config
            .preferred
            .compression
            .iter()
            .map(|c| c.as_ref())
            .collect();
        assert_eq!(compression, ["none", "zlib@openssh.com"]);
    }
}
