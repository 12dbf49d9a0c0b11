//! Per-user rate limit, one budget for the sync route and GraphQL operations together.
//!
//! A fixed one-minute window counted in the cache (Redis: shared by every instance).
//! When Redis fails, an in-process window takes over for that call (counted as a fallback),
//! so an outage neither blocks users nor lifts the limit entirely.
use std::time::Duration;

use uuid::Uuid;

use crate::{cache::Cache, error::AppError, metrics};

pub struct RateLimiter {
    per_minute: u32,
    local: Cache,
}

const WINDOW: Duration = Duration::from_secs(60);

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
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
        if self.per_minute == 0 {
            return Ok(());
        }
        let key = cache.user_key(&user, "rl", "minute");
        let (count, left, counted_in) = match cache.incr_window(&key, WINDOW).await {
            Ok((count, left)) => (count, left, cache),
            Err(e) => {
                metrics::cache_fallback("rate_limit", e.kind());
                let (count, left) = self
                    .local
                    .incr_window(&key, WINDOW)
                    .await
                    .unwrap_or((0, WINDOW));
                (count, left, &self.local)
            }
        };
        if count > u64::from(self.per_minute) {
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
