//! The last hour of this replica's traffic, kept in process: the running totals sampled every
//! `STEP`, from which the status page draws its charts (no external store needed).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, TIERS, Totals};

/// How often the totals are sampled.
pub(crate) const STEP: Duration = Duration::from_secs(10);
/// An hour of steps, and the sample before the first.
const KEEP: usize = 361;

/// Samples of the running totals, oldest first.
#[derive(Default)]
pub(crate) struct History(Mutex<VecDeque<(u64, Totals)>>);

/// What the charts show, one point per step, oldest first; `None` where nothing happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Series {
    pub(crate) step_seconds: u64,
    pub(crate) requests_per_second: Vec<f64>,
    /// Hit ratio (0..1) per tier of `TIERS`, for the tiers that saw a lookup.
    pub(crate) hit_ratio: Vec<TierSeries>,
    /// Mean upstream latency in milliseconds.
    pub(crate) upstream_ms: Vec<Option<f64>>,
    pub(crate) upstream_errors: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TierSeries {
    pub(crate) tier: String,
    pub(crate) points: Vec<Option<f64>>,
}

impl History {
    pub(crate) fn record(&self, at_ms: u64, totals: Totals) {
        let mut samples = self.0.lock().expect("history poisoned");
        samples.push_back((at_ms, totals));
        while samples.len() > KEEP {
            samples.pop_front();
        }
    }

    /// Samples every `STEP` (the job `app` starts), the first at once.
    pub(crate) async fn run(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.record(crate::clock::now_ms(), metrics.totals());
        }
    }

    /// The charts' points between consecutive samples, the last one against `now` (so the
    /// newest step is never missing).
    pub(crate) fn series(&self, now_ms: u64, now: &Totals) -> Series {
        let samples = self.0.lock().expect("history poisoned");
        let mut points: Vec<(u64, &Totals)> = samples.iter().map(|(at, t)| (*at, t)).collect();
        if points.last().is_some_and(|(at, _)| now_ms > *at) {
            points.push((now_ms, now));
        }
        let mut series = Series {
            step_seconds: STEP.as_secs(),
            ..Series::default()
        };
        let mut tiers = vec![Vec::new(); TIERS.len()];
        for pair in points.windows(2) {
            let ((t0, a), (t1, b)) = (pair[0], pair[1]);
            let seconds = (t1.saturating_sub(t0) as f64 / 1000.0).max(0.001);
            series
                .requests_per_second
                .push(b.requests.saturating_sub(a.requests) as f64 / seconds);
            for (i, points) in tiers.iter_mut().enumerate() {
                let hits = b.cache[i][0].saturating_sub(a.cache[i][0]);
                let misses = b.cache[i][1].saturating_sub(a.cache[i][1]);
                points.push(ratio(hits, hits + misses));
            }
            let asked = b.upstream_requests.saturating_sub(a.upstream_requests);
            let spent = (b.upstream_seconds - a.upstream_seconds).max(0.0);
            series
                .upstream_ms
                .push((asked > 0).then(|| spent * 1000.0 / asked as f64));
            series
                .upstream_errors
                .push(b.upstream_errors.saturating_sub(a.upstream_errors));
        }
        series.hit_ratio = TIERS
            .iter()
            .zip(tiers)
            .filter(|(_, points)| points.iter().any(Option::is_some))
            .map(|(tier, points)| TierSeries {
                tier: tier.to_string(),
                points,
            })
            .collect();
        series
    }

    /// Requests per second over the last minute (the replicas' table).
    pub(crate) fn recent_rate(&self, now_ms: u64, now: &Totals) -> f64 {
        let samples = self.0.lock().expect("history poisoned");
        let minute_ago = now_ms.saturating_sub(60_000);
        let Some((at, then)) = samples.iter().find(|(at, _)| *at >= minute_ago).or(samples.back()) else {
            return 0.0;
        };
        let seconds = now_ms.saturating_sub(*at) as f64 / 1000.0;
        if seconds < 1.0 {
            return 0.0;
        }
        now.requests.saturating_sub(then.requests) as f64 / seconds
    }
}

/// `part / whole`, none of nothing.
pub(crate) fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, l1: [u64; 2], upstream: (u64, u64, f64)) -> Totals {
        let mut t = Totals {
            requests,
            upstream_requests: upstream.0,
            upstream_errors: upstream.1,
            upstream_seconds: upstream.2,
            ..Totals::default()
        };
        t.cache[0] = l1;
        t
    }

    #[test]
    fn series_are_the_differences_between_samples() {
        let h = History::default();
        h.record(0, totals(0, [0, 0], (0, 0, 0.0)));
        h.record(10_000, totals(100, [30, 10], (4, 1, 0.2)));
        let now = totals(150, [30, 10], (4, 1, 0.2));
        let s = h.series(20_000, &now);
        assert_eq!(s.requests_per_second, vec![10.0, 5.0]);
        assert_eq!(s.hit_ratio.len(), 1, "only the tier that saw lookups: {s:?}");
        assert_eq!(s.hit_ratio[0].tier, "l1");
        assert_eq!(s.hit_ratio[0].points, vec![Some(0.75), None]);
        assert_eq!(s.upstream_ms[0].map(|ms| ms.round()), Some(50.0));
        assert_eq!(s.upstream_ms[1], None);
        assert_eq!(s.upstream_errors, vec![1, 0]);
        assert_eq!(h.recent_rate(20_000, &now), 7.5);
    }

    #[test]
    fn an_hour_is_kept() {
        let h = History::default();
        for i in 0..1000u64 {
            h.record(i * 10_000, totals(i, [0, 0], (0, 0, 0.0)));
        }
        let s = h.series(999 * 10_000, &totals(999, [0, 0], (0, 0, 0.0)));
        assert_eq!(s.requests_per_second.len(), KEEP - 1);
        assert!(s.requests_per_second.iter().all(|r| (*r - 0.1).abs() < 1e-9));
    }
}
