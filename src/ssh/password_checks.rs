//! A bounded number of password checks at once, on threads of their own.
//!
//! One argon2id check at the OWASP settings takes 19 MiB for tens of milliseconds: 100
//! concurrent wrong passwords cost 1.5 GB if they all run at once. Capping how many run
//! at once is not enough by itself: run on tokio's blocking pool, each check may land on
//! another thread, and the allocator keeps a freed 19 MiB block in every thread's arena
//! (100 checks, two at a time, still left 1 GB resident). So the checks run on a fixed set
//! of worker threads, one check per thread at a time; the rest wait in a queue (each
//! connection's auth deadline still applies, and a connection that is cut while waiting
//! is skipped). Memory stays at `workers x` one hash's cost whatever the number of
//! attackers.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::users::{verify_password_or_dummy, User};

/// Password checks running at once by default: one per core, at most 4 (76 MiB of argon2
/// memory at the OWASP settings).
pub fn default_password_checks() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// One queued check.
struct Job {
    user: Option<User>,
    password: String,
    /// Cancelled if the connection that asked was cut: the check is skipped.
    cancelled: CancellationToken,
    reply: oneshot::Sender<bool>,
}

/// The queue of password checks, shared by every connection. The worker threads end when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PasswordChecks {
    /// `None`: no worker thread could be started; checks then run on the blocking pool.
    queue: Option<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl PasswordChecks {
    /// Starts `workers` (at least 1) threads that check passwords, one at a time each.
    pub fn new(workers: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("s3sftp-password-{n}"))
                .spawn(move || work(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!("cannot start a password check thread: {e}"),
            }
        }
        PasswordChecks {
            queue: (started > 0).then_some(tx),
        }
    }

    /// Whether `password` is `user`'s (see [`verify_password_or_dummy`]), once a worker
    /// is free. False if `cancelled` fires first (the connection was cut while it waited).
    pub async fn verify(
        &self,
        user: Option<User>,
        password: String,
        cancelled: &CancellationToken,
    ) -> bool {
        let Some(queue) = &self.queue else {
            return tokio::task::spawn_blocking(move || {
                verify_password_or_dummy(user.as_ref(), &password)
            })
            .await
            .unwrap_or(false);
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            user,
            password,
            cancelled: cancelled.clone(),
            reply,
        };
        if queue.send(job).is_err() {
            return false;
        }
        tokio::select! {
            answer = answer => answer.unwrap_or(false),
            _ = cancelled.cancelled() => false,
        }
    }
}

/// A worker thread: checks queued passwords until every sender is gone.
fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let rx = match queue.lock() {
                Ok(rx) => rx,
                Err(poisoned) => poisoned.into_inner(),
            };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if job.cancelled.is_cancelled() || job.reply.is_closed() {
            continue;
        }
        let ok = verify_password_or_dummy(job.user.as_ref(), &job.password);
        let _ = job.reply.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_check_is_skipped_and_others_are_answered() {
        let checks = PasswordChecks::new(1);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!checks.verify(None, "x".into(), &cancel).await);
        assert!(
            !checks
                .verify(None, "x".into(), &CancellationToken::new())
                .await
        );
    }
}
