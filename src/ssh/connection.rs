//! The task of one connection, around russh's session: it enforces the auth deadline, the
//! account's expiry, kicks and shutdown, counts connections that never log in against
//! their source, and makes sure a connection that must end does end ([`Lifeline`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::handler::{Connection, Login};
use super::lifeline::Lifeline;
use super::{guard, log_ban, Shared, SshSettings};

/// How long a polite DISCONNECT may take to be queued before the connection is cut.
const DISCONNECT_WAIT: Duration = Duration::from_millis(300);
/// How long the session may take to end by itself after a DISCONNECT, or after its socket
/// was shut down, before the next, harder step.
const END_WAIT: Duration = Duration::from_millis(600);

/// Why the connection task stops waiting on the session.
enum End {
    /// The session ended by itself (client gone, error, too many auth attempts).
    Closed,
    /// Tell the client why, then make sure the connection ends.
    Disconnect(&'static str),
    /// The client is gone but the session did not notice: cut it.
    Cut,
}

/// How often the connection task checks whether the client closed the socket.
const HANG_UP_CHECK: Duration = Duration::from_secs(2);
/// How long a session may go on after its client closed the socket before it is taken
/// for wedged and cut (a healthy one ends at once).
const HUNG_UP_GRACE: Duration = Duration::from_secs(4);

/// Serves one admitted connection until it ends; `admission` learns when it logs in.
pub(super) async fn serve_connection(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    settings: Arc<SshSettings>,
    admission: &mut guard::Admission,
) {
    // Every line logged for this connection, front ends and storage included, carries the
    // session id and the peer, and the user once logged in.
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        id = session,
        peer = %peer,
        user = tracing::field::Empty
    );
    run(
        socket,
        peer,
        config,
        shared,
        settings,
        admission,
        (session, span.clone()),
    )
    .instrument(span)
    .await
}

/// Numbers the connections of this process, for the `session` span's `id`.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

async fn run(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    settings: Arc<SshSettings>,
    admission: &mut guard::Admission,
    (session_id, span): (u64, tracing::Span),
) {
    tracing::debug!(%peer, "connection");
    let _open = crate::metrics::OpenConnection::count();
    let started = tokio::time::Instant::now();
    let lifeline = Arc::new(Lifeline::default());
    let (login_tx, mut login_rx) = watch::channel(None::<Login>);
    let active = Arc::new(AtomicUsize::new(0));
    let hard_stop = shared.hard_stop.clone();
    let draining = shared.draining.clone();
    let kick = CancellationToken::new();
    let admin_kick = CancellationToken::new();
    let handler = Connection::new(
        shared.clone(),
        settings.clone(),
        Some(peer),
        login_tx,
        active.clone(),
        kick.clone(),
        lifeline.clone(),
    )
    .in_span(span)
    .with_session(session_id, admin_kick.clone());
    let stream = lifeline.wrap(socket);
    let handshake = tokio::time::timeout(
        settings.handshake_timeout.min(settings.auth_deadline),
        russh::server::run_stream(config, stream, handler),
    );
    let mut session = match handshake.await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "SSH handshake failed: {e}");
            penalise_no_login(&shared, &lifeline, peer);
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "SSH handshake timed out");
            penalise_no_login(&shared, &lifeline, peer);
            return;
        }
    };
    let handle = session.handle();
    let deadline = tokio::time::sleep_until(started + settings.auth_deadline);
    tokio::pin!(deadline);
    let mut expiry: Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(std::future::pending());
    let mut logged_in = false;
    let mut login_open = true;
    let mut hang_up_check = tokio::time::interval(HANG_UP_CHECK);
    hang_up_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hung_up_since: Option<tokio::time::Instant> = None;
    let end = loop {
        tokio::select! {
            result = &mut session => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                break End::Closed;
            }
            _ = hard_stop.cancelled() => break End::Disconnect("server shutting down"),
            _ = drained(&draining, &active) => break End::Disconnect("server shutting down"),
            _ = kick.cancelled() => {
                tracing::info!(%peer, "account changed in the users file; closing the connection");
                break End::Disconnect("your account changed; please log in again");
            }
            _ = admin_kick.cancelled() => {
                tracing::info!(%peer, "kicked by an admin (s3sftp kick); closing the connection");
                break End::Disconnect("disconnected by the administrator");
            }
            _ = &mut deadline, if !logged_in => {
                tracing::info!(%peer, "no successful login within the deadline; disconnecting");
                penalise_no_login(&shared, &lifeline, peer);
                break End::Disconnect("authentication timeout");
            }
            changed = login_rx.changed(), if login_open && !logged_in => {
                if changed.is_err() {
                    // The handler is gone: the session is ending.
                    login_open = false;
                    continue;
                }
                let login = *login_rx.borrow_and_update();
                if let Some(login) = login {
                    logged_in = true;
                    admission.logged_in();
                    if let Some(at) = login.expires_at {
                        expiry = Box::pin(sleep_until_time(at));
                    }
                }
            }
            now = hang_up_check.tick() => {
                if !lifeline.peer_closed() {
                    hung_up_since = None;
                    continue;
                }
                let since = *hung_up_since.get_or_insert(now);
                if now.duration_since(since) >= HUNG_UP_GRACE {
                    tracing::warn!(%peer, "the client closed the connection but its session did not end; cutting it");
                    break End::Cut;
                }
            }
            _ = &mut expiry => {
                tracing::info!(%peer, "account expired (expires_at); closing the connection");
                break End::Disconnect("your account expired");
            }
        }
    };
    if let End::Cut = end {
        cut(&lifeline, &mut session, peer).await;
    }
    if let End::Disconnect(reason) = end {
        // russh ignores this during a key exchange, and cannot send it while its loop
        // waits on a channel: each step is bounded, and the socket is cut after them.
        let polite =
            handle.disconnect(russh::Disconnect::ByApplication, reason.into(), "en".into());
        let _ = tokio::time::timeout(DISCONNECT_WAIT, polite).await;
        if tokio::time::timeout(END_WAIT, &mut session).await.is_err() {
            cut(&lifeline, &mut session, peer).await;
        }
    } else if !logged_in {
        penalise_no_login(&shared, &lifeline, peer);
    }
    if logged_in {
        crate::audit::logout(started.elapsed());
    }
    // Whatever the russh task still does, the user's session slot is free now.
    lifeline.release();
    tracing::debug!(%peer, "connection closed");
}

/// Shuts the socket down and stops every task of the connection, then gives the russh
/// task a moment to finish (it then drops the handler). A task that still does not end is
/// left behind: the connection is gone for the client and for every count.
async fn cut<S>(lifeline: &Lifeline, session: &mut S, peer: SocketAddr)
where
    S: std::future::Future + Unpin,
{
    tracing::debug!(%peer, "cutting the connection");
    lifeline.sever();
    if tokio::time::timeout(END_WAIT, session).await.is_err() {
        tracing::warn!(%peer, "the SSH session task did not end after its socket was shut down");
    }
}

/// Counts a connection that ended without logging in against its source, once (a
/// wrong password already counted is enough), unless its address is exempt.
fn penalise_no_login(shared: &Shared, lifeline: &Lifeline, peer: SocketAddr) {
    if lifeline.mark_penalised() {
        return;
    }
    if let Some(length) = shared.guard.penalise(peer.ip()) {
        log_ban(peer.ip(), length);
    }
}

/// Resolves at the wall-clock time `at` (at once if it has passed). Re-checks the clock
/// every minute at most, so a clock step is noticed.
async fn sleep_until_time(at: chrono::DateTime<chrono::FixedOffset>) {
    loop {
        let left = at.signed_duration_since(chrono::Utc::now());
        let Ok(left) = left.to_std() else { return };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
    }
}

/// Resolves once shutdown has begun and the connection has no front end running (its
/// transfers are done), so the client is told to go instead of left waiting.
async fn drained(draining: &CancellationToken, active: &AtomicUsize) {
    draining.cancelled().await;
    while active.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
