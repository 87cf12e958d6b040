//! The SFTP front end: protocol only, no S3 knowledge. [`serve`] runs one session over
//! an SSH channel; [`session::Session`] maps requests to [`crate::storage`] calls.

pub mod attrs;
pub mod codec;
pub mod session;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use session::{Session, SessionLimits};

use crate::storage::UserStore;

/// Replies queued for the writer task (the client pipelines up to 64 requests).
const REPLY_QUEUE: usize = 64;

/// Serves SFTP on `channel` until the client closes it, then reports exit status 0
/// (OpenSSH `scp` in SFTP mode exits 1 without it) and closes the channel.
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
) {
    let (mut reader, writer) = channel.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(REPLY_QUEUE);
    let writer_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            if writer.data_bytes(reply).await.is_err() {
                return None;
            }
        }
        Some(writer)
    });

    let idle = limits.idle_timeout;
    let mut session = Session::new(store, &username, limits);
    let mut framer = codec::Framer::default();
    let mut drain_seen = false;
    'session: loop {
        if drain_seen && session.open_handles() == 0 {
            tracing::info!(user = %username, "closing the SFTP session for shutdown");
            break;
        }
        let msg = tokio::select! {
            msg = tokio::time::timeout(idle, reader.wait()) => match msg {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => {
                    tracing::info!(user = %username, seconds = idle.as_secs(), "SFTP session idle; closing it");
                    break;
                }
            },
            _ = draining.cancelled(), if !drain_seen => {
                drain_seen = true;
                continue;
            }
        };
        match msg {
            ChannelMsg::Data { data } => framer.push(&data),
            ChannelMsg::Eof | ChannelMsg::Close => break,
            _ => continue,
        }
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    let reply = session.handle(frame).await;
                    if tx.send(reply).await.is_err() {
                        break 'session;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(user = %username, "SFTP stream unreadable, closing the session: {e}");
                    break 'session;
                }
            }
        }
    }
    session.close_all().await;
    drop(tx);
    if let Ok(Some(writer)) = writer_task.await {
        let _ = writer.exit_status(0).await;
        let _ = writer.eof().await;
        let _ = writer.close().await;
    }
    tracing::debug!(user = %username, "sftp session ended");
}
