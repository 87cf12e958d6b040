//! Session threads ("lanes"): single-threaded runtimes, each of which runs whole SSH
//! connections, so that one session's work (SSH crypto, SFTP requests, its S3 requests)
//! stays on one thread instead of hopping between the workers of a shared runtime.
//!
//! Why: with small files, a session is a chain of short steps (an SFTP request, an S3
//! request, a reply), and on a multi-threaded runtime every step can wake a different
//! worker. On the 2-core bench machine the `get -r` of 1,000 small files spent about 7 %
//! of its samples parking and waking workers; lanes took it from 1.39 to 1.26 s
//! (docs/benchmarks.md). Each lane has its own S3 connection pool ([`crate::storage`]
//! picks it through [`current`]): a pooled connection belongs to the runtime that opened
//! it, so a shared pool would bring the hops back.
//!
//! A connection goes to the lane with the fewest connections and stays there. One
//! session is therefore served by one thread; a 1 GiB transfer needs about half a core.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Tells lane sets apart, so that a process running several servers (the tests do) never
/// takes one server's lane for another's.
static NEXT_SET: AtomicU64 = AtomicU64::new(1);

/// How long a stopping lane waits for the blocking tasks its sessions started.
const STOP_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    static CURRENT: Cell<Option<LaneId>> = const { Cell::new(None) };
}

/// Which lane of which set a thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneId {
    pub set: u64,
    pub index: usize,
}

/// The lane the calling thread runs, if it is one.
pub fn current() -> Option<LaneId> {
    CURRENT.with(Cell::get)
}

/// A set of lanes; stopping (or dropping) it stops their threads and drops whatever still
/// runs on them.
#[derive(Debug)]
pub struct Lanes {
    set: u64,
    lanes: Vec<Lane>,
    running: Mutex<Vec<Running>>,
}

#[derive(Debug)]
struct Lane {
    handle: Handle,
    connections: Arc<AtomicUsize>,
}

/// What stops a lane's thread, and the thread to wait for.
#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// A connection's place on a lane: run its task on [`Placement::handle`]; the lane counts
/// the connection until this is dropped.
#[derive(Debug)]
pub struct Placement {
    handle: Handle,
    connections: Arc<AtomicUsize>,
}

impl Placement {
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lanes {
    /// Starts `count` lanes (at least one), on threads named `session-N` (and `session-N-b`
    /// for their blocking work, such as password hashing): Linux keeps 15 bytes of a name.
    pub fn start(count: usize) -> std::io::Result<Lanes> {
        let set = NEXT_SET.fetch_add(1, Ordering::Relaxed);
        let mut lanes = Vec::new();
        let mut running = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("session-{index}-b"))
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let id = LaneId { set, index };
            let thread = std::thread::Builder::new()
                .name(format!("session-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(id)));
                    // A dropped sender ends the lane too.
                    let _ = runtime.block_on(stopped);
                    runtime.shutdown_timeout(STOP_WAIT);
                })?;
            lanes.push(Lane {
                handle,
                connections: Arc::new(AtomicUsize::new(0)),
            });
            running.push(Running { stop, thread });
        }
        Ok(Lanes {
            set,
            lanes,
            running: Mutex::new(running),
        })
    }

    /// This set's identity, as in [`LaneId::set`].
    pub fn set(&self) -> u64 {
        self.set
    }

    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// The lane with the fewest connections (the first of equals), counting one more.
    pub fn place(&self) -> Option<Placement> {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|l| l.connections.load(Ordering::Relaxed))?;
        lane.connections.fetch_add(1, Ordering::Relaxed);
        Some(Placement {
            handle: lane.handle.clone(),
            connections: lane.connections.clone(),
        })
    }

    /// Connections on each lane now.
    pub fn connections(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|l| l.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops every lane: tasks still running on them are dropped. Waits for the threads
    /// without blocking the caller's runtime. Calling it again does nothing.
    pub async fn stop(&self) {
        let running = match self.running.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        if running.is_empty() {
            return;
        }
        let threads: Vec<_> = running
            .into_iter()
            .map(|r| {
                let _ = r.stop.send(());
                r.thread
            })
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::warn!("a session thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!("could not wait for the session threads to stop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_lane_and_know_it() {
        let lanes = Lanes::start(2).expect("lanes");
        assert_eq!(lanes.len(), 2);
        assert_eq!(current(), None, "the test's own thread is no lane");
        let first = lanes.place().expect("a lane");
        let second = lanes.place().expect("a lane");
        let a = first
            .handle()
            .spawn(async { current() })
            .await
            .expect("ran");
        let b = second
            .handle()
            .spawn(async { current() })
            .await
            .expect("ran");
        let set = lanes.set();
        assert_eq!(a, Some(LaneId { set, index: 0 }));
        assert_eq!(b, Some(LaneId { set, index: 1 }));
        // Tasks a lane's task spawns stay on that lane.
        let nested = first
            .handle()
            .spawn(async { tokio::spawn(async { current() }).await.ok().flatten() })
            .await
            .expect("ran");
        assert_eq!(nested, Some(LaneId { set, index: 0 }));
        lanes.stop().await;
    }

    #[tokio::test]
    async fn connections_go_to_the_least_busy_lane() {
        let lanes = Lanes::start(3).expect("lanes");
        let p0 = lanes.place().expect("a lane");
        let p1 = lanes.place().expect("a lane");
        let p2 = lanes.place().expect("a lane");
        assert_eq!(lanes.connections(), vec![1, 1, 1]);
        drop(p1);
        assert_eq!(lanes.connections(), vec![1, 0, 1]);
        let again = lanes.place().expect("a lane");
        assert_eq!(
            lanes.connections(),
            vec![1, 1, 1],
            "the freed lane is taken"
        );
        drop((p0, p2, again));
        assert_eq!(lanes.connections(), vec![0, 0, 0]);
        lanes.stop().await;
    }

    #[tokio::test]
    async fn two_sets_have_different_identities_and_zero_means_one() {
        let a = Lanes::start(0).expect("lanes");
        let b = Lanes::start(1).expect("lanes");
        assert_eq!(a.len(), 1);
        assert_ne!(a.set(), b.set());
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test]
    async fn stop_ends_the_threads_and_drops_their_tasks() {
        let lanes = Lanes::start(1).expect("lanes");
        let placement = lanes.place().expect("a lane");
        let (tx, rx) = oneshot::channel::<()>();
        // A task that would never end by itself; stopping the lane drops it, and with it
        // the sender.
        placement.handle().spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        lanes.stop().await;
        assert!(rx.await.is_err(), "the task was dropped");
        assert!(placement.handle().spawn(async {}).await.is_err());
        lanes.stop().await;
    }
}
