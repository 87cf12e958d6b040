//! The SFTP front end: protocol only, no S3 knowledge. [`serve`] runs one session over
//! an SSH channel; [`session::Session`] maps requests to [`crate::storage`] calls.

pub mod attrs;
pub mod codec;
mod pending;
pub mod session;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use session::{Session, SessionLimits};

use crate::storage::UserStore;
use pending::Pending;

/// Replies queued for the writer task (the client pipelines up to 64 requests).
const REPLY_QUEUE: usize = 64;

/// Serves SFTP on `channel` until the client closes it, then reports exit status 0
/// (OpenSSH `scp` in SFTP mode exits 1 without it) and closes the channel.
///
/// The channel is read whatever the replies are doing. Replies wait for the client's
/// SSH window in a queue of [`REPLY_QUEUE`]; while it is full, requests that arrive are
/// held (not answered) in a [`Pending`] queue bounded in bytes. If the channel stopped
/// being read instead, russh would stop reading the socket, the client's WINDOW_ADJUST
/// would never be seen and both sides would wait forever (paramiko's prefetch sends READ
/// requests for a whole file before it reads any reply). A client that fills the
/// pending bound and reads no reply for [`pending::STALL_LIMIT`] is disconnected.
///
/// When `draining` is cancelled (shutdown), the session ends as soon as it has no open
/// handle: transfers in flight finish, idle sessions go at once. A session with no
/// request for `limits.idle_timeout` ends too.
pub async fn serve(
    channel: Channel<Msg>,
    store: UserStore,
    username: String,
    limits: SessionLimits,
    draining: CancellationToken,
    activity: std::sync::Arc<crate::activity::Activity>,
) {
    let (mut reader, writer) = channel.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(REPLY_QUEUE);
    let writer_task = tokio::spawn(
        async move {
            while let Some(reply) = rx.recv().await {
                if writer.data_bytes(reply).await.is_err() {
                    return None;
                }
            }
            Some(writer)
        }
        .in_current_span(),
    );

    let idle = limits.idle_timeout;
    let mut session = Session::new(store, &username, limits).with_activity(activity);
    let mut pending = Pending::default();
    let mut drain_seen = false;
    let mut input_ended = false;
    let mut idle_deadline = Instant::now() + idle;
    loop {
        if drain_seen && session.open_handles() == 0 && pending.is_empty() {
            tracing::info!(user = %username, "closing the SFTP session for shutdown");
            break;
        }
        if input_ended && pending.is_empty() {
            break;
        }
        let reading = !input_ended && !pending.is_full();
        let stall = pending.stall_deadline();
        tokio::select! {
            biased;
            _ = draining.cancelled(), if !drain_seen => drain_seen = true,
            // Answer held requests first, so nothing is held while replies flow.
            permit = tx.reserve(), if !pending.is_empty() => {
                let Ok(permit) = permit else { break };
                let Some(frame) = pending.pop() else { continue };
                permit.send(session.handle(frame).await);
            }
            msg = reader.wait(), if reading => {
                idle_deadline = Instant::now() + idle;
                match msg {
                    Some(ChannelMsg::Data { data }) => {
                        if let Err(e) = pending.push_data(&data) {
                            tracing::warn!(user = %username, "SFTP stream unreadable, closing the session: {e}");
                            break;
                        }
                    }
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => input_ended = true,
                    Some(_) => {}
                }
            }
            _ = tokio::time::sleep_until(stall.unwrap_or(idle_deadline)), if stall.is_some() => {
                tracing::warn!(
                    user = %username,
                    held_bytes = pending.bytes(),
                    "SFTP client sent requests without reading the replies; closing the session"
                );
                break;
            }
            _ = tokio::time::sleep_until(idle_deadline), if pending.is_empty() && !input_ended => {
                tracing::info!(user = %username, seconds = idle.as_secs(), "SFTP session idle; closing it");
                break;
            }
        }
    }
    drop(reader);
    session.close_all().await;
    drop(tx);
    if let Ok(Some(writer)) = writer_task.await {
        let _ = writer.exit_status(0).await;
        let _ = writer.eof().await;
        let _ = writer.close().await;
    }
    tracing::debug!(user = %username, "sftp session ended");
}
