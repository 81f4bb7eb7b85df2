//! The upstream breaker. After `TRIP_AFTER` consecutive failures (no answer in time,
//! unreachable, 5xx, 429) the upstream is taken as down for an interval that doubles with
//! each trip in a row (5 s up to 2 min). While it is down npg asks it nothing: packuments are
//! served from their stale copies and misses fail at once with 503. When the interval ends
//! one request is let through as a probe (half-open): its success closes the breaker, its
//! failure opens it again for longer. Trips and recoveries are told to the other replicas
//! (`share`), so a cluster stops asking together instead of each replica paying the timeouts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::cluster::bus::{Bus, Event};
use crate::metrics::Metrics;

/// Consecutive failures that open the breaker.
const TRIP_AFTER: u32 = 3;
const FIRST_INTERVAL: Duration = Duration::from_secs(5);
const MAX_INTERVAL: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// What `/api/health` shows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub(crate) state: State,
    pub(crate) consecutive_failures: u32,
    /// Seconds until a probe may be sent, while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_in_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}

/// Why a request was not sent.
#[derive(Debug, Clone)]
pub(crate) struct Down {
    pub(crate) retry_in: Duration,
    pub(crate) reason: String,
}

/// What a replica tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Tripped { for_ms: u64, reason: String },
    Recovered,
}

#[derive(Default)]
struct Inner {
    failures: u32,
    trips: u32,
    open_until: Option<Instant>,
    probing: bool,
    last_error: Option<String>,
    /// Requests sent and not answered yet, and since when upstream has been silent while
    /// some were waiting (the first was sent, or the last answer came).
    in_flight: u32,
    silent_since: Option<Instant>,
}

impl Inner {
    fn close(&mut self) {
        self.failures = 0;
        self.trips = 0;
        self.open_until = None;
        self.probing = false;
        self.last_error = None;
    }
}

pub(crate) struct Breaker {
    inner: Mutex<Inner>,
    /// Wakes the requests waiting for upstream when the breaker opens.
    trip: tokio::sync::Notify,
    changes: broadcast::Sender<Change>,
    metrics: Arc<Metrics>,
}

/// Leave to send one request; report its outcome with `finish`. A probe dropped without an
/// outcome (its request was cancelled) lets the next request probe.
pub(crate) struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut inner = self.breaker.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if inner.in_flight == 0 {
            inner.silent_since = None;
        }
        if self.probe {
            inner.probing = false;
        }
    }
}

/// What a request tells of upstream's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// It answered.
    Up,
    /// It failed: did not answer, or answered 5xx or 429 (what went wrong, for the logs).
    Down(String),
    /// Nothing: the request was not upstream's own, or was given up as the breaker opened.
    Unknown,
}

impl Ticket<'_> {
    /// Records what the request told of upstream's health.
    pub(crate) fn finish(self, health: Health) {
        if health != Health::Unknown {
            self.breaker.lock().silent_since = Some(Instant::now());
        }
        match health {
            Health::Up => self.breaker.succeeded(),
            Health::Down(error) => self.breaker.failed(error),
            Health::Unknown => {}
        }
    }
}

impl Breaker {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Breaker {
        Breaker {
            inner: Mutex::default(),
            trip: tokio::sync::Notify::new(),
            changes: broadcast::channel(16).0,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("breaker poisoned")
    }

    /// Leave to ask upstream, or why not.
    pub(crate) fn admit(&self) -> Result<Ticket<'_>, Down> {
        let mut inner = self.lock();
        let now = Instant::now();
        let probe = match inner.open_until {
            None => false,
            Some(until) if now >= until && !inner.probing => {
                inner.probing = true;
                self.metrics.set_breaker_state(State::HalfOpen.gauge());
                true
            }
            Some(until) => {
                return Err(Down {
                    retry_in: until.saturating_duration_since(now),
                    reason: inner.last_error.clone().unwrap_or_else(|| "failing".into()),
                });
            }
        };
        inner.in_flight += 1;
        inner.silent_since.get_or_insert(now);
        Ok(Ticket { breaker: self, probe })
    }

    /// How long upstream has answered nothing while requests were waiting for it: a hint
    /// that it hangs, well before the timeouts that open the breaker.
    pub(crate) fn silent_for(&self) -> Duration {
        let inner = self.lock();
        inner.silent_since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Completes when the breaker opens (here or told by another replica).
    pub(crate) fn tripped(&self) -> tokio::sync::futures::Notified<'_> {
        self.trip.notified()
    }

    pub(crate) fn state(&self) -> State {
        let inner = self.lock();
        match inner.open_until {
            None => State::Closed,
            Some(until) if Instant::now() >= until => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    pub(crate) fn status(&self) -> Status {
        let state = self.state();
        let inner = self.lock();
        Status {
            state,
            consecutive_failures: inner.failures,
            retry_in_seconds: inner
                .open_until
                .map(|u| u.saturating_duration_since(Instant::now()).as_secs()),
            last_error: inner.last_error.clone(),
        }
    }

    fn succeeded(&self) {
        let mut inner = self.lock();
        let was_open = inner.open_until.is_some();
        inner.failures = 0;
        if !was_open {
            return;
        }
        inner.close();
        drop(inner);
        tracing::info!("upstream answers again: breaker closed");
        self.metrics.set_breaker_state(State::Closed.gauge());
        let _ = self.changes.send(Change::Recovered);
    }

    fn failed(&self, error: String) {
        let mut inner = self.lock();
        inner.failures += 1;
        inner.last_error = Some(error.clone());
        // A probe's failure reopens at once; while open, late failures of requests sent
        // before the trip change nothing.
        let reopen = inner.probing;
        if !(reopen || (inner.open_until.is_none() && inner.failures >= TRIP_AFTER)) {
            return;
        }
        let interval = FIRST_INTERVAL
            .saturating_mul(1 << inner.trips.min(10))
            .min(MAX_INTERVAL);
        inner.trips += 1;
        inner.probing = false;
        inner.open_until = Some(Instant::now() + interval);
        drop(inner);
        self.opened(interval, &error, "this replica");
        let for_ms = interval.as_millis() as u64;
        let _ = self.changes.send(Change::Tripped { for_ms, reason: error });
    }

    fn opened(&self, interval: Duration, error: &str, by: &str) {
        tracing::warn!(?interval, %error, by, "upstream down: breaker open; stale copies served, misses refused");
        self.trip.notify_waiters();
        self.metrics.set_breaker_state(State::Open.gauge());
        self.metrics.breaker_trip();
    }

    /// Another replica found upstream down: stop asking for the interval it chose, unless
    /// this replica already waits longer.
    pub(crate) fn tripped_elsewhere(&self, for_ms: u64, reason: String) {
        let until = Instant::now() + Duration::from_millis(for_ms).min(MAX_INTERVAL);
        let mut inner = self.lock();
        if inner.open_until.is_some_and(|u| u >= until) {
            return;
        }
        inner.open_until = Some(until);
        inner.trips = inner.trips.max(1);
        inner.last_error = Some(reason.clone());
        drop(inner);
        self.opened(Duration::from_millis(for_ms), &reason, "another replica");
    }

    /// Another replica's probe succeeded: ask again.
    pub(crate) fn recovered_elsewhere(&self) {
        let mut inner = self.lock();
        if inner.open_until.is_none() {
            return;
        }
        inner.close();
        drop(inner);
        tracing::info!("upstream answers again (seen by another replica): breaker closed");
        self.metrics.set_breaker_state(State::Closed.gauge());
    }

    /// This replica's trips and recoveries, to tell the others.
    pub(crate) fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// Tells the other replicas about this replica's trips and recoveries, and applies theirs.
pub(crate) async fn share(breaker: Arc<Breaker>, bus: Arc<Bus>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut ours = breaker.changes();
    let mut theirs = bus.subscribe();
    loop {
        tokio::select! {
            change = ours.recv() => match change {
                Ok(Change::Tripped { for_ms, reason }) => bus.publish(Event::UpstreamDown { for_ms, reason }).await,
                Ok(Change::Recovered) => bus.publish(Event::UpstreamUp).await,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            event = theirs.recv() => match event {
                Ok(Event::UpstreamDown { for_ms, reason }) => breaker.tripped_elsewhere(for_ms, reason),
                Ok(Event::UpstreamUp) => breaker.recovered_elsewhere(),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &Breaker) {
        b.admit().expect("admitted").finish(Health::Down("timeout".into()));
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets() {
        let b = Breaker::new(Arc::default());
        fail(&b);
        fail(&b);
        b.admit().unwrap().finish(Health::Up);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Closed, "failures must be consecutive");
        let mut changes = b.changes();
        fail(&b);
        assert_eq!(b.state(), State::Open);
        let down = b.admit().err().expect("no request while open");
        assert!(down.retry_in > Duration::from_secs(4) && down.retry_in <= FIRST_INTERVAL);
        assert_eq!(down.reason, "timeout");
        assert!(matches!(changes.try_recv(), Ok(Change::Tripped { for_ms: 5000, .. })));
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let b = Breaker::new(Arc::default());
        for _ in 0..TRIP_AFTER {
            fail(&b);
        }
        b.lock().open_until = Some(Instant::now());
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.admit().expect("one probe");
        assert!(b.admit().is_err(), "only one probe at a time");
        drop(probe);
        let probe = b.admit().expect("a cancelled probe lets another through");
        probe.finish(Health::Down("still hanging".into()));
        let down = b.admit().err().expect("reopened");
        assert!(
            down.retry_in > FIRST_INTERVAL,
            "the interval grows: {:?}",
            down.retry_in
        );
        b.lock().open_until = Some(Instant::now());
        let mut changes = b.changes();
        b.admit().unwrap().finish(Health::Up);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(changes.try_recv().ok(), Some(Change::Recovered));
        assert_eq!(b.status().consecutive_failures, 0);
    }

    #[test]
    fn follows_other_replicas() {
        let b = Breaker::new(Arc::default());
        b.tripped_elsewhere(10_000, "hangs".into());
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit().err().unwrap().reason, "hangs");
        b.recovered_elsewhere();
        assert_eq!(b.state(), State::Closed);
        assert!(b.admit().is_ok());
    }

    #[tokio::test]
    async fn a_trip_wakes_the_requests_waiting_for_upstream() {
        let b = Arc::new(Breaker::new(Arc::default()));
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.tripped().await })
        };
        tokio::task::yield_now().await;
        for _ in 0..TRIP_AFTER {
            fail(&b);
        }
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the trip")
            .unwrap();
    }

    #[test]
    fn silence_counts_while_requests_wait_without_answers() {
        let b = Breaker::new(Arc::default());
        assert_eq!(b.silent_for(), Duration::ZERO, "nothing waits");
        let first = b.admit().unwrap();
        b.lock().silent_since = Some(Instant::now() - Duration::from_secs(1));
        let second = b.admit().unwrap();
        assert!(
            b.silent_for() >= Duration::from_secs(1),
            "the first request still waits"
        );
        second.finish(Health::Up);
        assert!(b.silent_for() < Duration::from_secs(1), "an answer ends the silence");
        drop(first);
        assert_eq!(b.silent_for(), Duration::ZERO);
    }
}
