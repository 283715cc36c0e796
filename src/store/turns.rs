//! Per-webhook request rates (`delivery.rateLimit`), as GCRA: one number per
//! webhook, the theoretical arrival time (TAT) of its next request, so every
//! store keeps it in one row or one map entry and replicas share it. A turn
//! is taken when the request may go now; else it says how long until it may
//! (and nothing is reserved: the waiting request asks again then).

use crate::resources::hub::DeliveryRateLimit;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate in the form GCRA works with, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Seconds between requests at the steady rate.
    pub interval: f64,
    /// How far ahead of now the TAT may run: `burst` intervals.
    pub tolerance: f64,
}

impl Rate {
    pub fn of(limit: &DeliveryRateLimit) -> Rate {
        // The CRD bounds both; clamped anyway (the spec is anyone's to write).
        let interval = 1.0 / limit.requests_per_second.clamp(0.01, 10_000.0);
        let burst = f64::from(limit.burst.unwrap_or(1).clamp(1, 1000));
        Rate {
            interval,
            tolerance: burst * interval,
        }
    }
}

/// A request at `now` against the TAT `tat` (seconds on one clock):
/// `Ok(new TAT)` if it may go, else `Err(seconds until it may)`.
pub fn decide(rate: Rate, tat: f64, now: f64) -> Result<f64, f64> {
    let next = tat.max(now) + rate.interval;
    // A microsecond of slack, so rounding never refuses a turn that is due
    // (the Postgres store's epoch seconds keep about a tenth of one).
    match (tat - now).max(0.0) + rate.interval - rate.tolerance {
        early if early > 1e-6 => Err(early),
        _ => Ok(next),
    }
}

/// The turns of one process's webhooks (the Kubernetes and memory stores:
/// one process delivers at a time).
pub struct LocalTurns {
    started: Instant,
    tats: Mutex<HashMap<(String, String), f64>>,
}

impl Default for LocalTurns {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            tats: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl crate::store::Turns for LocalTurns {
    async fn take_turn(
        &self,
        namespace: &str,
        webhook: &str,
        rate: Rate,
    ) -> Result<Option<Duration>, crate::store::StoreError> {
        let now = self.started.elapsed().as_secs_f64();
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let tat = tats.entry((namespace.to_string(), webhook.to_string())).or_insert(now);
        Ok(match decide(rate, *tat, now) {
            Ok(next) => {
                *tat = next;
                None
            }
            Err(wait) => Some(Duration::from_secs_f64(wait)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate::of(&DeliveryRateLimit {
            requests_per_second: per_second,
            burst: Some(burst),
        })
    }

    #[test]
    fn a_burst_goes_at_once_then_requests_are_spaced_by_the_rate() {
        let r = rate(5.0, 2);
        let mut tat = 0.0;
        for _ in 0..2 {
            tat = decide(r, tat, 0.0).expect("within the burst");
        }
        let wait = decide(r, tat, 0.0).unwrap_err();
        assert!((wait - 0.2).abs() < 1e-9, "one every 200 ms: {wait}");
        tat = decide(r, tat, 0.2).expect("its turn");
        assert!(decide(r, tat, 0.3).is_err(), "the next is at 0.4");
        assert!(decide(r, tat, 0.4).is_ok());
    }

    #[test]
    fn a_quiet_spell_saves_up_only_the_burst() {
        let r = rate(1.0, 3);
        let mut tat = 0.0;
        let mut sent = 0;
        while let Ok(next) = decide(r, tat, 3600.0) {
            tat = next;
            sent += 1;
        }
        assert_eq!(sent, 3);
    }

    #[test]
    fn any_window_holds_at_most_the_burst_plus_the_rate() {
        // Requests asked for every millisecond for 10 s at 5/s, burst 1.
        let r = rate(5.0, 1);
        let (mut tat, mut sent) = (0.0, vec![]);
        for ms in 0..10_000 {
            let now = f64::from(ms) / 1000.0;
            if let Ok(next) = decide(r, tat, now) {
                tat = next;
                sent.push(now);
            }
        }
        assert_eq!(sent.len(), 50);
        for w in sent.windows(6) {
            assert!(w[5] - w[0] >= 1.0 - 1e-9, "6 requests within a second: {w:?}");
        }
    }

    #[test]
    fn slow_rates_space_requests_seconds_apart() {
        let r = rate(0.5, 1);
        let tat = decide(r, 0.0, 0.0).unwrap();
        assert!((decide(r, tat, 0.0).unwrap_err() - 2.0).abs() < 1e-9);
    }
}
