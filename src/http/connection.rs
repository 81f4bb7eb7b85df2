//! Deadlines of one client connection. A connection must bring its first request head within
//! `head` (a silent socket, 23 bytes of an HTTP/2 preface, a TLS handshake followed by
//! nothing), and may then sit without a request in flight for at most `idle`. Both are judged
//! from what the connection's service sees, so they hold for HTTP/1.1 and HTTP/2, plain and
//! over TLS, including the protocol sniff that hyper's own header timeout does not cover.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Response;
use http_body_util::BodyExt;

/// How often a connection's deadlines are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The deadlines, from settings.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Until the first request head is complete.
    pub head: Duration,
    /// Without any request in flight, after the first.
    pub idle: Duration,
}

/// What a connection's service has seen: requests started and responses still being sent.
pub struct Activity {
    started: Instant,
    seen_request: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` of the last request start or response end.
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            seen_request: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A request head arrived; the returned guard ends it when the response body is done
    /// (or dropped), so a long download never counts as idle.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.seen_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// The deadline this connection has overrun, if any.
    fn overrun(&self, deadlines: Deadlines) -> Option<&'static str> {
        if !self.seen_request.load(Ordering::Relaxed) {
            return (self.started.elapsed() > deadlines.head).then_some("head");
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle_ms = (self.started.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(Ordering::Relaxed));
        (idle_ms > deadlines.idle.as_millis() as u64).then_some("idle")
    }
}

/// One request in flight; ends on drop.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// `resp` with `guard` held until its body has been sent or dropped.
pub fn hold_until_sent(resp: Response<Body>, guard: InFlight) -> Response<Body> {
    resp.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &guard;
            frame
        }))
    })
}

/// Runs `conn` until it ends or overruns a deadline (then it is dropped, closing the socket).
/// Returns the deadline that ended it, if one did.
pub async fn run_within<F: Future>(conn: F, activity: &Activity, deadlines: Deadlines) -> Option<&'static str> {
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = &mut conn => return None,
            _ = tick.tick() => {
                if let Some(which) = activity.overrun(deadlines) {
                    return Some(which);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Deadlines = Deadlines {
        head: Duration::from_millis(40),
        idle: Duration::from_millis(40),
    };

    #[tokio::test]
    async fn silence_overruns_the_head_deadline() {
        let a = Activity::new();
        assert_eq!(a.overrun(D), None);
        let ended = run_within(std::future::pending::<()>(), &a, D).await;
        assert_eq!(ended, Some("head"));
    }

    #[tokio::test]
    async fn a_request_in_flight_is_never_idle() {
        let a = Activity::new();
        let guard = a.begin();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.overrun(D), None, "a long response is not idleness");
        drop(guard);
        assert_eq!(a.overrun(D), None, "idle starts when the response ends");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(a.overrun(D), Some("idle"));
    }
}
