//! Session channels between their CHANNEL_OPEN and their subsystem or exec request, and
//! the count of channels a connection holds.
//!
//! russh hands every message of a channel to its [`Channel`] and its session loop waits
//! while that queue is full (`channel_buffer_size` messages): a channel nobody reads wedges
//! the whole connection, timers, disconnects and TCP FIN included. So each new channel is
//! read at once by a small task that discards what arrives (nothing sent before the
//! request means anything here) until the handler claims it for a front end; a channel
//! not claimed within the claim timeout is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a channel may stay open without a subsystem or exec request.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// How many channels a connection holds; a [`ChannelSlot`] is one of them.
#[derive(Debug, Default, Clone)]
pub struct ChannelCount(Arc<AtomicUsize>);

impl ChannelCount {
    /// A slot for one more channel, unless `max` are held already.
    pub fn take(&self, max: usize) -> Option<ChannelSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ChannelSlot(self.0.clone()))
    }

    /// Channels held now.
    #[cfg(test)]
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One channel of a connection, counted until dropped: it lives as long as whatever
/// reads the channel (the unclaimed-channel reader, then the front end).
#[derive(Debug)]
pub struct ChannelSlot(Arc<AtomicUsize>);

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type Claim = oneshot::Sender<(Channel<Msg>, ChannelSlot)>;

/// The channels of one connection that wait for their request.
#[derive(Debug, Default)]
pub struct Unclaimed {
    claims: HashMap<ChannelId, oneshot::Sender<Claim>>,
}

/// What a reader needs besides its channel.
pub struct ReaderContext {
    pub handle: Handle,
    pub killed: CancellationToken,
    pub timeout: Duration,
    pub peer: String,
}

impl Unclaimed {
    /// Starts reading `channel` on `tasks` until it is claimed, closed, or times out.
    pub fn hold(
        &mut self,
        channel: Channel<Msg>,
        slot: ChannelSlot,
        tasks: &TaskTracker,
        cx: ReaderContext,
    ) {
        let (tx, rx) = oneshot::channel();
        self.claims.insert(channel.id(), tx);
        tasks.spawn(read_until_claimed(channel, slot, rx, cx));
    }

    /// Takes the channel `id` for a front end; `None` if it is not waiting any more.
    pub async fn claim(&mut self, id: ChannelId) -> Option<(Channel<Msg>, ChannelSlot)> {
        let claim = self.claims.remove(&id)?;
        let (tx, rx) = oneshot::channel();
        claim.send(tx).ok()?;
        rx.await.ok()
    }

    /// Stops reading the channel `id` (it was refused or closed): its reader drops it.
    pub fn forget(&mut self, id: ChannelId) {
        self.claims.remove(&id);
    }
}

async fn read_until_claimed(
    mut channel: Channel<Msg>,
    slot: ChannelSlot,
    mut claims: oneshot::Receiver<Claim>,
    cx: ReaderContext,
) {
    let id = channel.id();
    let deadline = tokio::time::sleep(cx.timeout);
    tokio::pin!(deadline);
    let mut discarded = 0usize;
    loop {
        tokio::select! {
            claim = &mut claims => {
                if let Ok(reply) = claim {
                    let _ = reply.send((channel, slot));
                }
                return;
            }
            msg = channel.wait() => match msg {
                None | Some(ChannelMsg::Close) => return,
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    discarded = discarded.saturating_add(data.len());
                }
                Some(_) => {}
            },
            _ = &mut deadline => break,
            _ = cx.killed.cancelled() => return,
        }
    }
    // Dropped first: the session loop never waits on a queue nobody reads.
    drop(channel);
    drop(slot);
    tracing::info!(
        peer = %cx.peer,
        seconds = cx.timeout.as_secs(),
        discarded_bytes = discarded,
        "channel without a subsystem or exec request; closing it"
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), cx.handle.close(id)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_caps_and_frees_on_drop() {
        let count = ChannelCount::default();
        let a = count.take(2).expect("first");
        let _b = count.take(2).expect("second");
        assert!(count.take(2).is_none(), "third is refused");
        assert_eq!(count.get(), 2);
        drop(a);
        assert_eq!(count.get(), 1);
        assert!(count.take(2).is_some());
    }
}
