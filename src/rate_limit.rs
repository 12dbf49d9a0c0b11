//! Per-user rate limit, one budget for the sync route and GraphQL operations together
//! ([`RateLimiter`]), and per-instance limits by key ([`LocalLimiter`]): package and media
//! requests per user, requests without a valid token per client address.
//!
//! A fixed one-minute window counted in the cache (Redis: shared by every instance).
//! When Redis fails, an in-process window takes over for that call (counted as a fallback),
//! so an outage neither blocks users nor lifts the limit entirely.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use crate::{cache::Cache, error::AppError, metrics};

pub struct RateLimiter {
    /// Requests allowed per window (0: no limit).
    budget: u32,
    window: Duration,
    local: Cache,
}

impl RateLimiter {
    /// `per_minute` requests per minute, counted in windows of `window` (normally a minute;
    /// shorter windows get a proportional budget, at least one request).
    pub fn new(per_minute: u32, window: Duration) -> Self {
        RateLimiter {
            budget: window_budget(per_minute, window),
            window,
            local: Cache::memory("rl-local:"),
        }
    }

    /// Counts one request of `user`; refuses it (without counting it) when over the budget.
    pub async fn check(
        &self,
        cache: &Cache,
        user: entity::UserId,
        surface: &'static str,
    ) -> Result<(), AppError> {
        if self.budget == 0 {
            return Ok(());
        }
        let key = cache.user_key(&user, "rl", "minute");
        let (count, left, counted_in) = match cache.incr_window(&key, self.window).await {
            Ok((count, left)) => (count, left, cache),
            Err(e) => {
                metrics::cache_fallback("rate_limit", e.kind());
                let (count, left) = self
                    .local
                    .incr_window(&key, self.window)
                    .await
                    .unwrap_or((0, self.window));
                (count, left, &self.local)
            }
        };
        if count > u64::from(self.budget) {
            // Refused requests do not use up the budget.
            let _ = counted_in.decr(&key).await;
            metrics::rate_limited(surface);
            return Err(AppError::RateLimited {
                retry_after_secs: left.as_secs().max(1),
            });
        }
        Ok(())
    }
}

/// A per-instance fixed-window limit by key (a client address, a user), counted in
/// process: a few hundred nanoseconds a check, for routes where a Redis round trip per
/// request would cost more than the request itself. Each limiter has its own bounded
/// cache, so filling one never resets another's counters.
pub struct LocalLimiter<K> {
    budget: u32,
    window: Duration,
    started: std::time::Instant,
    /// (key, window index) → requests counted in that window.
    /// (key, window index) → requests counted; past windows are never read again and are
    /// the first to be evicted.
    windows: quick_cache::sync::Cache<(K, u64), Arc<AtomicU32>>,
    surface: &'static str,
}

/// Keys a local limiter tracks at once. Past it the least used are forgotten (their count
/// starts again), which a flood of fresh keys can cause but never turns into memory.
const LOCAL_LIMITER_KEYS: usize = 200_000;

/// The window a moment falls in and the time left in it, both from the milliseconds
/// since the limiter started.
pub fn window_at(elapsed: Duration, window: Duration) -> (u64, Duration) {
    let window_ms = (window.as_millis() as u64).max(1);
    let elapsed_ms = elapsed.as_millis() as u64;
    let index = elapsed_ms / window_ms;
    let left = window_ms - elapsed_ms % window_ms;
    (index, Duration::from_millis(left))
}

/// The budget of one window for a per-minute rate (0: no limit).
fn window_budget(per_minute: u32, window: Duration) -> u32 {
    if per_minute == 0 {
        0
    } else {
        ((u64::from(per_minute) * window.as_secs()).div_ceil(60)).max(1) as u32
    }
}

impl<K: std::hash::Hash + Eq + Send + Sync + Clone + 'static> LocalLimiter<K> {
    pub fn new(per_minute: u32, window: Duration, surface: &'static str) -> Self {
        LocalLimiter {
            budget: window_budget(per_minute, window),
            window,
            started: std::time::Instant::now(),
            windows: quick_cache::sync::Cache::new(LOCAL_LIMITER_KEYS),
            surface,
        }
    }

    /// Counts one request of `key`; refuses it (without counting it) when over the budget.
    pub fn check(&self, key: &K) -> Result<(), AppError> {
        if self.budget == 0 {
            return Ok(());
        }
        let (index, left) = window_at(self.started.elapsed(), self.window);
        let key = (key.clone(), index);
        let counter = self
            .windows
            .get_or_insert_with(&key, || {
                Ok::<_, std::convert::Infallible>(Arc::new(AtomicU32::new(0)))
            })
            .unwrap_or_else(|never| match never {});
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if count > self.budget {
            counter.fetch_sub(1, Ordering::Relaxed);
            metrics::rate_limited(self.surface);
            return Err(AppError::RateLimited {
                retry_after_secs: left.as_secs().max(1),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_fixed_and_report_the_time_left() {
        let minute = Duration::from_secs(60);
        assert_eq!(window_at(Duration::ZERO, minute), (0, minute));
        assert_eq!(
            window_at(Duration::from_secs(59), minute),
            (0, Duration::from_secs(1))
        );
        assert_eq!(
            window_at(Duration::from_secs(61), minute),
            (1, Duration::from_secs(59))
        );
    }

    #[test]
    fn budgets_scale_with_the_window() {
        assert_eq!(window_budget(0, Duration::from_secs(60)), 0);
        assert_eq!(window_budget(120, Duration::from_secs(60)), 120);
        assert_eq!(window_budget(120, Duration::from_secs(1)), 2);
        assert_eq!(window_budget(1, Duration::from_secs(1)), 1);
    }

    #[test]
    fn a_local_limiter_refuses_past_its_budget_per_key() {
        let limiter = LocalLimiter::new(3, Duration::from_secs(60), "test");
        for _ in 0..3 {
            limiter.check(&1u32).unwrap();
        }
        let refused = limiter.check(&1u32).unwrap_err();
        assert!(
            matches!(refused, AppError::RateLimited { retry_after_secs } if retry_after_secs >= 1)
        );
        // Refused requests are not counted; another key has its own budget.
        assert!(limiter.check(&1u32).is_err());
        limiter.check(&2u32).unwrap();
        let off = LocalLimiter::new(0, Duration::from_secs(60), "test");
        for _ in 0..100 {
            off.check(&1u32).unwrap();
        }
    }
}
