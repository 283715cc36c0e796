//! Per-hub rate limits at ingest: a token bucket per hub, so one CMS (or
//! anyone holding a hub's token) cannot flood the API server for everyone.

use crate::resources::Hub;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DEFAULT_EVENTS_PER_SECOND: u32 = 50;
pub const DEFAULT_BURST: u32 = 100;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / f64::from(rate)))
    }
}

/// The buckets of every hub this ingest serves.
#[derive(Default)]
pub struct Limits(Mutex<HashMap<(String, String), Bucket>>);

impl Limits {
    /// Admits one event for `hub`, or says when to retry.
    pub fn admit(&self, namespace: &str, hub: &Hub, now: Instant) -> Result<(), Duration> {
        let limit = hub.spec.ingest.as_ref().and_then(|i| i.rate_limit.as_ref());
        let rate = limit
            .and_then(|l| l.events_per_second)
            .unwrap_or(DEFAULT_EVENTS_PER_SECOND)
            .max(1);
        let burst = limit.and_then(|l| l.burst).unwrap_or(DEFAULT_BURST).max(1);
        let key = (namespace.to_string(), kube::ResourceExt::name_any(hub));
        let mut buckets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(rate, burst, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_rate_and_retry_after_says_when() {
        let t0 = Instant::now();
        let mut bucket = Bucket::full(3, t0);
        for _ in 0..3 {
            assert!(bucket.take(2, 3, t0).is_ok());
        }
        let wait = bucket.take(2, 3, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "one token every half second");
        assert!(bucket.take(2, 3, t0 + Duration::from_millis(500)).is_ok());
        assert!(bucket.take(2, 3, t0 + Duration::from_millis(600)).is_err());
        // A long quiet period refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(bucket.take(2, 3, later).is_ok());
        }
        assert!(bucket.take(2, 3, later).is_err());
    }
}
