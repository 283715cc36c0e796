//! What a handler's answer means for its delivery: done, try again after a
//! while, or give up and deactivate the webhook. A pure function of the
//! answer and the retry schedule, so the whole table is tested here.

use super::retry::{self, Next, Schedule};
use std::time::Duration;

/// Reasons the controller deactivates a webhook.
pub const RETRIES_EXHAUSTED: &str = "RetriesExhausted";
pub const GONE: &str = "Gone";

/// The handler's answer to one attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    /// `None`: no HTTP answer (not sent, refused, timed out).
    pub status_code: Option<u16>,
    /// The handler's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

/// Where an attempt's round stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Round {
    /// Attempts in this round, this one included (1 = the round's first).
    pub attempts: u32,
    /// Since the round's first attempt started.
    pub elapsed: Duration,
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Succeeded,
    /// Retrying: the next attempt is due after this long.
    RetryIn(Duration),
    /// The delivery failed for good and its webhook is deactivated, for
    /// this reason (`RETRIES_EXHAUSTED` or `GONE`).
    Fail(&'static str),
}

/// Decides what follows an attempt. Any 2xx succeeds; 410 Gone ends the
/// subscription at once (REST Hooks); anything else is retried on the
/// schedule until it runs out of retries or window. `Retry-After` is
/// honoured on 429 and 503 only, and never past the window. `jitter`
/// (0..=1) spreads deliveries failing together.
pub fn decide(answer: Answer, round: Round, schedule: &Schedule, jitter: f64) -> Verdict {
    match answer.status_code {
        Some(200..=299) => Verdict::Succeeded,
        Some(410) => Verdict::Fail(GONE),
        code => {
            let honoured = answer.retry_after.filter(|_| matches!(code, Some(429 | 503)));
            match retry::next(schedule, round.attempts, round.elapsed, honoured, jitter) {
                Next::RetryIn(delay) => Verdict::RetryIn(delay),
                Next::GiveUp => Verdict::Fail(RETRIES_EXHAUSTED),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn answer(status_code: Option<u16>, retry_after: Option<u64>) -> Answer {
        Answer {
            status_code,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn round(attempts: u32, elapsed_s: u64) -> Round {
        Round {
            attempts,
            elapsed: Duration::from_secs(elapsed_s),
        }
    }

    #[test]
    fn the_answer_decides_what_follows() {
        let schedule = Schedule {
            max_retries: 3,
            window: Duration::from_secs(3600),
        };
        let first_retry = schedule.delay(1, 0.0);
        let cases = [
            // (answer, round, verdict, why)
            (answer(Some(200), None), round(1, 0), Verdict::Succeeded, "2xx succeeds"),
            (
                answer(Some(204), Some(60)),
                round(3, 10),
                Verdict::Succeeded,
                "any 2xx, whatever else it says",
            ),
            (
                answer(Some(410), None),
                round(1, 0),
                Verdict::Fail(GONE),
                "410 ends the subscription at once",
            ),
            (
                answer(Some(500), None),
                round(1, 0),
                Verdict::RetryIn(first_retry),
                "5xx retries on the schedule",
            ),
            (
                answer(None, None),
                round(1, 0),
                Verdict::RetryIn(first_retry),
                "no answer retries too",
            ),
            (
                answer(Some(301), None),
                round(1, 0),
                Verdict::RetryIn(first_retry),
                "a redirect is not followed: a failure",
            ),
            (
                answer(Some(503), Some(120)),
                round(1, 0),
                Verdict::RetryIn(120 * SECOND),
                "Retry-After on 503",
            ),
            (
                answer(Some(429), Some(7)),
                round(1, 0),
                Verdict::RetryIn(7 * SECOND),
                "Retry-After on 429",
            ),
            (
                answer(Some(500), Some(7)),
                round(1, 0),
                Verdict::RetryIn(first_retry),
                "Retry-After only on 429/503",
            ),
            (
                answer(Some(503), Some(7200)),
                round(1, 3000),
                Verdict::RetryIn(600 * SECOND),
                "never past the window",
            ),
            (
                answer(Some(500), None),
                round(3, 10),
                Verdict::RetryIn(schedule.delay(3, 0.0)),
                "the last retry",
            ),
            (
                answer(Some(500), None),
                round(4, 10),
                Verdict::Fail(RETRIES_EXHAUSTED),
                "out of retries",
            ),
            (
                answer(Some(503), Some(1)),
                round(4, 10),
                Verdict::Fail(RETRIES_EXHAUSTED),
                "Retry-After adds none",
            ),
            (
                answer(Some(500), None),
                round(1, 3601),
                Verdict::Fail(RETRIES_EXHAUSTED),
                "out of window",
            ),
        ];
        for (answer, round, verdict, why) in cases {
            assert_eq!(
                decide(answer, round, &schedule, 0.0),
                verdict,
                "{why}: {answer:?} {round:?}"
            );
        }
    }

    #[test]
    fn jitter_only_shortens_a_retry() {
        let schedule = Schedule::default();
        let plain = decide(answer(Some(500), None), round(2, 0), &schedule, 0.0);
        let jittered = decide(answer(Some(500), None), round(2, 0), &schedule, 1.0);
        match (plain, jittered) {
            (Verdict::RetryIn(a), Verdict::RetryIn(b)) => assert!(b < a && b >= a.mul_f64(0.85), "{a:?} {b:?}"),
            other => panic!("{other:?}"),
        }
    }
}
