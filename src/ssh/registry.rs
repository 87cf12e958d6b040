//! Who is logged in right now: per user, the live connections, each with a token that
//! ends it and its [`Activity`] (session id, peer, counters). Used for `max_sessions`, to
//! close the sessions of a user whose account changed in the users file, and by the
//! control socket (`s3sftp sessions`, `s3sftp kick`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::activity::{Activity, SessionView};

#[derive(Debug)]
struct Entry {
    /// Cancelled when the user's account changes.
    kick: CancellationToken,
    activity: Arc<Activity>,
}

#[derive(Debug, Default)]
pub struct Registry {
    users: Mutex<HashMap<String, HashMap<u64, Entry>>>,
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
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<u64, Entry>>> {
        match self.users.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers the connection `activity` of its user, whose `kick` token ends it,
    /// unless the user already has `max` connections.
    pub fn register(
        self: &Arc<Self>,
        activity: Arc<Activity>,
        kick: CancellationToken,
        max: Option<u32>,
    ) -> Option<Registration> {
        let mut users = self.lock();
        let username = activity.user.clone();
        let conns = users.entry(username.clone()).or_default();
        if max.is_some_and(|m| conns.len() >= m as usize) {
            return None;
        }
        let id = activity.id;
        conns.insert(id, Entry { kick, activity });
        Some(Registration {
            registry: self.clone(),
            username,
            id,
        })
    }

    /// Ends every connection of `username` because the account changed; returns how many
    /// there were.
    pub fn kick(&self, username: &str) -> usize {
        let users = self.lock();
        users.get(username).map_or(0, |conns| {
            for entry in conns.values() {
                entry.kick.cancel();
            }
            conns.len()
        })
    }

    /// Ends every connection of `username` at an admin's request; returns their session
    /// ids.
    pub fn admin_kick_user(&self, username: &str) -> Vec<u64> {
        let users = self.lock();
        let mut ids: Vec<u64> = users.get(username).map_or_else(Vec::new, |conns| {
            conns
                .values()
                .map(|e| {
                    e.activity.kick();
                    e.activity.id
                })
                .collect()
        });
        ids.sort_unstable();
        ids
    }

    /// Ends the connection with session id `id` at an admin's request; returns its user,
    /// or `None` if no logged-in connection has that id.
    pub fn admin_kick_session(&self, id: u64) -> Option<String> {
        let users = self.lock();
        users.values().find_map(|conns| {
            conns.get(&id).map(|e| {
                e.activity.kick();
                e.activity.user.clone()
            })
        })
    }

    /// Users with at least one live connection.
    pub fn logged_in(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Every logged-in connection, by session id.
    pub fn sessions(&self) -> Vec<SessionView> {
        let activities: Vec<Arc<Activity>> = self
            .lock()
            .values()
            .flat_map(|conns| conns.values().map(|e| e.activity.clone()))
            .collect();
        // Read the counters outside the registry lock.
        let mut views: Vec<SessionView> = activities.iter().map(|a| a.view()).collect();
        views.sort_by_key(|v| v.id);
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(id: u64, user: &str) -> (Arc<Activity>, CancellationToken) {
        let admin = CancellationToken::new();
        (Activity::new(id, user, None, admin.clone()), admin)
    }

    #[test]
    fn limits_and_kicks() {
        let r = Arc::new(Registry::default());
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let ra = r.register(activity(1, "u").0, a.clone(), Some(2)).unwrap();
        let _rb = r.register(activity(2, "u").0, b.clone(), Some(2)).unwrap();
        assert!(r
            .register(activity(3, "u").0, CancellationToken::new(), Some(2))
            .is_none());
        drop(ra);
        let _rc = r
            .register(activity(4, "u").0, CancellationToken::new(), Some(2))
            .unwrap();
        assert_eq!(r.kick("u"), 2);
        assert!(b.is_cancelled());
        assert_eq!(r.kick("nobody"), 0);
    }

    #[test]
    fn admin_kicks_by_user_or_session() {
        let r = Arc::new(Registry::default());
        let (a1, k1) = activity(1, "alice");
        let (a2, k2) = activity(2, "alice");
        let (b3, k3) = activity(3, "bob");
        let _g: Vec<_> = [a1, a2, b3]
            .into_iter()
            .map(|a| r.register(a, CancellationToken::new(), None).unwrap())
            .collect();
        assert_eq!(
            r.sessions().iter().map(|s| s.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(r.admin_kick_session(3).as_deref(), Some("bob"));
        assert!(k3.is_cancelled() && !k1.is_cancelled());
        assert_eq!(r.admin_kick_session(9), None);
        assert_eq!(r.admin_kick_user("alice"), [1, 2]);
        assert!(k1.is_cancelled() && k2.is_cancelled());
        assert!(r.admin_kick_user("carol").is_empty());
    }
}
