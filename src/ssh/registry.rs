//! Who is logged in right now: per user, the live connections and a token that ends
//! each one. Used for `max_sessions` and to close the sessions of a user whose account
//! changed in the users file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    users: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
}

/// One registered connection; unregisters on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    username: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut users = self.registry.lock();
        if let Some(conns) = users.get_mut(&self.username) {
            conns.remove(&self.id);
            if conns.is_empty() {
                users.remove(&self.username);
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<u64, CancellationToken>>> {
        match self.users.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a connection of `username` whose `kick` token ends it, unless the user
    /// already has `max` connections.
    pub fn register(
        self: &Arc<Self>,
        username: &str,
        kick: CancellationToken,
        max: Option<u32>,
    ) -> Option<Registration> {
        let mut users = self.lock();
        let conns = users.entry(username.to_string()).or_default();
        if max.is_some_and(|m| conns.len() >= m as usize) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, kick);
        Some(Registration {
            registry: self.clone(),
            username: username.to_string(),
            id,
        })
    }

    /// Ends every connection of `username`; returns how many there were.
    pub fn kick(&self, username: &str) -> usize {
        let users = self.lock();
        users.get(username).map_or(0, |conns| {
            for token in conns.values() {
                token.cancel();
            }
            conns.len()
        })
    }

    /// Users with at least one live connection.
    pub fn logged_in(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_kicks() {
        let r = Arc::new(Registry::default());
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let ra = r.register("u", a.clone(), Some(2)).unwrap();
        let _rb = r.register("u", b.clone(), Some(2)).unwrap();
        assert!(r.register("u", CancellationToken::new(), Some(2)).is_none());
        drop(ra);
        let _rc = r.register("u", CancellationToken::new(), Some(2)).unwrap();
        assert_eq!(r.kick("u"), 2);
        assert!(b.is_cancelled());
        assert_eq!(r.kick("nobody"), 0);
    }
}
