//! W3C Trace Context (https://www.w3.org/TR/trace-context/): the trace an
//! event came with is kept with its deliveries, and every attempt's request
//! carries a child of it, so the CMS's, hookrelay's and the handler's spans
//! are one trace.

use crate::resources::delivery::TraceContext;

/// The longest `tracestate` passed on (the spec's limit for propagation).
pub const MAX_TRACESTATE: usize = 512;

/// A parsed `traceparent`: trace id, parent span id, flags (hex, lower case).
#[derive(Debug, PartialEq, Eq)]
pub struct Parent<'a> {
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub flags: &'a str,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a `traceparent` header value as the spec says a receiver must:
/// version 00 exactly, later versions by their first four fields; `None`
/// for anything invalid (the trace then starts anew).
pub fn parse(value: &str) -> Option<Parent<'_>> {
    let value = value.trim_matches([' ', '\t']);
    let version = value.get(0..2)?;
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    let rest = match (version, value.len()) {
        ("00", 55) => value,
        ("00", _) => return None,
        (_, 55) => value,
        (_, n) if n > 55 && value.as_bytes()[55] == b'-' => &value[..55],
        _ => return None,
    };
    let mut fields = rest.split('-');
    let (_, trace_id, span_id, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let valid = lower_hex(trace_id, 32)
        && lower_hex(span_id, 16)
        && lower_hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && span_id.bytes().any(|b| b != b'0');
    valid.then_some(Parent {
        trace_id,
        span_id,
        flags,
    })
}

/// A new random span id (16 hex digits, never all zeros).
pub fn new_span_id() -> String {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

/// A new random trace id (32 hex digits, never all zeros).
fn new_trace_id() -> String {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return format!("{id:032x}");
        }
    }
}

/// The event's trace context at ingest: ingest's span as a child of the
/// sender's (its trace, its flags, its `tracestate`), or the root of a new
/// sampled trace when the sender sent none or an invalid one (whose
/// `tracestate` is then dropped, as the spec says).
pub fn at_ingest(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
    match traceparent.and_then(parse) {
        Some(parent) => TraceContext {
            traceparent: format!("00-{}-{}-{}", parent.trace_id, new_span_id(), parent.flags),
            tracestate: tracestate.and_then(passable_tracestate),
        },
        None => TraceContext {
            traceparent: format!("00-{}-{}-01", new_trace_id(), new_span_id()),
            tracestate: None,
        },
    }
}

/// `tracestate` as it is passed on: trimmed, printable ASCII, within the
/// length limit; otherwise not at all.
fn passable_tracestate(value: &str) -> Option<String> {
    let value = value.trim_matches([' ', '\t', ',']);
    let printable = value.bytes().all(|b| (0x20..0x7f).contains(&b));
    (!value.is_empty() && printable && value.len() <= MAX_TRACESTATE).then(|| value.to_string())
}

/// The `traceparent` of a new span that is a child of the event's (ingest's)
/// span: an attempt, a store write.
pub fn child_span(trace: &TraceContext) -> Option<String> {
    let parent = parse(&trace.traceparent)?;
    Some(format!("00-{}-{}-{}", parent.trace_id, new_span_id(), parent.flags))
}

/// The trace headers of an attempt whose span is `traceparent`: it, and
/// the event's `tracestate`, if any.
pub fn attempt_headers(traceparent: &str, trace: &TraceContext) -> Vec<(&'static str, String)> {
    let mut headers = vec![("traceparent", traceparent.to_string())];
    headers.extend(trace.tracestate.clone().map(|state| ("tracestate", state)));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMS: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_parses_and_invalid_values_do_not() {
        assert_eq!(
            parse(CMS),
            Some(Parent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                span_id: "00f067aa0ba902b7",
                flags: "01"
            })
        );
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(parse(invalid), None, "{invalid:?}");
        }
        // A later version: its first four fields, whatever follows.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert_eq!(
            parse(future).map(|p| p.trace_id),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn ingest_continues_the_senders_trace_or_starts_one() {
        let continued = at_ingest(Some(CMS), Some("vendor=abc, other=1"));
        let parent = parse(&continued.traceparent).unwrap();
        assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.flags, "01");
        assert_ne!(parent.span_id, "00f067aa0ba902b7", "ingest's own span");
        assert_eq!(continued.tracestate.as_deref(), Some("vendor=abc, other=1"));
        assert_eq!(continued.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");

        let unsampled = at_ingest(Some(&CMS.replace("-01", "-00")), None);
        assert!(unsampled.traceparent.ends_with("-00"), "the sender's flags are kept");

        for (sent, state) in [(None, None), (Some("garbage"), Some("vendor=abc"))] {
            let started = at_ingest(sent, state);
            let parent = parse(&started.traceparent).expect("a valid traceparent");
            assert_eq!(parent.flags, "01");
            assert_eq!(started.tracestate, None, "no tracestate without a valid parent");
        }
        assert_ne!(at_ingest(None, None).trace_id(), at_ingest(None, None).trace_id());
        let long = "v=".to_string() + &"x".repeat(MAX_TRACESTATE);
        assert_eq!(at_ingest(Some(CMS), Some(&long)).tracestate, None);
        assert_eq!(at_ingest(Some(CMS), Some("v=\u{7}")).tracestate, None);
    }

    #[test]
    fn each_attempt_is_a_new_child_span_of_the_events_trace() {
        let mut event = at_ingest(Some(CMS), None);
        let (a, b) = (child_span(&event).unwrap(), child_span(&event).unwrap());
        let (pa, pb) = (parse(&a).unwrap(), parse(&b).unwrap());
        assert_eq!((pa.trace_id, pb.trace_id), (event.trace_id(), event.trace_id()));
        assert_ne!(pa.span_id, pb.span_id);
        assert_ne!(pa.span_id, parse(&event.traceparent).unwrap().span_id);
        event.tracestate = Some("cms=1".into());
        assert_eq!(
            attempt_headers(&a, &event),
            [("traceparent", a.clone()), ("tracestate", "cms=1".to_string())]
        );
    }
}
