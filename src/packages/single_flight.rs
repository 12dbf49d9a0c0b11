//! One build at a time per key. When a new version is published, every phone of its scope
//! asks for it within minutes: without this, each concurrent request on a cold instance
//! would load the package and compress megabytes on its own blocking thread, and a burst of
//! them would exhaust the CPU and memory of the instance for bytes that are all the same.
//! With it, the first request builds and the others wait for it, then read the cache.
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The keys being built now, each with the lock its builder holds.
pub struct Flights<K> {
    in_flight: Mutex<HashMap<K, Arc<AsyncMutex<()>>>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Flights {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

/// Held while building `key`; whoever waited for it goes on when it is dropped (also when
/// the builder fails or its request is cancelled: the next waiter then builds).
pub struct Flight<'a, K: Eq + Hash> {
    flights: &'a Flights<K>,
    key: K,
    guard: OwnedMutexGuard<()>,
}

impl<K: Copy + Eq + Hash> Flights<K> {
    /// Waits until no one else builds `key`, then returns the right to build it. The caller
    /// must look in its cache again first: the previous holder has usually just filled it.
    pub async fn enter(&self, key: K) -> Flight<'_, K> {
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight.entry(key).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Flight {
            flights: self,
            key,
            guard,
        }
    }

    /// Keys with a builder or waiters now (tests check that none outlives its builders).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + Hash> Drop for Flight<'_, K> {
    fn drop(&mut self) {
        let mut in_flight = self
            .flights
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Only the map's reference and our guard's are left: no one waits, so the entry can
        // go. Each waiter holds its own reference, so an entry with waiters stays for them.
        let lock = OwnedMutexGuard::mutex(&self.guard);
        if Arc::strong_count(lock) == 2
            && in_flight
                .get(&self.key)
                .is_some_and(|entry| Arc::ptr_eq(entry, lock))
        {
            in_flight.remove(&self.key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A cache in front of a slow build, as the package store uses it.
    struct Cached {
        flights: Flights<u32>,
        value: Mutex<Option<u64>>,
        builds: AtomicUsize,
    }

    impl Cached {
        async fn get(&self, fail_first: bool) -> Result<u64, ()> {
            if let Some(v) = *self.value.lock().unwrap() {
                return Ok(v);
            }
            let _flight = self.flights.enter(7).await;
            if let Some(v) = *self.value.lock().unwrap() {
                return Ok(v);
            }
            let n = self.builds.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if fail_first && n == 0 {
                return Err(());
            }
            *self.value.lock().unwrap() = Some(42);
            Ok(42)
        }
    }

    fn cached() -> Arc<Cached> {
        Arc::new(Cached {
            flights: Flights::default(),
            value: Mutex::new(None),
            builds: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_build() {
        let c = cached();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.get(false).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(42));
        }
        assert_eq!(c.builds.load(Ordering::SeqCst), 1);
        assert!(c.flights.is_empty(), "no entry outlives its builders");
    }

    #[tokio::test]
    async fn a_failed_build_lets_the_next_waiter_build() {
        let c = cached();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.get(true).await })
            })
            .collect();
        let results: Vec<_> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert_eq!(c.builds.load(Ordering::SeqCst), 2);
        assert!(c.flights.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_builder_releases_its_key() {
        let c = cached();
        let first = {
            let c = c.clone();
            tokio::spawn(async move { c.get(false).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.abort();
        let _ = first.await;
        assert_eq!(c.get(false).await, Ok(42));
        assert!(c.flights.is_empty());
    }
}
