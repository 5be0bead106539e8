//! A byte budget for the host tier: the KV of the sequences of one pipeline may not grow
//! past it. Each sequence holds a [`HostReservation`] that grows with its KV and gives its
//! bytes back when dropped, so a removed sequence leaks nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::CacheError;

/// Host bytes shared by reservations, at most `capacity` in use.
#[derive(Debug)]
pub struct HostBudget {
    capacity: usize,
    used: AtomicUsize,
}

/// Bytes of a [`HostBudget`] held by one sequence; returned when dropped.
#[derive(Debug)]
pub struct HostReservation {
    budget: Arc<HostBudget>,
    bytes: usize,
}

impl HostBudget {
    /// A budget of `capacity` bytes, none in use.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { capacity, used: AtomicUsize::new(0) })
    }

    /// Bytes held by every reservation.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// An empty reservation.
    pub fn reserve(self: &Arc<Self>) -> HostReservation {
        HostReservation { budget: Arc::clone(self), bytes: 0 }
    }
}

impl HostReservation {
    /// Takes `bytes` more, or fails with [`CacheError::HostFull`] and takes nothing.
    pub fn grow(&mut self, bytes: usize) -> Result<(), CacheError> {
        let budget = &self.budget;
        budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= budget.capacity)
            })
            .map_err(|used| CacheError::HostFull { needed: bytes, used, capacity: budget.capacity })?;
        self.bytes += bytes;
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for HostReservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_budget_refuses_and_dropping_gives_back() {
        let budget = HostBudget::new(100);
        let mut a = budget.reserve();
        let mut b = budget.reserve();
        a.grow(60).unwrap();
        let err = b.grow(50).unwrap_err();
        assert_eq!(err, CacheError::HostFull { needed: 50, used: 60, capacity: 100 });
        assert_eq!((b.bytes(), budget.used()), (0, 60));
        b.grow(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
