//! The russh `Handler` of one connection: authentication against the users file, then
//! routing of session channels to the front ends. Callbacks run on the connection's event
//! loop, so anything slow (argon2, S3) runs in spawned tasks.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

use tokio_util::sync::CancellationToken;

use super::registry::Registration;
use super::Shared;
use crate::users::{verify_password_or_dummy, Permissions, User};

/// Who this connection authenticated as.
#[derive(Debug, Clone)]
struct LoggedIn {
    username: String,
    key_prefix: String,
    permissions: Arc<Permissions>,
}

/// Per-connection state.
pub struct Connection {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    user: Option<LoggedIn>,
    /// Session channels opened but not yet given to a front end.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Set at login; the connection task enforces the auth deadline with it.
    authenticated: Arc<AtomicBool>,
    /// Front-end tasks (SFTP sessions, exec commands) running on this connection.
    active: Arc<AtomicUsize>,
    /// Cancelled to end this connection (the user's account changed).
    kick: CancellationToken,
    /// This connection's place among the user's live sessions.
    registration: Option<Registration>,
}

impl Connection {
    pub fn new(
        shared: Arc<Shared>,
        peer: Option<SocketAddr>,
        authenticated: Arc<AtomicBool>,
        active: Arc<AtomicUsize>,
        kick: CancellationToken,
    ) -> Self {
        Connection {
            shared,
            peer,
            user: None,
            channels: HashMap::new(),
            authenticated,
            active,
            kick,
            registration: None,
        }
    }

    /// Runs a front end on the shared tracker, counted as active on this connection.
    fn spawn_front_end(&self, task: impl Future<Output = ()> + Send + 'static) {
        let active = self.active.clone();
        active.fetch_add(1, Ordering::AcqRel);
        self.shared.tasks.spawn(async move {
            task.await;
            active.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn peer(&self) -> String {
        self.peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into())
    }

    fn enabled_user(&self, name: &str) -> Option<User> {
        self.shared.users().get(name).filter(|u| u.enabled).cloned()
    }

    /// The credentials were right: applies the account's limits, then lets the user in.
    /// A refusal here looks to the client exactly like a wrong password.
    fn accept(&mut self, user: &User, method: &str) -> Auth {
        if let Some(peer) = self.peer {
            if !user.ip_allowed(peer.ip()) {
                return self.reject(&user.username, method, "address not in allowed_ips");
            }
        }
        if user.is_expired(chrono::Utc::now()) {
            return self.reject(&user.username, method, "account expired (expires_at)");
        }
        let Some(registration) =
            self.shared
                .registry
                .register(&user.username, self.kick.clone(), user.max_sessions)
        else {
            return self.reject(&user.username, method, "max_sessions reached");
        };
        tracing::info!(user = %user.username, peer = %self.peer(), method, "login");
        self.registration = Some(registration);
        self.authenticated.store(true, Ordering::Release);
        self.user = Some(LoggedIn {
            username: user.username.clone(),
            key_prefix: user.key_prefix.clone(),
            permissions: Arc::new(user.permissions.clone()),
        });
        Auth::Accept
    }

    fn reject(&self, name: &str, method: &str, why: &str) -> Auth {
        tracing::warn!(user = %name, peer = %self.peer(), method, reason = why, "login refused");
        if let Some(peer) = self.peer {
            if let Some(length) = self.shared.guard.failed_login(peer.ip()) {
                tracing::warn!(
                    peer = %peer.ip(),
                    seconds = length.as_secs(),
                    "address banned after repeated failed logins"
                );
            }
        }
        Auth::reject()
    }

    /// Why a login as `name` whose credentials did not pass was refused: the account's state
    /// when that alone refuses it, so the log says "user disabled", not "wrong password".
    fn refusal(&self, name: &str, bad_credentials: &'static str) -> &'static str {
        match self.shared.users().get(name) {
            None => "unknown user",
            Some(u) if !u.enabled => "user disabled",
            Some(u) if u.is_expired(chrono::Utc::now()) => "account expired (expires_at)",
            Some(_) => bad_credentials,
        }
    }

    fn key_allowed(&self, name: &str, key: &PublicKey) -> Option<User> {
        self.enabled_user(name).filter(|u| u.has_key(key))
    }

    /// Refuses a request on a channel the way a shell would: message on stderr, then the
    /// exit status (127 for an unknown command).
    fn refuse_channel(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        message: &str,
        status: u32,
    ) -> Result<(), russh::Error> {
        self.channels.remove(&channel);
        session.channel_success(channel)?;
        session.extended_data(channel, 1, format!("{message}\n").into_bytes())?;
        session.exit_status_request(channel, status)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let record = self.shared.users().get(user).cloned();
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            verify_password_or_dummy(record.as_ref(), &password)
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Ok(self.reject(user, "password", self.refusal(user, "wrong password")));
        }
        match self.enabled_user(user) {
            Some(u) => Ok(self.accept(&u, "password")),
            None => Ok(self.reject(user, "password", "user disabled or removed during login")),
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.key_allowed(user, offer.public_key) {
            Some(_) => Ok(Auth::Accept),
            None => Ok(Auth::reject()),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.key_allowed(user, key.public_key) {
            Some(u) => Ok(self.accept(&u, "publickey")),
            None => Ok(self.reject(user, "publickey", self.refusal(user, "key not authorized"))),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.user.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(user), true) = (self.user.clone(), name == "sftp") else {
            tracing::info!(peer = %self.peer(), subsystem = name, "subsystem refused");
            self.channels.remove(&channel_id);
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        let Some(channel) = self.channels.remove(&channel_id) else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        let store = self
            .shared
            .storage
            .user_store_with(&user.key_prefix, user.permissions.clone());
        let limits = self.shared.sftp_limits.clone();
        tracing::debug!(user = %user.username, "sftp session started");
        self.spawn_front_end(crate::sftp::serve(
            channel,
            store,
            user.username,
            limits,
            self.shared.draining.clone(),
        ));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel_id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = crate::exec::Command::parse(data);
        let line = String::from_utf8_lossy(data);
        let user = match (&command, self.user.clone()) {
            (crate::exec::Command::Refused { message, status }, _) => {
                tracing::info!(peer = %self.peer(), command = %line, "exec refused");
                let (message, status) = (message.clone(), *status);
                return self.refuse_channel(channel_id, session, &message, status);
            }
            (_, None) => {
                session.channel_failure(channel_id)?;
                return Ok(());
            }
            (_, Some(user)) => user,
        };
        let Some(channel) = self.channels.remove(&channel_id) else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        tracing::info!(user = %user.username, peer = %self.peer(), command = %line, "exec");
        let store = self
            .shared
            .storage
            .user_store_with(&user.key_prefix, user.permissions.clone());
        self.spawn_front_end(crate::exec::run(channel, store, user.username, command));
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer(), "shell refused");
        self.refuse_channel(
            channel,
            session,
            "s3sftp: this server offers SFTP and SCP only, not a shell",
            crate::exec::NOT_FOUND,
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}
