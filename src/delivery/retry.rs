//! When to retry a failed delivery: exponential backoff with a cap and
//! jitter, scaled so the last retry falls within the window of the first
//! attempt (by default 18 retries within 12 hours, as the CMS does).

use crate::resources::RetryPolicy;
use std::time::Duration;

pub const DEFAULT_MAX_RETRIES: u32 = 18;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(12 * 3600);
/// The nominal delays double up to 2^11 units, then stay there.
const CAP_DOUBLINGS: u32 = 11;
/// The schedule uses this share of the window, leaving room for request
/// durations so the last retry still starts within it.
const WINDOW_SHARE: f64 = 0.95;
/// Each delay is shortened by up to this fraction, at random, so deliveries
/// failing together do not retry in lockstep.
pub const JITTER: f64 = 0.1;

/// A retry policy with defaults applied: the webhook's over the hub's over
/// the built-in ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub max_retries: u32,
    pub window: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            window: DEFAULT_WINDOW,
        }
    }
}

impl Schedule {
    pub fn resolve(webhook: Option<&RetryPolicy>, hub: Option<&RetryPolicy>) -> Self {
        let pick = |f: fn(&RetryPolicy) -> Option<Duration>| webhook.and_then(f).or_else(|| hub.and_then(f));
        Self {
            max_retries: webhook
                .and_then(|p| p.max_retries)
                .or_else(|| hub.and_then(|p| p.max_retries))
                .unwrap_or(DEFAULT_MAX_RETRIES),
            window: pick(|p| p.window.map(Into::into)).unwrap_or(DEFAULT_WINDOW),
        }
    }

    /// The delay before retry `n` (1-based) without jitter.
    pub fn nominal_delay(&self, n: u32) -> Duration {
        if n == 0 || n > self.max_retries {
            return Duration::ZERO;
        }
        let units = |i: u32| 2f64.powi(i.min(CAP_DOUBLINGS) as i32);
        let total: f64 = (0..self.max_retries).map(units).sum();
        self.window.mul_f64(WINDOW_SHARE * units(n - 1) / total)
    }

    /// The delay before retry `n`, shortened by `jitter` (0..=1 of `JITTER`).
    pub fn delay(&self, n: u32, jitter: f64) -> Duration {
        self.nominal_delay(n).mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0))
    }
}

/// What to do after failed attempt number `attempts` (1 = the first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    /// Retry after this long.
    RetryIn(Duration),
    /// Out of retries (or out of window).
    GiveUp,
}

/// Decides the next step after a failed attempt.
/// `elapsed` is the time since the first attempt started; `retry_after` a
/// delay the receiver asked for (429/503), honoured within the window.
pub fn next(schedule: &Schedule, attempts: u32, elapsed: Duration, retry_after: Option<Duration>, jitter: f64) -> Next {
    if attempts > schedule.max_retries {
        return Next::GiveUp;
    }
    let Some(remaining) = schedule.window.checked_sub(elapsed) else {
        return Next::GiveUp;
    };
    let delay = retry_after.unwrap_or_else(|| schedule.delay(attempts, jitter));
    Next::RetryIn(delay.min(remaining))
}

/// The default delays as the rows of the docs' table (docs/concepts/delivery-semantics.md):
/// `| retry | delay | after the first attempt |`.
pub fn default_table() -> String {
    fn human(d: Duration) -> String {
        let s = d.as_secs_f64().round() as u64;
        let (h, m, s) = (s / 3600, s % 3600 / 60, s % 60);
        match (h, m) {
            (0, 0) => format!("{s}s"),
            (0, _) => format!("{m}m {s}s"),
            _ => format!("{h}h {m}m {s}s"),
        }
    }
    let schedule = Schedule::default();
    let mut total = Duration::ZERO;
    let mut rows = String::new();
    for n in 1..=schedule.max_retries {
        let delay = schedule.nominal_delay(n);
        total += delay;
        rows.push_str(&format!("| {n} | {} | {} |\n", human(delay), human(total)));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_show_the_default_schedule() {
        let page = include_str!("../../docs/concepts/delivery-semantics.md");
        let table = default_table();
        assert!(
            page.contains(&table),
            "docs/concepts/delivery-semantics.md's retry table is out of date; it should read:\n{table}"
        );
    }

    #[test]
    fn default_schedule_makes_18_retries_within_12_hours() {
        let s = Schedule::default();
        let total: Duration = (1..=18).map(|n| s.nominal_delay(n)).sum();
        assert!(total <= Duration::from_secs(12 * 3600), "{total:?}");
        assert!(total >= Duration::from_secs(11 * 3600), "uses the window: {total:?}");
        assert_eq!(s.nominal_delay(19), Duration::ZERO);
    }

    #[test]
    fn delays_double_then_cap() {
        let s = Schedule::default();
        let d: Vec<f64> = (1..=18).map(|n| s.nominal_delay(n).as_secs_f64()).collect();
        for i in 1..12 {
            assert!((d[i] / d[i - 1] - 2.0).abs() < 1e-9, "retry {} doubles", i + 1);
        }
        for i in 12..18 {
            assert!((d[i] - d[11]).abs() < 1e-9, "retry {} is capped", i + 1);
        }
        assert!(d[0] > 1.0 && d[0] < 5.0, "first retry after a few seconds: {}", d[0]);
    }

    #[test]
    fn jitter_only_shortens_so_the_window_holds() {
        let s = Schedule::default();
        for n in 1..=18 {
            let nominal = s.nominal_delay(n);
            assert_eq!(s.delay(n, 0.0), nominal);
            let shortest = s.delay(n, 1.0);
            assert!(shortest < nominal && shortest >= nominal.mul_f64(1.0 - JITTER));
        }
    }

    #[test]
    fn overrides_take_precedence_webhook_over_hub() {
        let hub = RetryPolicy {
            max_retries: Some(5),
            window: Some(Duration::from_secs(3600).into()),
        };
        let webhook = RetryPolicy {
            max_retries: Some(3),
            window: None,
        };
        let s = Schedule::resolve(Some(&webhook), Some(&hub));
        assert_eq!(
            s,
            Schedule {
                max_retries: 3,
                window: Duration::from_secs(3600)
            }
        );
        assert_eq!(Schedule::resolve(None, None), Schedule::default());
        let total: Duration = (1..=3).map(|n| s.nominal_delay(n)).sum();
        assert!(total <= Duration::from_secs(3600));
    }

    #[test]
    fn gives_up_after_max_retries_or_the_window() {
        let s = Schedule {
            max_retries: 3,
            window: Duration::from_secs(10),
        };
        assert!(matches!(next(&s, 1, Duration::ZERO, None, 0.0), Next::RetryIn(_)));
        assert!(matches!(
            next(&s, 3, Duration::from_secs(5), None, 0.0),
            Next::RetryIn(_)
        ));
        assert_eq!(next(&s, 4, Duration::from_secs(5), None, 0.0), Next::GiveUp);
        assert_eq!(next(&s, 2, Duration::from_secs(11), None, 0.0), Next::GiveUp);
    }

    #[test]
    fn retry_after_is_honoured_but_clamped_to_the_window() {
        let s = Schedule {
            max_retries: 18,
            window: Duration::from_secs(100),
        };
        assert_eq!(
            next(&s, 1, Duration::from_secs(10), Some(Duration::from_secs(30)), 0.0),
            Next::RetryIn(Duration::from_secs(30))
        );
        assert_eq!(
            next(&s, 1, Duration::from_secs(90), Some(Duration::from_secs(30)), 0.0),
            Next::RetryIn(Duration::from_secs(10))
        );
    }
}
