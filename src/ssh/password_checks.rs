//! A bounded number of password checks at once.
//!
//! One argon2id check at the OWASP settings takes 19 MiB for tens of milliseconds: 100
//! concurrent wrong passwords cost 1.5 GB if they all run at once. Checks take a permit
//! first; the rest wait their turn (each connection's auth deadline still applies), so
//! memory stays at `permits x` one hash's cost whatever the number of attackers.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::users::{verify_password_or_dummy, User};

/// Password checks running at once by default: one per core, at most 4 (76 MiB of argon2
/// memory at the OWASP settings).
pub fn default_password_checks() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// The permits for password checks, shared by every connection.
#[derive(Debug, Clone)]
pub struct PasswordChecks {
    permits: Arc<Semaphore>,
}

impl PasswordChecks {
    /// At most `at_once` checks run at the same time (at least 1).
    pub fn new(at_once: usize) -> Self {
        PasswordChecks {
            permits: Arc::new(Semaphore::new(at_once.max(1))),
        }
    }

    /// Whether `password` is `user`'s (see [`verify_password_or_dummy`]), once a permit is
    /// free. False if `cancelled` fires first (the connection was cut while it waited).
    pub async fn verify(
        &self,
        user: Option<User>,
        password: String,
        cancelled: &CancellationToken,
    ) -> bool {
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return false,
            },
            _ = cancelled.cancelled() => return false,
        };
        // The permit moves into the check: it is held until the hash is done, even if the
        // connection that asked for it is gone.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_password_or_dummy(user.as_ref(), &password)
        })
        .await
        .unwrap_or(false)
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_wait_gives_up_and_checks_release_their_permit() {
        let checks = PasswordChecks::new(1);
        let held = checks.permits.clone().acquire_owned().await.unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!checks.verify(None, "x".into(), &cancel).await);
        drop(held);
        assert!(
            !checks
                .verify(None, "x".into(), &CancellationToken::new())
                .await
        );
        assert_eq!(checks.available(), 1, "the permit came back");
    }
}
