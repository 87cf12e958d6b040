//! Whether this gateway should get new clients: S3 answered a real request recently, and
//! the server is not draining. A background task probes S3 (probes from a load balancer
//! never reach S3 themselves, so a flood of them costs nothing), with a request a
//! least-privilege policy allows: a one-key listing under a user's prefix, not HeadBucket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::storage::Storage;

/// The readiness state shared by the prober, the shutdown sequence and `/readyz`.
#[derive(Debug)]
pub struct Readiness {
    /// When a probe last succeeded.
    last_ok: Mutex<Option<Instant>>,
    draining: AtomicBool,
    /// How old the last success may be for the server to count as ready.
    max_age: Duration,
}

impl Readiness {
    /// Ready while a probe succeeded within `max_age`.
    pub fn new(max_age: Duration) -> Arc<Self> {
        Arc::new(Readiness {
            last_ok: Mutex::new(None),
            draining: AtomicBool::new(false),
            max_age,
        })
    }

    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.last_ok().is_some_and(|t| t.elapsed() <= self.max_age)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Shutdown has begun: not ready any more, whatever S3 says.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Why the server is not ready, for the `/readyz` body.
    pub fn reason(&self) -> &'static str {
        if self.is_draining() {
            "draining"
        } else if self.last_ok().is_none() {
            "S3 has not answered yet"
        } else if !self.is_ready() {
            "S3 has not answered recently"
        } else {
            "ready"
        }
    }

    fn last_ok(&self) -> Option<Instant> {
        match self.last_ok.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn record_ok(&self) {
        let now = Some(Instant::now());
        match self.last_ok.lock() {
            Ok(mut guard) => *guard = now,
            Err(poisoned) => *poisoned.into_inner() = now,
        }
    }

    /// Probes S3 every `every` until `stop`: a listing of one key under `prefix`.
    pub async fn probe_loop(
        self: Arc<Self>,
        storage: Arc<Storage>,
        prefix: String,
        every: Duration,
        stop: CancellationToken,
    ) {
        let store = storage.user_store(&prefix);
        let mut failing = false;
        loop {
            match store.first_keys(&prefix, 1).await {
                Ok(_) => {
                    if failing {
                        tracing::info!("S3 answers again: ready");
                    }
                    failing = false;
                    self.record_ok();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("S3 readiness probe failed: {e}");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_a_recent_success_and_until_draining() {
        let r = Readiness::new(Duration::from_secs(60));
        assert!(!r.is_ready());
        assert_eq!(r.reason(), "S3 has not answered yet");
        r.record_ok();
        assert!(r.is_ready());
        r.set_draining();
        assert!(!r.is_ready());
        assert_eq!(r.reason(), "draining");
    }

    #[test]
    fn an_old_success_does_not_count() {
        let r = Readiness::new(Duration::ZERO);
        r.record_ok();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!r.is_ready());
        assert_eq!(r.reason(), "S3 has not answered recently");
    }
}
