//! Per-user rate limit, one budget for the sync route and GraphQL operations together.
//!
//! A fixed one-minute window counted in the cache (Redis: shared by every instance).
//! When Redis fails, an in-process window takes over for that call (counted as a fallback),
//! so an outage neither blocks users nor lifts the limit entirely.
use std::time::Duration;

use uuid::Uuid;

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
        let budget = if per_minute == 0 {
            0
        } else {
            ((u64::from(per_minute) * window.as_secs()).div_ceil(60)).max(1) as u32
        };
        RateLimiter {
            budget,
            window,
            local: Cache::memory("rl-local:"),
        }
    }

    /// Counts one request of `user`; refuses it (without counting it) when over the budget.
    pub async fn check(
        &self,
        cache: &Cache,
        user: Uuid,
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
