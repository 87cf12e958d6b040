//! The russh `Handler` of one connection: authentication against the users file, then
//! routing of session channels to the front ends. Callbacks run on the connection's event
//! loop, so anything slow (argon2, S3) runs in spawned tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use russh::keys::{Algorithm, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lifeline::Lifeline;
use super::unclaimed::{ChannelCount, ChannelSlot, ReaderContext, Unclaimed};
use super::{Shared, SshSettings};
use crate::activity::Activity;
use crate::log_text::escaped;
use crate::users::{Permissions, User};

/// Who this connection authenticated as.
#[derive(Debug, Clone)]
struct LoggedIn {
    username: String,
    key_prefix: String,
    permissions: Arc<Permissions>,
}

/// What the connection task learns at login.
#[derive(Debug, Clone, Copy)]
pub struct Login {
    /// The account's `expires_at`: the connection ends when it passes.
    pub expires_at: Option<DateTime<FixedOffset>>,
}

/// Per-connection state.
pub struct Connection {
    shared: Arc<Shared>,
    settings: Arc<SshSettings>,
    peer: Option<SocketAddr>,
    user: Option<LoggedIn>,
    /// Session channels opened but not yet given to a front end (each is being read).
    unclaimed: Unclaimed,
    /// Channels this connection holds, for `max_channels`.
    channels: ChannelCount,
    /// Set at login; the connection task enforces the auth deadline and expiry with it.
    login: watch::Sender<Option<Login>>,
    /// Front-end tasks (SFTP sessions, exec commands) running on this connection.
    active: Arc<AtomicUsize>,
    /// Cancelled to end this connection (the user's account changed).
    kick: CancellationToken,
    /// Cuts the connection; holds its session registration.
    lifeline: Arc<Lifeline>,
    /// The connection's span (session id, peer, user): russh runs these callbacks in a
    /// task of its own, so front ends and login events are put under it explicitly.
    span: tracing::Span,
    /// The connection's session id, and the token `s3sftp kick` cancels to end it.
    session_id: u64,
    admin_kick: CancellationToken,
    /// Set at login: what `s3sftp sessions` shows; the front ends count into it.
    activity: Option<Arc<Activity>>,
}

impl Connection {
    pub fn new(
        shared: Arc<Shared>,
        settings: Arc<SshSettings>,
        peer: Option<SocketAddr>,
        login: watch::Sender<Option<Login>>,
        active: Arc<AtomicUsize>,
        kick: CancellationToken,
        lifeline: Arc<Lifeline>,
    ) -> Self {
        Connection {
            shared,
            settings,
            peer,
            user: None,
            unclaimed: Unclaimed::default(),
            channels: ChannelCount::default(),
            login,
            active,
            kick,
            lifeline,
            span: tracing::Span::none(),
            session_id: 0,
            admin_kick: CancellationToken::new(),
            activity: None,
        }
    }

    /// Gives the connection its session id and the token an admin's kick cancels.
    pub fn with_session(mut self, id: u64, admin_kick: CancellationToken) -> Self {
        self.session_id = id;
        self.admin_kick = admin_kick;
        self
    }

    /// The login's activity record (a detached one before login, which cannot happen for
    /// a front end).
    fn activity(&self, username: &str) -> Arc<Activity> {
        self.activity
            .clone()
            .unwrap_or_else(|| Activity::detached(username))
    }

    /// Puts the connection's logging and front ends under `span` (see `Connection::span`).
    pub fn in_span(mut self, span: tracing::Span) -> Self {
        self.span = span;
        self
    }

    /// Runs a front end on the shared tracker, counted as active on this connection and
    /// holding its channel slot; it is dropped if the connection is cut.
    fn spawn_front_end(&self, slot: ChannelSlot, task: impl Future<Output = ()> + Send + 'static) {
        let active = self.active.clone();
        let killed = self.lifeline.killed().clone();
        active.fetch_add(1, Ordering::AcqRel);
        let task = async move {
            tokio::select! {
                _ = task => {}
                _ = killed.cancelled() => {}
            }
            drop(slot);
            active.fetch_sub(1, Ordering::AcqRel);
        };
        self.shared
            .tasks
            .spawn(tracing::Instrument::instrument(task, self.span.clone()));
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
        let activity = Activity::new(
            self.session_id,
            &user.username,
            self.peer,
            self.admin_kick.clone(),
        );
        let Some(registration) =
            self.shared
                .registry
                .register(activity.clone(), self.kick.clone(), user.max_sessions)
        else {
            return self.reject(&user.username, method, "max_sessions reached");
        };
        // The audit event below is the login line (the span carries the peer).
        self.span.record(
            "user",
            tracing::field::display(escaped(&user.username).to_string()),
        );
        self.span
            .in_scope(|| crate::audit::login(&user.username, method, Ok(())));
        crate::metrics::login(method, "ok");
        self.lifeline.hold(registration);
        self.activity = Some(activity);
        self.login.send_replace(Some(Login {
            expires_at: user.expires_at,
        }));
        self.user = Some(LoggedIn {
            username: user.username.clone(),
            key_prefix: user.key_prefix.clone(),
            permissions: Arc::new(user.permissions.clone()),
        });
        Auth::Accept
    }

    /// Refuses a login attempt and counts it against the client's address. Both methods
    /// stay on offer, so a user who mistyped is asked again, up to `max_auth_attempts`
    /// (after which russh disconnects), like OpenSSH's MaxAuthTries.
    fn reject(&self, name: &str, method: &str, why: &str) -> Auth {
        tracing::warn!(user = %escaped(name), peer = %self.peer(), method, reason = why, "login refused");
        self.span
            .in_scope(|| crate::audit::login(name, method, Err(why)));
        crate::metrics::login(method, "refused");
        self.lifeline.mark_penalised();
        if let Some(peer) = self.peer {
            if let Some(length) = self.shared.guard.failed_login(peer.ip()) {
                super::log_ban(peer.ip(), length);
            }
        }
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(
                &[MethodKind::Password, MethodKind::PublicKey][..],
            )),
            partial_success: false,
        }
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
        self.unclaimed.forget(channel);
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
        let ok = self
            .shared
            .password_checks
            .verify(record, password.to_string(), self.lifeline.killed())
            .await;
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
        if is_sha1_rsa(offer.algorithm) {
            return Ok(Auth::reject());
        }
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
        if is_sha1_rsa(key.algorithm) {
            return Ok(self.reject(user, "publickey", "ssh-rsa (SHA-1) signatures are refused"));
        }
        match self.key_allowed(user, key.public_key) {
            Some(u) => Ok(self.accept(&u, "publickey")),
            None => Ok(self.reject(user, "publickey", self.refusal(user, "key not authorized"))),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.user.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let max = self.settings.max_channels;
        let Some(slot) = self.channels.take(max) else {
            tracing::info!(peer = %self.peer(), max_channels = max, "channel refused: too many channels on this connection");
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        };
        let cx = ReaderContext {
            handle: session.handle(),
            killed: self.lifeline.killed().clone(),
            timeout: self.settings.channel_claim_timeout,
            peer: self.peer(),
        };
        self.unclaimed.hold(channel, slot, &self.shared.tasks, cx);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unclaimed.forget(channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(user), true) = (self.user.clone(), name == "sftp") else {
            tracing::info!(peer = %self.peer(), subsystem = %escaped(name), "subsystem refused");
            self.unclaimed.forget(channel_id);
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        let Some((channel, slot)) = self.unclaimed.claim(channel_id).await else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        let store = self
            .shared
            .storage
            .user_store_with(&user.key_prefix, user.permissions.clone());
        let limits = self.shared.sftp_limits.clone();
        tracing::debug!(user = %escaped(&user.username), "sftp session started");
        self.spawn_front_end(
            slot,
            crate::sftp::serve(
                channel,
                store,
                user.username.clone(),
                limits,
                self.shared.draining.clone(),
                self.activity(&user.username),
            ),
        );
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
                tracing::info!(peer = %self.peer(), command = %escaped(&line), "exec refused");
                self.span
                    .in_scope(|| crate::audit::exec(&line, Err(message.as_str())));
                let (message, status) = (message.clone(), *status);
                return self.refuse_channel(channel_id, session, &message, status);
            }
            (_, None) => {
                session.channel_failure(channel_id)?;
                return Ok(());
            }
            (_, Some(user)) => user,
        };
        let Some((channel, slot)) = self.unclaimed.claim(channel_id).await else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        tracing::info!(user = %escaped(&user.username), peer = %self.peer(), command = %escaped(&line), "exec");
        self.span.in_scope(|| crate::audit::exec(&line, Ok(())));
        let store = self
            .shared
            .storage
            .user_store_with(&user.key_prefix, user.permissions.clone());
        self.spawn_front_end(
            slot,
            crate::exec::run(
                channel,
                store,
                user.username.clone(),
                command,
                self.activity(&user.username),
            ),
        );
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

/// Whether `algorithm` is RSA signed with SHA-1 (`ssh-rsa`), which is not offered and
/// not accepted: rsa-sha2-256 and rsa-sha2-512 sign with the same keys.
fn is_sha1_rsa(algorithm: &Algorithm) -> bool {
    *algorithm == Algorithm::Rsa { hash: None }
}
