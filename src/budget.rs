//! The memory budget of documents in flight: every packument being read (decoded) or
//! rendered holds a reservation of the budget, grown as its bytes arrive, so a few gzip bombs
//! or huge documents at once cannot take the process past `RENDER_MEMORY_MB`. A document
//! that would need more than the whole budget is refused at once; one that waits too long for
//! others to finish is refused too. Waiting holds nothing, so readers never deadlock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations grow in steps of this, so a read is not one semaphore trip per chunk.
const STEP: usize = 1 << 20;

/// How long a reservation waits for room before its document is refused.
const WAIT: Duration = Duration::from_secs(20);

/// What rendering costs beyond the decoded document (the two forms and their gzip).
pub(crate) const RENDER_FACTOR: usize = 3;

pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    /// The whole budget, in KiB (one permit each).
    total_kib: usize,
    wait: Duration,
}

impl Budget {
    pub(crate) fn new(total_bytes: u64) -> Budget {
        Budget::with_wait(total_bytes, WAIT)
    }

    fn with_wait(total_bytes: u64, wait: Duration) -> Budget {
        let total_kib = (total_bytes >> 10).clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        Budget {
            permits: Arc::new(Semaphore::new(total_kib)),
            total_kib,
            wait,
        }
    }

    /// An empty reservation, grown by its holder.
    pub(crate) fn reserve(&self) -> Reservation {
        Reservation {
            permits: self.permits.clone(),
            held: None,
            held_kib: 0,
            total_kib: self.total_kib,
            wait: self.wait,
        }
    }
}

/// Why a reservation could not grow: the document can never fit (`TooLarge`, the document's
/// fault), or others hold the budget now (`Busy`, npg's load: worth a retry).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BudgetError {
    #[error("needs {needs_mib} MiB, more than the whole RENDER_MEMORY_MB budget ({total_mib} MiB)")]
    TooLarge { needs_mib: usize, total_mib: usize },
    #[error("no room in the memory budget within {0:?}")]
    Busy(Duration),
}

/// Part of the budget, given back when dropped.
pub(crate) struct Reservation {
    permits: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    held_kib: usize,
    total_kib: usize,
    wait: Duration,
}

impl Reservation {
    /// Holds at least `bytes` of the budget, waiting (bounded) for other documents to finish.
    pub(crate) async fn grow_to(&mut self, bytes: usize) -> Result<(), BudgetError> {
        let want_kib = bytes.div_ceil(STEP) * (STEP >> 10);
        if want_kib <= self.held_kib {
            return Ok(());
        }
        if want_kib > self.total_kib {
            return Err(BudgetError::TooLarge {
                needs_mib: want_kib >> 10,
                total_mib: self.total_kib >> 10,
            });
        }
        let more = (want_kib - self.held_kib) as u32;
        if let Ok(permit) = self.permits.clone().try_acquire_many_owned(more) {
            match self.held.as_mut() {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
            self.held_kib = want_kib;
            return Ok(());
        }
        // No room: give back what is held and wait for the whole amount, so no two readers
        // ever wait for each other while holding part of the budget. While it waits, this
        // document's bytes are not counted: memory stays below twice the budget.
        self.held = None;
        self.held_kib = 0;
        let acquired = tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(want_kib as u32)).await;
        match acquired {
            Ok(Ok(permit)) => {
                self.held = Some(permit);
                self.held_kib = want_kib;
                Ok(())
            }
            // The semaphore is never closed: an error can only be the wait running out.
            Ok(Err(_)) | Err(_) => Err(BudgetError::Busy(self.wait)),
        }
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held_kib << 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_total_and_given_back() {
        let budget = Budget::with_wait(8 << 20, Duration::from_millis(50));
        let mut a = budget.reserve();
        a.grow_to(5 << 20).await.unwrap();
        assert_eq!(a.held_bytes(), 5 << 20);
        a.grow_to(100).await.unwrap();
        assert_eq!(a.held_bytes(), 5 << 20, "never shrinks while held");
        let mut b = budget.reserve();
        b.grow_to(2 << 20).await.unwrap();
        assert!(matches!(b.grow_to(4 << 20).await.unwrap_err(), BudgetError::Busy(_)));
        assert_eq!(b.held_bytes(), 0, "waiting gave back what it held");
        b.grow_to(3 << 20).await.unwrap();
        drop(a);
        b.grow_to(8 << 20).await.unwrap();
        assert!(matches!(
            budget.reserve().grow_to(9 << 20).await.unwrap_err(),
            BudgetError::TooLarge {
                needs_mib: 9,
                total_mib: 8
            }
        ));
    }

    #[tokio::test]
    async fn growing_readers_never_wait_for_each_other() {
        let budget = Budget::with_wait(8 << 20, Duration::from_secs(5));
        let (mut a, mut b) = (budget.reserve(), budget.reserve());
        a.grow_to(4 << 20).await.unwrap();
        b.grow_to(4 << 20).await.unwrap();
        // Both want 6 MiB: with hold-and-wait neither would ever get it.
        let grow_b = async {
            b.grow_to(6 << 20).await.unwrap();
            drop(b);
        };
        let grow_a = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.grow_to(6 << 20).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(grow_a, grow_b) })
            .await
            .expect("no deadlock");
    }
}
