//! Waiting after a failure, for every job that retries (changes follower, malware feed, ACME,
//! the bus subscription): exponential, capped, with jitter so the replicas of a cluster and
//! their retries do not march in step. And the randomness that tells holders apart.

use std::time::Duration;

/// Doubles from `first` up to `cap` on every failure; `reset` after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration) -> Backoff {
        let first = first.min(cap);
        Backoff {
            first,
            cap,
            current: first,
        }
    }

    /// How long to wait after this failure (between half and all of the current step).
    pub(crate) fn after_failure(&mut self) -> Duration {
        let wait = jittered(self.current);
        self.current = self.current.saturating_mul(2).min(self.cap);
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.first;
    }
}

/// Between half and all of `d`.
pub(crate) fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_millis(random_u64() % ms)
}

/// A fraction in [0, 1], for a time picked at random in a window.
pub(crate) fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Random enough to tell holders apart and spread retries (std's per-process SipHash keys come
/// from the OS; a counter and the time make every call differ).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_cap_with_jitter_and_resets() {
        let cap = Duration::from_secs(60);
        let mut b = Backoff::new(Duration::from_secs(1), cap);
        let first = b.after_failure();
        assert!(
            first >= Duration::from_millis(500) && first <= Duration::from_secs(1),
            "{first:?}"
        );
        for _ in 0..6 {
            b.after_failure();
        }
        for _ in 0..20 {
            let d = b.after_failure();
            assert!(d >= cap / 2 && d <= cap, "{d:?}");
        }
        b.reset();
        assert!(b.after_failure() <= Duration::from_secs(1));
    }

    #[test]
    fn a_first_step_over_the_cap_is_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(10));
        assert!(b.after_failure() <= Duration::from_secs(10));
    }

    #[test]
    fn fractions_stay_in_range() {
        for _ in 0..1000 {
            let f = random_fraction();
            assert!((0.0..=1.0).contains(&f), "{f}");
        }
    }
}
