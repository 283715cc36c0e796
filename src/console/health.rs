//! A webhook's health at a glance: its deliveries over the last hour, day or
//! week by outcome, success rate, attempts per delivery and the handler's
//! latency, drawn as SVG on the server (no script, no third-party code).
//! Pure: computed from deliveries the page read (at most `MOST`, newest
//! first), so a page view costs the same whatever a tenant's history.

use crate::resources::delivery::{Delivery, Phase};
use crate::resources::webhook::DeliverySummary;
use jiff::{SignedDuration, Timestamp};
use std::fmt::Write;

/// The newest deliveries a health view reads at most.
pub const MOST: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Window {
    Hour,
    #[default]
    Day,
    Week,
}

impl Window {
    pub fn parse(s: &str) -> Window {
        match s {
            "hour" => Window::Hour,
            "week" => Window::Week,
            _ => Window::Day,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
        }
    }

    /// (buckets, each bucket's length).
    fn buckets(self) -> (usize, SignedDuration) {
        match self {
            Window::Hour => (12, SignedDuration::from_mins(5)),
            Window::Day => (24, SignedDuration::from_hours(1)),
            Window::Week => (28, SignedDuration::from_hours(6)),
        }
    }

    /// How a bucket's start is labelled.
    fn time_format(self) -> &'static str {
        match self {
            Window::Hour | Window::Day => "%H:%M",
            Window::Week => "%a %H:%M",
        }
    }
}

/// One stretch of the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    pub start: Timestamp,
    pub succeeded: u32,
    /// Pending or retrying.
    pub in_progress: u32,
    /// Failed or cancelled.
    pub failed: u32,
    /// Handler latency of the attempts answered in it: p50, p95 (ms).
    pub latency: Option<(u64, u64)>,
}

impl Bucket {
    fn total(&self) -> u32 {
        self.succeeded + self.in_progress + self.failed
    }
}

/// What the health section shows.
#[derive(Debug, PartialEq)]
pub struct Health {
    pub window: Window,
    pub buckets: Vec<Bucket>,
    pub deliveries: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Succeeded of the finished ones, in percent.
    pub success_rate: Option<f64>,
    pub attempts_per_delivery: Option<f64>,
    /// p50, p95 of every answered attempt in the window (ms).
    pub latency: Option<(u64, u64)>,
    /// The deliveries read did not reach back to the window's start.
    pub partial: bool,
}

/// The `q` quantile (0–1) of sorted values, nearest rank.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn percentiles(mut values: Vec<u64>) -> Option<(u64, u64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some((quantile(&values, 0.5), quantile(&values, 0.95)))
}

/// Health over `window` ending at `now`, from the newest deliveries
/// (`partial`: there were more than were read).
pub fn compute(deliveries: &[Delivery], window: Window, now: Timestamp, partial: bool) -> Health {
    let (count, length) = window.buckets();
    let start = now - length * count as i32;
    let mut buckets: Vec<Bucket> = (0..count)
        .map(|i| Bucket {
            start: start + length * i as i32,
            ..Bucket::default()
        })
        .collect();
    let mut latencies: Vec<Vec<u64>> = vec![vec![]; count];
    let index = |t: Timestamp| -> Option<usize> {
        let offset = t.duration_since(start);
        (!offset.is_negative() && t <= now).then(|| ((offset.as_secs() / length.as_secs()) as usize).min(count - 1))
    };
    let (mut attempts, mut oldest) = (0u64, None::<Timestamp>);
    let mut health = Health {
        window,
        buckets: vec![],
        deliveries: 0,
        succeeded: 0,
        failed: 0,
        success_rate: None,
        attempts_per_delivery: None,
        latency: None,
        partial: false,
    };
    for d in deliveries {
        let received = d.spec.event.received_at.0;
        oldest = Some(oldest.map_or(received, |o| o.min(received)));
        let status = d.status.clone().unwrap_or_default();
        for a in &status.attempts {
            if a.response.is_some()
                && let Some(i) = index(a.time.0)
            {
                latencies[i].push(a.duration_ms);
            }
        }
        let Some(i) = index(received) else { continue };
        let bucket = &mut buckets[i];
        match status.phase {
            Phase::Succeeded => {
                bucket.succeeded += 1;
                health.succeeded += 1;
            }
            Phase::Failed | Phase::Cancelled => {
                bucket.failed += 1;
                health.failed += 1;
            }
            Phase::Pending | Phase::Retrying => bucket.in_progress += 1,
        }
        health.deliveries += 1;
        attempts += u64::from(status.attempt_count);
    }
    health.latency = percentiles(latencies.iter().flatten().copied().collect());
    for (bucket, values) in buckets.iter_mut().zip(latencies) {
        bucket.latency = percentiles(values);
    }
    let finished = health.succeeded + health.failed;
    health.success_rate = (finished > 0).then(|| 100.0 * f64::from(health.succeeded) / f64::from(finished));
    health.attempts_per_delivery = (health.deliveries > 0).then(|| attempts as f64 / f64::from(health.deliveries));
    health.partial = partial && oldest.is_some_and(|o| o > start);
    health.buckets = buckets;
    health
}

/// A round top for an axis holding `max`: 1, 2 or 5 times a power of ten.
fn nice(max: u64) -> u64 {
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if step * m >= max {
                return step * m;
            }
        }
        step *= 10;
    }
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// The x axis's labels: the first, middle and last bucket's start.
fn x_labels(out: &mut String, h: &Health, slot: f64) {
    let n = h.buckets.len();
    for i in [0, n / 2, n - 1] {
        let x = LEFT + slot * i as f64 + slot / 2.0;
        let label = h.buckets[i].start.strftime(h.window.time_format()).to_string();
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" class="axis">{label}</text>"#,
            HEIGHT - 6.0
        );
    }
}

/// The y axis: its top value and a base line.
fn y_axis(out: &mut String, top: &str) {
    let base = HEIGHT - BOTTOM;
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{top}</text><text x="{:.1}" y="{base:.1}" text-anchor="end" class="axis">0</text><line x1="{LEFT}" y1="{base:.1}" x2="{WIDTH}" y2="{base:.1}" class="base"/>"#,
        LEFT - 6.0,
        TOP + 10.0,
        LEFT - 6.0,
    );
}

/// Deliveries per bucket, stacked by outcome: succeeded solid, in progress
/// dotted, failed hatched (told apart without colour), each bucket titled
/// with its counts.
pub fn deliveries_svg(h: &Health) -> String {
    let top = nice(u64::from(h.buckets.iter().map(Bucket::total).max().unwrap_or(0)).max(1));
    let slot = (WIDTH - LEFT) / h.buckets.len() as f64;
    let scale = (HEIGHT - BOTTOM - TOP) / top as f64;
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" id="deliveries-chart" role="img" aria-labelledby="deliveries-chart-title"><title id="deliveries-chart-title">Deliveries per {} over the last {}, by outcome</title><defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" class="failed-fill"/><line x1="0" y1="0" x2="0" y2="6" class="hatch-line"/></pattern><pattern id="dots" width="5" height="5" patternUnits="userSpaceOnUse"><rect width="5" height="5" class="pending-fill"/><circle cx="2.5" cy="2.5" r="1.1" class="dot"/></pattern></defs>"##,
        bucket_name(h.window),
        h.window.name()
    );
    y_axis(&mut out, &top.to_string());
    let base = HEIGHT - BOTTOM;
    for (i, b) in h.buckets.iter().enumerate() {
        let x = LEFT + slot * i as f64 + 1.0;
        let width = (slot - 2.0).max(1.0);
        let _ = write!(
            out,
            r#"<g class="bucket" data-succeeded="{}" data-in-progress="{}" data-failed="{}"><title>{}: {} succeeded, {} in progress, {} failed</title>"#,
            b.succeeded,
            b.in_progress,
            b.failed,
            b.start.strftime(h.window.time_format()),
            b.succeeded,
            b.in_progress,
            b.failed
        );
        let mut y = base;
        for (count, class) in [
            (b.succeeded, "succeeded"),
            (b.in_progress, "in-progress"),
            (b.failed, "failed"),
        ] {
            if count == 0 {
                continue;
            }
            let height = f64::from(count) * scale;
            y -= height;
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" class="{class}"/>"#
            );
        }
        out.push_str("</g>");
    }
    x_labels(&mut out, h, slot);
    out.push_str("</svg>");
    out
}

/// p50 (solid, round marks) and p95 (dashed, square marks) handler latency
/// per bucket.
pub fn latency_svg(h: &Health) -> String {
    let most = h
        .buckets
        .iter()
        .filter_map(|b| b.latency)
        .map(|(_, p95)| p95)
        .max()
        .unwrap_or(0);
    let top = nice(most.max(1));
    let slot = (WIDTH - LEFT) / h.buckets.len() as f64;
    let scale = (HEIGHT - BOTTOM - TOP) / top as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" id="latency-chart" role="img" aria-labelledby="latency-chart-title"><title id="latency-chart-title">Handler latency per {} over the last {}: p50 and p95 in milliseconds</title>"#,
        bucket_name(h.window),
        h.window.name()
    );
    y_axis(&mut out, &format!("{top} ms"));
    let base = HEIGHT - BOTTOM;
    let point = |i: usize, ms: u64| (LEFT + slot * i as f64 + slot / 2.0, base - ms as f64 * scale);
    for (series, pick) in [("p50", 0usize), ("p95", 1)] {
        let points: Vec<(f64, f64, u64, usize)> = h
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.latency.map(|l| if pick == 0 { l.0 } else { l.1 }).map(|ms| (i, ms)))
            .map(|(i, ms)| {
                let (x, y) = point(i, ms);
                (x, y, ms, i)
            })
            .collect();
        let path: Vec<String> = points.iter().map(|(x, y, ..)| format!("{x:.1},{y:.1}")).collect();
        let _ = write!(
            out,
            r#"<g class="series {series}" data-series="{series}" data-points="{}"><polyline points="{}" class="line"/>"#,
            points.len(),
            path.join(" ")
        );
        for (x, y, ms, i) in &points {
            let at = h.buckets[*i].start.strftime(h.window.time_format());
            let mark = if pick == 0 {
                format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="3"/>"#)
            } else {
                format!(r#"<rect x="{:.1}" y="{:.1}" width="6" height="6"/>"#, x - 3.0, y - 3.0)
            };
            let _ = write!(
                out,
                r#"<g class="mark"><title>{at}: {series} {ms} ms</title>{mark}</g>"#
            );
        }
        out.push_str("</g>");
    }
    x_labels(&mut out, h, slot);
    out.push_str("</svg>");
    out
}

fn bucket_name(window: Window) -> &'static str {
    match window {
        Window::Hour => "5 minutes",
        Window::Day => "hour",
        Window::Week => "6 hours",
    }
}

/// Succeeded of the finished ones among `recent`, in percent.
pub fn recent_success_rate(recent: &[DeliverySummary]) -> Option<f64> {
    let finished = recent.iter().filter(|d| d.outcome.is_finished()).count();
    let succeeded = recent.iter().filter(|d| d.outcome == Phase::Succeeded).count();
    (finished > 0).then(|| 100.0 * succeeded as f64 / finished as f64)
}

/// A webhook's recent deliveries (its status's newest 20) as a small
/// strip, oldest left: succeeded short and solid, failed tall and hatched.
pub fn trend_svg(recent: &[DeliverySummary]) -> String {
    let mut out = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 16" class="trend" role="img"><title>The newest deliveries, oldest first: short bars succeeded, tall hatched bars failed, dotted bars in progress</title><defs><pattern id="trend-hatch" width="3" height="3" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="3" class="failed-fill"/><line x1="0" y1="0" x2="0" y2="3" class="hatch-line"/></pattern></defs>"#,
    );
    for (i, d) in recent.iter().rev().take(20).enumerate() {
        let (height, class) = match d.outcome {
            Phase::Succeeded => (6.0, "succeeded"),
            Phase::Failed | Phase::Cancelled => (16.0, "failed"),
            Phase::Pending | Phase::Retrying => (10.0, "in-progress"),
        };
        let _ = write!(
            out,
            r#"<rect x="{}" y="{:.1}" width="4" height="{height:.1}" class="{class}"/>"#,
            i * 5,
            16.0 - height
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::{
        Attempt, DeliverySpec, DeliveryStatus, EventRef, RecordedRequest, RecordedResponse,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn delivery(at: Timestamp, phase: Phase, attempts: &[(Timestamp, u64, bool)]) -> Delivery {
        let mut d = Delivery::new(
            "d",
            DeliverySpec {
                webhook: "w".into(),
                hub: "main".into(),
                event: EventRef {
                    id: "e".into(),
                    name: "x.y".into(),
                    received_at: MicroTime(at),
                    trace: None,
                },
                payload: "{}".into(),
            },
        );
        d.status = Some(DeliveryStatus {
            phase,
            attempt_count: attempts.len() as u32,
            attempts: attempts
                .iter()
                .enumerate()
                .map(|(n, (t, ms, answered))| Attempt {
                    number: n as u32 + 1,
                    time: MicroTime(*t),
                    duration_ms: *ms,
                    rate_limit_wait_ms: None,
                    request: RecordedRequest {
                        method: "POST".into(),
                        url: "https://h/".into(),
                        headers: vec![],
                    },
                    response: answered.then(|| RecordedResponse {
                        status_code: 200,
                        headers: vec![],
                        headers_truncated: false,
                        body: String::new(),
                        body_truncated: false,
                    }),
                    error: (!answered).then(|| "timed out".into()),
                })
                .collect(),
            ..Default::default()
        });
        d
    }

    #[test]
    fn deliveries_land_in_their_bucket_by_outcome_and_the_rates_follow() {
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let ago = |mins: i64| now - SignedDuration::from_mins(mins);
        let deliveries = vec![
            delivery(ago(10), Phase::Succeeded, &[(ago(10), 40, true)]),
            delivery(ago(9), Phase::Succeeded, &[(ago(9), 60, true)]),
            delivery(ago(70), Phase::Failed, &[(ago(70), 5000, false), (ago(65), 900, true)]),
            delivery(ago(30), Phase::Retrying, &[(ago(30), 100, true)]),
            // Older than a day: not in the window.
            delivery(ago(25 * 60), Phase::Succeeded, &[(ago(25 * 60), 1, true)]),
        ];
        let h = compute(&deliveries, Window::Day, now, false);
        assert_eq!(h.buckets.len(), 24);
        let last = &h.buckets[23];
        assert_eq!((last.succeeded, last.in_progress, last.failed), (2, 1, 0));
        assert_eq!(h.buckets[22].failed, 1);
        assert_eq!((h.deliveries, h.succeeded, h.failed), (4, 2, 1));
        assert_eq!(h.success_rate.map(|r| r.round()), Some(67.0));
        assert_eq!(h.attempts_per_delivery, Some(5.0 / 4.0));
        // Answered attempts only: 40, 60, 100, 900.
        assert_eq!(h.latency, Some((60, 900)));
        assert_eq!(last.latency, Some((60, 100)));
        assert!(!h.partial);
        // Read up to the bound and not back to the window's start: partial.
        assert!(compute(&deliveries[..2], Window::Day, now, true).partial);

        let hour = compute(&deliveries, Window::Hour, now, false);
        assert_eq!(hour.buckets.len(), 12);
        assert_eq!(hour.deliveries, 3);
        let svg = deliveries_svg(&hour);
        assert_eq!(svg.matches(r#"<g class="bucket""#).count(), 12);
        assert!(
            svg.contains(r#"data-succeeded="2" data-in-progress="0" data-failed="0""#),
            "{svg}"
        );
        assert!(svg.contains("2 succeeded, 0 in progress, 0 failed"));
        let latency = latency_svg(&hour);
        // Buckets with answered attempts: the 40 and 60 ms one, the 100 ms one.
        assert!(latency.contains(r#"data-series="p50" data-points="2""#), "{latency}");
    }

    #[test]
    fn an_empty_window_draws_empty_charts_and_no_rates() {
        let now = Timestamp::now();
        let h = compute(&[], Window::Week, now, false);
        assert_eq!(
            (h.buckets.len(), h.deliveries, h.success_rate, h.latency),
            (28, 0, None, None)
        );
        assert!(deliveries_svg(&h).contains("</svg>") && latency_svg(&h).contains(r#"data-points="0""#));
        assert_eq!(
            (nice(0), nice(1), nice(3), nice(7), nice(11), nice(120)),
            (1, 1, 5, 10, 20, 200)
        );
        assert_eq!(Window::parse("nonsense"), Window::Day);
    }

    #[test]
    fn the_hub_rows_trend_and_rate_come_from_the_newest_deliveries() {
        let summary = |outcome| DeliverySummary {
            id: "d".into(),
            event: "x.y".into(),
            time: MicroTime(Timestamp::UNIX_EPOCH),
            attempts: 1,
            status_code: None,
            outcome,
        };
        // Newest first, as the status holds them.
        let recent = [
            summary(Phase::Retrying),
            summary(Phase::Failed),
            summary(Phase::Succeeded),
            summary(Phase::Succeeded),
            summary(Phase::Succeeded),
        ];
        assert_eq!(recent_success_rate(&recent), Some(75.0), "3 of the 4 finished");
        assert_eq!(recent_success_rate(&recent[..1]), None);
        let svg = trend_svg(&recent);
        assert_eq!(svg.matches("<rect x=").count(), 5);
        // Oldest left: the last bar is the newest (in progress), the one
        // before it failed (tall).
        assert!(
            svg.contains(r#"<rect x="15" y="0.0" width="4" height="16.0" class="failed"/>"#),
            "{svg}"
        );
        assert!(svg.contains(r#"<rect x="20" y="6.0" width="4" height="10.0" class="in-progress"/>"#));
    }
}
