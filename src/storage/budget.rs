//! A global memory budget for transfer buffers, shared by every upload and download.
//!
//! Buffers are reserved before they are filled; when the budget is spent, the reservation
//! waits, which makes the front end's WRITE/READ replies wait instead of buffering more.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are counted in KiB so that a `u32` covers budgets far beyond any machine.
const UNIT: u64 = 1024;

/// Permits for `bytes`: whole units, at least one.
fn units_of(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT).max(1)
}

/// The shared pool of transfer-buffer bytes.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total_units: u32,
}

/// A reservation of buffer bytes; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Whether this reservation pays for a buffer of `bytes`.
    pub fn covers(&self, bytes: u64) -> bool {
        match &self._permit {
            Some(permit) => permit.num_permits() as u64 >= units_of(bytes),
            None => true,
        }
    }

    /// Gives back everything above `bytes` (the buffer turned out smaller than reserved).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = usize::try_from(units_of(bytes)).unwrap_or(usize::MAX);
        if let Some(permit) = self._permit.as_mut() {
            let held = permit.num_permits();
            if held > keep {
                drop(permit.split(held - keep));
            }
        }
    }
}

impl MemoryBudget {
    pub fn new(total_bytes: u64) -> Self {
        let total_units = u32::try_from(units_of(total_bytes)).unwrap_or(u32::MAX >> 4);
        MemoryBudget {
            semaphore: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Reserves `bytes`, waiting while the budget is spent. A request larger than the whole
    /// budget is clamped to it, so it waits for everything else to finish instead of forever.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = self.units(bytes);
        let permit = self.semaphore.clone().acquire_many_owned(units).await.ok();
        Reservation { _permit: permit }
    }

    /// Reserves `bytes` only if that is possible right now.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let units = self.units(bytes);
        self.semaphore
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(|p| Reservation { _permit: Some(p) })
    }

    /// Bytes currently reserved.
    pub fn in_use(&self) -> u64 {
        let free = self.semaphore.available_permits() as u64;
        (u64::from(self.total_units).saturating_sub(free)) * UNIT
    }

    fn units(&self, bytes: u64) -> u32 {
        u32::try_from(units_of(bytes))
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_until_released() {
        let budget = MemoryBudget::new(10 * 1024);
        let a = budget.reserve(6 * 1024).await;
        assert_eq!(budget.in_use(), 6 * 1024);
        assert!(budget.try_reserve(6 * 1024).is_none());
        drop(a);
        assert!(budget.try_reserve(6 * 1024).is_some());
        let mut c = budget.reserve(4 * 1024).await;
        c.shrink_to(1);
        assert_eq!(budget.in_use(), 1024);
        drop(c);
        // Larger than the whole budget: clamped, not stuck forever.
        let big = budget.reserve(1 << 30).await;
        assert_eq!(budget.in_use(), 10 * 1024);
        drop(big);
        assert_eq!(budget.in_use(), 0);
    }
}
