//! Wall-clock time as npg stores it: unix milliseconds (Redis fields, health, feeds) and
//! seconds (certificates).

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in unix milliseconds (0 before the epoch).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Now, in unix seconds.
pub(crate) fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}
