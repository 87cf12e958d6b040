//! A global memory budget for transfer buffers, shared by every upload and download and
//! shared fairly between users.
//!
//! Buffers are reserved before they are filled; when the budget is spent, the reservation
//! waits, which makes the front end's WRITE/READ replies wait instead of buffering more.
//!
//! The rule (stated for admins in `docs/configuration.md`, "Memory"):
//! - one user (one home prefix) never holds more than half the budget ([`MemoryBudget::user_cap`]),
//!   so another user always finds room;
//! - while another user waits, a user may not grow past its fair share (the budget divided
//!   by the users holding or waiting); what it holds it keeps, but it waits for more;
//! - read-ahead is optional memory: it is taken only when nobody waits, at most a quarter
//!   of the budget per user, and never waits itself ([`Account::try_optional`]); downloads
//!   take all their buffers this way, read directly when it is refused, and let it go
//!   when a handle is idle (see `download.rs`);
//! - waiters are served in arrival order, so a large request is not starved by small ones.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// A user may always hold this much (or the whole budget, if smaller), however small
/// half the budget is: enough for an S3 part (5 MiB at least) and some read-ahead.
const MIN_USER_CAP: u64 = 16 * 1024 * 1024;

/// The shared pool of transfer-buffer bytes.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: u64,
    state: Mutex<State>,
}

/// What is held and who waits. One lock, held only for arithmetic.
#[derive(Debug, Default)]
struct State {
    free: u64,
    /// Bytes held per user; a user holding nothing is removed.
    held: HashMap<Arc<str>, u64>,
    /// Requests that could not be granted when made, oldest first.
    queue: VecDeque<Waiter>,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    user: Arc<str>,
    bytes: u64,
    granted: oneshot::Sender<()>,
}

/// One user's side of the budget: every reservation of a session is made through it.
#[derive(Clone, Debug)]
pub struct Account {
    budget: MemoryBudget,
    user: Arc<str>,
}

/// A reservation of buffer bytes; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    owner: Option<(Arc<Inner>, Arc<str>)>,
    bytes: u64,
}

impl Reservation {
    /// A reservation of nothing (to merge others into).
    pub fn empty() -> Self {
        Reservation {
            owner: None,
            bytes: 0,
        }
    }

    /// Bytes this reservation pays for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether this reservation pays for a buffer of `bytes`.
    pub fn covers(&self, bytes: u64) -> bool {
        self.bytes >= bytes
    }

    /// Gives back everything above `bytes` (the buffer turned out smaller than reserved).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            return;
        }
        let extra = self.bytes - bytes;
        self.bytes = bytes;
        if let Some((inner, user)) = &self.owner {
            inner.release(user, extra);
        }
    }

    /// Adds `other`'s bytes to this reservation (both are the same user's).
    pub fn merge(&mut self, mut other: Reservation) {
        if other.bytes == 0 {
            return;
        }
        if self.owner.is_none() {
            self.owner = other.owner.take();
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((inner, user)) = &self.owner {
            if self.bytes > 0 {
                inner.release(user, self.bytes);
            }
        }
    }
}

impl MemoryBudget {
    pub fn new(total_bytes: u64) -> Self {
        let total = total_bytes.max(1);
        MemoryBudget {
            inner: Arc::new(Inner {
                total,
                state: Mutex::new(State {
                    free: total,
                    ..State::default()
                }),
            }),
        }
    }

    /// The side of the budget of `user` (any stable name: the server uses the home prefix).
    pub fn account(&self, user: &str) -> Account {
        Account {
            budget: self.clone(),
            user: Arc::from(user),
        }
    }

    /// The whole budget.
    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// The most one user holds: half the budget, or 16 MiB if that is more.
    pub fn user_cap(&self) -> u64 {
        self.inner.user_cap()
    }

    /// Bytes currently reserved.
    pub fn in_use(&self) -> u64 {
        self.inner.total - self.inner.lock().free
    }

    /// Bytes currently reserved by `user`.
    pub fn in_use_by(&self, user: &str) -> u64 {
        self.inner.lock().held.get(user).copied().unwrap_or(0)
    }

    /// Requests waiting for memory.
    pub fn waiting(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Reserves `bytes` for an anonymous user (tests and tools).
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        self.account("").reserve(bytes).await
    }

    /// Reserves `bytes` now for an anonymous user, or not at all.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        self.account("").try_reserve(bytes)
    }
}

impl Account {
    /// Reserves `bytes`, waiting while the budget or this user's share is spent. A request
    /// larger than a user may ever hold is clamped to it, so it waits for the user's other
    /// buffers to go instead of forever.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let inner = &self.budget.inner;
        let bytes = bytes.min(inner.user_cap());
        let (id, rx) = {
            let mut state = inner.lock();
            if !inner.someone_short(&state) && inner.fits(&state, &self.user, bytes, false) {
                state.take(&self.user, bytes);
                return self.reservation(bytes);
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.queue.push_back(Waiter {
                id,
                user: self.user.clone(),
                bytes,
                granted: tx,
            });
            inner.dispatch(&mut state);
            (id, rx)
        };
        let mut guard = WaitGuard {
            inner: inner.clone(),
            user: self.user.clone(),
            id,
            bytes,
            rx: Some(rx),
        };
        if let Some(rx) = guard.rx.as_mut() {
            // The sender lives in the queue until granted; it is dropped only when granted.
            let _ = rx.await;
        }
        guard.rx = None;
        self.reservation(bytes)
    }

    /// Reserves `bytes` if that is possible right now under the rule, else `None`.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let inner = &self.budget.inner;
        let mut state = inner.lock();
        if !inner.someone_short(&state) && inner.fits(&state, &self.user, bytes, false) {
            state.take(&self.user, bytes);
            return Some(self.reservation(bytes));
        }
        None
    }

    /// Optional memory (read-ahead): granted only when nobody waits and this user holds
    /// less than a quarter of the budget with it; never waits.
    pub fn try_optional(&self, bytes: u64) -> Option<Reservation> {
        let inner = &self.budget.inner;
        let mut state = inner.lock();
        if state.queue.is_empty() && inner.fits(&state, &self.user, bytes, true) {
            state.take(&self.user, bytes);
            return Some(self.reservation(bytes));
        }
        None
    }

    /// Whether someone waits for memory: optional buffers should be let go.
    pub fn contended(&self) -> bool {
        !self.budget.inner.lock().queue.is_empty()
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    fn reservation(&self, bytes: u64) -> Reservation {
        Reservation {
            owner: Some((self.budget.inner.clone(), self.user.clone())),
            bytes,
        }
    }
}

/// Leaves the queue if the waiting request is dropped; gives back a grant that came too late.
struct WaitGuard {
    inner: Arc<Inner>,
    user: Arc<str>,
    id: u64,
    bytes: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut state = self.inner.lock();
        let before = state.queue.len();
        state.queue.retain(|w| w.id != self.id);
        if state.queue.len() == before {
            // Granted (under the lock, so the grant is in the channel): give it back.
            rx.close();
            if rx.try_recv().is_ok() {
                state.give(&self.user, self.bytes);
            }
        }
        self.inner.dispatch(&mut state);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn user_cap(&self) -> u64 {
        (self.total / 2).max(self.total.min(MIN_USER_CAP))
    }

    /// Whether `user` may take `bytes` now (see the module's rule).
    fn fits(&self, state: &State, user: &Arc<str>, bytes: u64, optional: bool) -> bool {
        bytes <= state.free && self.allowed(state, user, bytes, optional)
    }

    /// Whether the rule lets `user` take `bytes` more, whatever is free: its cap, its
    /// share while another user waits, and the read-ahead limit for optional memory.
    fn allowed(&self, state: &State, user: &Arc<str>, bytes: u64, optional: bool) -> bool {
        let held = state.held.get(user).copied().unwrap_or(0);
        let after = held.saturating_add(bytes);
        if after > self.user_cap() {
            return false;
        }
        if optional {
            return after <= self.total / 4;
        }
        let others_wait = state.queue.iter().any(|w| w.user != *user);
        if !others_wait {
            return true;
        }
        let mut active: Vec<&Arc<str>> = state.held.keys().collect();
        active.extend(state.queue.iter().map(|w| &w.user));
        active.push(user);
        active.sort();
        active.dedup();
        after <= self.total / active.len() as u64
    }

    /// Whether a waiter the rule allows is short of free memory: it is served before any
    /// later request. Waiters the rule holds back (past their cap or share) keep nobody out.
    fn someone_short(&self, state: &State) -> bool {
        state
            .queue
            .iter()
            .any(|w| w.bytes > state.free && self.allowed(state, &w.user, w.bytes, false))
    }

    /// Grants queued requests in order. A request the rule holds back (its user's cap or
    /// share) is passed over; one short of free memory stops the scan (first come, first
    /// served).
    fn dispatch(&self, state: &mut State) {
        let mut i = 0;
        while i < state.queue.len() {
            let (user, bytes) = (state.queue[i].user.clone(), state.queue[i].bytes);
            let Some(waiter) = state.queue.remove(i) else {
                return;
            };
            let allowed = self.allowed(state, &user, bytes, false);
            if allowed && bytes <= state.free {
                state.take(&user, bytes);
                if waiter.granted.send(()).is_err() {
                    state.give(&user, bytes);
                }
                continue;
            }
            state.queue.insert(i, waiter);
            if allowed {
                return;
            }
            i += 1;
        }
    }

    fn release(&self, user: &Arc<str>, bytes: u64) {
        let mut state = self.lock();
        state.give(user, bytes);
        self.dispatch(&mut state);
    }
}

impl State {
    fn take(&mut self, user: &Arc<str>, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.free -= bytes;
        *self.held.entry(user.clone()).or_insert(0) += bytes;
    }

    fn give(&mut self, user: &Arc<str>, bytes: u64) {
        self.free += bytes;
        if let Some(held) = self.held.get_mut(user) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.held.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const K: u64 = 1024 * 1024;

    async fn pending<F: std::future::Future>(f: F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn reservations_wait_until_released() {
        let budget = MemoryBudget::new(40 * K);
        let a = budget.account("a");
        let r = a.reserve(6 * K).await;
        assert_eq!(budget.in_use(), 6 * K);
        let mut c = a.reserve(14 * K).await;
        assert!(a.try_reserve(1).is_none(), "past half the budget");
        c.shrink_to(1);
        assert_eq!(budget.in_use(), 6 * K + 1);
        drop((r, c));
        assert_eq!(budget.in_use(), 0);
        // Larger than a user may hold: clamped, not stuck forever.
        let big = a.reserve(1 << 40).await;
        assert_eq!(budget.in_use(), 20 * K);
        assert_eq!(
            MemoryBudget::new(10 * K).user_cap(),
            10 * K,
            "small budgets"
        );
        drop(big);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn one_user_never_holds_more_than_half() {
        let budget = MemoryBudget::new(100 * K);
        let a = budget.account("a");
        let held = a.reserve(50 * K).await;
        assert!(pending(a.reserve(1)).await, "a is at its cap");
        let b = budget.account("b");
        let other = b.reserve(50 * K).await;
        assert_eq!(budget.in_use(), 100 * K);
        drop((held, other));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.waiting(), 0, "the dropped wait left the queue");
    }

    #[tokio::test]
    async fn a_user_past_its_share_waits_while_another_waits() {
        let budget = MemoryBudget::new(120 * K);
        let (a, b, c) = (
            budget.account("a"),
            budget.account("b"),
            budget.account("c"),
        );
        let a1 = a.reserve(50 * K).await;
        let b1 = b.reserve(50 * K).await;
        // c waits for 30 K (only 20 free).
        let c_wait = tokio::spawn({
            let c = c.clone();
            async move { c.reserve(30 * K).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // c is short of memory: nobody takes what is freed before it is served.
        assert!(a.try_reserve(K).is_none());
        // Optional memory yields first.
        assert!(c.try_optional(K).is_none());
        drop(a1);
        let c1 = c_wait.await.unwrap();
        assert_eq!(budget.in_use_by("c"), 30 * K);
        drop((b1, c1));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn waiters_are_served_in_order_and_cancellation_is_clean() {
        let budget = MemoryBudget::new(100 * K);
        let a = budget.account("a");
        let b = budget.account("b");
        let a1 = a.reserve(40 * K).await;
        let b1 = b.reserve(40 * K).await;
        // c waits for 30 K (20 free); a's later 10 K, which would fit, may not overtake it.
        let c = budget.account("c");
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.reserve(30 * K).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(a.try_reserve(10 * K).is_none());
        assert!(pending(b.reserve(10 * K)).await);
        assert_eq!(budget.waiting(), 1, "the dropped wait left the queue");
        drop(b1);
        let c1 = first.await.unwrap();
        let b2 = b.reserve(10 * K).await;
        assert_eq!(budget.in_use(), 80 * K);
        drop((a1, c1, b2));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_user_at_its_cap_keeps_nobody_out() {
        let budget = MemoryBudget::new(100 * K);
        let (a, b, c) = (
            budget.account("a"),
            budget.account("b"),
            budget.account("c"),
        );
        let a1 = a.reserve(50 * K).await;
        let b1 = b.reserve(47 * K).await;
        // a waits for more than is free, but it is at its cap: not first in line.
        let a_wait = tokio::spawn({
            let a = a.clone();
            async move { a.reserve(5 * K).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let c1 = c.try_reserve(3 * K).expect("the free 3 K go to c");
        drop((b1, c1));
        assert!(!a_wait.is_finished(), "a is still at its cap");
        drop(a1);
        let a2 = a_wait.await.unwrap();
        assert_eq!(budget.in_use(), 5 * K);
        drop(a2);
    }

    #[tokio::test]
    async fn past_its_fair_share_a_user_gets_nothing_while_another_waits() {
        let budget = MemoryBudget::new(120 * K);
        let (a, b, c) = (
            budget.account("a"),
            budget.account("b"),
            budget.account("c"),
        );
        let a1 = a.reserve(45 * K).await;
        let b1 = b.reserve(60 * K).await;
        let c1 = c.reserve(10 * K).await;
        let b_wait = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(K).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // 5 K are free; the fair share of three users is 40 K.
        assert!(a.try_reserve(5 * K).is_none(), "a holds 45 K, past 40 K");
        let c2 = c.try_reserve(5 * K).expect("c holds 10 K");
        drop((b1, a1, c1, c2));
        drop(b_wait.await.unwrap());
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn optional_memory_is_capped_at_a_quarter() {
        let budget = MemoryBudget::new(100 * K);
        let a = budget.account("a");
        let r = a.try_optional(25 * K).expect("a quarter");
        assert!(a.try_optional(1).is_none());
        let mut m = Reservation::empty();
        m.merge(r);
        m.merge(a.reserve(K).await);
        assert_eq!(m.bytes(), 26 * K);
        assert_eq!(budget.in_use_by("a"), 26 * K);
        drop(m);
        assert_eq!(budget.in_use(), 0);
    }
}
