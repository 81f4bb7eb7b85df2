//! Cluster events over one Redis pub/sub channel, `<prefix>events`.
//!
//! Pub/sub is at-most-once: a replica that is disconnected when an event is published never
//! sees it. That is accepted because every event only speeds something up that also happens
//! on its own (cache TTLs, periodic re-reads). Subscribing needs a dedicated connection (a
//! subscribed connection cannot send commands), so the subscriber owns one and opens it again
//! after Redis restarts; publishing goes over the shared connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::cluster::redis::SharedRedis;
use crate::retry::Backoff;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A package changed upstream: drop it from L1.
    PackageChanged { name: String },
    /// The leader stored a new copy of a malware source (the feed, the OSV list) in Redis:
    /// each refresher reloads its own if its stamp is newer.
    FeedUpdated { etag: Option<String> },
    /// A replica stored a new certificate for this domain in Redis: serve it.
    CertificateReplaced { domain: String },
    /// A replica's upstream breaker opened: stop asking upstream for `for_ms`.
    UpstreamDown { for_ms: u64, reason: String },
    /// A replica's probe got an answer: ask upstream again.
    UpstreamUp,
}

/// What goes over the channel. `node` tells apart two processes that share an instance name,
/// so a misconfigured cluster loses nothing; it is optional on the wire.
#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(default)]
    node: Option<String>,
    event: Event,
}

pub struct Bus {
    redis: Arc<SharedRedis>,
    channel: String,
    origin: String,
    node: String,
    local: broadcast::Sender<Event>,
}

/// Events buffered per receiver; a receiver that falls further behind gets `Lagged`.
const CAPACITY: usize = 4096;
/// How often a quiet subscription is pinged, to notice a connection that died silently.
const PING_EVERY: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(3);

impl Bus {
    /// The bus; nothing is heard until the owner of the background jobs runs `subscriber`.
    /// Without Redis there is nobody to talk to: `publish` does nothing and `subscribe` never
    /// yields.
    pub fn new(redis: Arc<SharedRedis>, instance: &str) -> Arc<Bus> {
        let (local, _) = broadcast::channel(CAPACITY);
        Arc::new(Bus {
            channel: redis.key("events"),
            redis,
            origin: instance.to_string(),
            node: format!("{:016x}", crate::retry::random_u64()),
            local,
        })
    }

    /// The subscription, a job for the caller to run: receives the other replicas' events
    /// and subscribes again after Redis restarts. Ends with the bus (at once without Redis).
    pub fn subscriber(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        subscriber(Arc::downgrade(self))
    }

    /// Tells the other replicas. Failures are logged: events are hints, never required.
    pub async fn publish(&self, event: Event) {
        let Some(mut conn) = self.redis.conn() else {
            tracing::debug!(?event, "redis unavailable: event not published");
            return;
        };
        let envelope = Envelope {
            origin: self.origin.clone(),
            node: Some(self.node.clone()),
            event,
        };
        let payload = match serde_json::to_string(&envelope) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a cluster event");
                return;
            }
        };
        if let Err(e) = conn.publish::<_, _, ()>(&self.channel, payload).await {
            self.redis.report_error("event publish", &e);
        }
    }

    /// Events published by the other replicas (never our own).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// Decodes one message and hands it on unless it is our own.
    fn deliver(&self, payload: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                // A newer replica may send events this one does not know: skip them.
                tracing::debug!(error = %e, "ignoring an undecodable cluster event");
                return;
            }
        };
        let ours = envelope.origin == self.origin && envelope.node.as_deref().is_none_or(|n| n == self.node);
        if !ours {
            // No receivers is fine: nothing in this replica cares about events right now.
            let _ = self.local.send(envelope.event);
        }
    }
}

/// Subscribes, forwards messages, and on any trouble (or a failover) opens a new connection,
/// with a backoff capped at a few seconds so a restarted Redis is picked up quickly. Ends
/// with the bus.
async fn subscriber(bus: std::sync::Weak<Bus>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
    loop {
        let Some(b) = bus.upgrade() else { return };
        if !b.redis.clustered() {
            return;
        }
        // Taken before the client: a master swapped in meanwhile still ends this subscription.
        let mut node_changes = b.redis.node_changes();
        node_changes.mark_unchanged();
        let client = b.redis.client();
        let channel = b.channel.clone();
        drop(b);
        let Some(client) = client else {
            // With Sentinel, no master is known until the monitor finds one.
            tokio::time::sleep(backoff.after_failure()).await;
            continue;
        };
        match subscribe(&client, &channel).await {
            Ok(pubsub) => {
                tracing::debug!(%channel, "subscribed to cluster events");
                backoff.reset();
                if !listen(&bus, pubsub, &mut node_changes).await {
                    return;
                }
                tracing::info!("cluster event subscription lost; resubscribing");
            }
            Err(e) => tracing::debug!(error = %e, "cannot subscribe to cluster events yet"),
        }
        tokio::time::sleep(backoff.after_failure()).await;
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> anyhow::Result<redis::aio::PubSub> {
    let mut pubsub = tokio::time::timeout(TIMEOUT, client.get_async_pubsub()).await??;
    tokio::time::timeout(TIMEOUT, pubsub.subscribe(channel)).await??;
    Ok(pubsub)
}

/// Forwards messages until the connection fails or another master is swapped in (events are
/// published there now); false when the bus is gone.
async fn listen(
    bus: &std::sync::Weak<Bus>,
    pubsub: redis::aio::PubSub,
    node_changes: &mut tokio::sync::watch::Receiver<u64>,
) -> bool {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return true };
                let Some(b) = bus.upgrade() else { return false };
                b.deliver(msg.get_payload_bytes());
            }
            _ = node_changes.changed() => return true,
            _ = ping.tick() => {
                if bus.strong_count() == 0 {
                    return false;
                }
                let pong = tokio::time::timeout(TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let e = Envelope {
            origin: "a".into(),
            node: None,
            event: Event::PackageChanged {
                name: "left-pad".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"origin":"a","node":null,"event":{"type":"package_changed","name":"left-pad"}}"#
        );
        let f: Envelope =
            serde_json::from_str(r#"{"origin":"b","event":{"type":"feed_updated","etag":"\"x\""}}"#).unwrap();
        assert_eq!(
            f.event,
            Event::FeedUpdated {
                etag: Some("\"x\"".into())
            }
        );
    }
}
