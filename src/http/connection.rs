//! Deadlines of one client connection. A connection must bring its first request head within
//! `head` (a silent socket, 23 bytes of an HTTP/2 preface, a TLS handshake followed by
//! nothing), may then sit without a request in flight for at most `idle`, and a response body
//! that is ready to go but not taken (a client that stopped reading) is given up after `send`.
//! All are judged from what the connection's service sees, so they hold for HTTP/1.1 and
//! HTTP/2, plain and over TLS, including the protocol sniff that hyper's own header timeout
//! does not cover.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::Response;
use hyper::body::{Frame, SizeHint};

/// How often a connection's deadlines are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The deadlines, from settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// Until the first request head is complete.
    pub(crate) head: Duration,
    /// Without any request in flight, after the first.
    pub(crate) idle: Duration,
    /// A response body ready to be sent that the client does not take.
    pub(crate) send: Duration,
}

/// What a connection's service has seen: requests started and responses still being sent.
pub(crate) struct Activity {
    started: Instant,
    seen_request: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` of the last request start or response end.
    last_ms: AtomicU64,
    /// Response bodies handed to the connection and not yet done.
    sending: AtomicUsize,
    /// Of those, the ones waiting for their own data (e.g. from upstream), not for the client.
    waiting: AtomicUsize,
    /// Milliseconds after `started` when the connection last asked a body for data.
    polled_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            seen_request: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            sending: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            polled_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request head arrived; the returned guard ends it when the response body is done
    /// (or dropped), so a long download never counts as idle.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
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
        let since = |at: &AtomicU64| self.now_ms().saturating_sub(at.load(Ordering::Relaxed));
        // A body with data ready that the connection has not asked for: the client is not reading.
        let ready = self.sending.load(Ordering::Relaxed) > self.waiting.load(Ordering::Relaxed);
        if ready && since(&self.polled_ms) > deadlines.send.as_millis() as u64 {
            return Some("send");
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        (since(&self.last_ms) > deadlines.idle.as_millis() as u64).then_some("idle")
    }
}

/// One request in flight; ends on drop.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// `resp` with `guard` held until its body has been sent or dropped, and the body's progress
/// reported to the connection's send deadline.
pub(crate) fn hold_until_sent(resp: Response<Body>, guard: InFlight) -> Response<Body> {
    let activity = guard.0.clone();
    activity.sending.fetch_add(1, Ordering::Relaxed);
    activity.polled_ms.store(activity.now_ms(), Ordering::Relaxed);
    resp.map(|inner| {
        Body::new(Sending {
            inner,
            activity,
            waiting: false,
            _guard: guard,
        })
    })
}

/// A response body being sent, telling its connection whether it waits for its own data.
struct Sending {
    inner: Body,
    activity: Arc<Activity>,
    waiting: bool,
    _guard: InFlight,
}

impl Sending {
    fn set_waiting(&mut self, waiting: bool) {
        if waiting != self.waiting {
            match waiting {
                true => self.activity.waiting.fetch_add(1, Ordering::Relaxed),
                false => self.activity.waiting.fetch_sub(1, Ordering::Relaxed),
            };
            self.waiting = waiting;
        }
    }
}

impl HttpBody for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let now = self.activity.now_ms();
        self.activity.polled_ms.store(now, Ordering::Relaxed);
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        self.set_waiting(poll.is_pending());
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.set_waiting(false);
        self.activity.sending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `conn` until it ends or overruns a deadline (then it is dropped, closing the socket).
/// Returns the deadline that ended it, if one did.
pub(crate) async fn run_within<F: Future>(conn: F, activity: &Activity, deadlines: Deadlines) -> Option<&'static str> {
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
        send: Duration::from_millis(40),
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

    #[tokio::test]
    async fn a_body_not_taken_overruns_the_send_deadline() {
        let a = Activity::new();
        let resp = hold_until_sent(Response::new(Body::from("ready")), a.begin());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(a.overrun(D), Some("send"), "ready and never asked for");
        drop(resp);
        assert_eq!(a.overrun(D), None);
    }

    #[tokio::test]
    async fn a_body_waiting_for_its_own_data_is_not_stalled() {
        let a = Activity::new();
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = hold_until_sent(Response::new(body), a.begin());
        let mut body = resp.into_body();
        let polled = futures_util::poll!(std::pin::pin!(http_body_util::BodyExt::frame(&mut body)));
        assert!(polled.is_pending());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(a.overrun(D), None, "waiting for upstream is not the client's stall");
    }
}
