//! One piece of work per key at a time: concurrent callers for the same key share the
//! result of the first. The work runs in its own task, so a caller that goes away (a client
//! disconnecting) does not cancel it for the others or leave a half-filled cache.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Flight<V> = Shared<BoxFuture<'static, Option<V>>>;

pub(crate) struct SingleFlight<K, V> {
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Arc::default(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` unless a flight for `key` is under way, and returns its result.
    /// `None` only if the work panicked.
    pub(crate) async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> Option<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let flight = {
            let mut map = self.inflight.lock().expect("single-flight map poisoned");
            match map.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let fut = work();
                    let map_ref = self.inflight.clone();
                    let k = key.clone();
                    let task = tokio::spawn(async move {
                        let v = fut.await;
                        map_ref.lock().expect("single-flight map poisoned").remove(&k);
                        v
                    });
                    let flight = task.map(Result::ok).boxed().shared();
                    map.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.inflight.lock().expect("single-flight map poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf = Arc::new(SingleFlight::<String, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let (sf, runs) = (sf.clone(), runs.clone());
            handles.push(tokio::spawn(async move {
                sf.run("k".into(), || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), Some(1));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn survives_the_caller_going_away() {
        let sf = Arc::new(SingleFlight::<u8, u8>::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = sf.run(1, || async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = tx.send(());
            7
        });
        // Poll once so the flight starts, then drop the caller.
        assert!(futures_util::poll!(Box::pin(first)).is_pending());
        rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sf.in_flight(), 0);
    }
}
