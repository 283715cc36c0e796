//! Reading an event from an ingest request: the CMS envelope
//! `{"id"?, "name", "payload"}`, or a CloudEvent (structured or binary mode).

use crate::resources::delivery::{MAX_PAYLOAD_DEPTH, json_depth};
use axum::http::HeaderMap;
use serde_json::Value;

/// An event as accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingEvent {
    /// The sender's id, if it gave one (retries with the same id are idempotent).
    pub id: Option<String>,
    pub name: String,
    pub payload: Value,
    /// W3C `traceparent` and `tracestate` as sent: a structured
    /// CloudEvent's distributed-tracing attributes, else the headers.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Why a request is not an event; the message names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error(
        "unsupported media type {0:?}: send application/json, application/cloudevents+json, or a binary-mode CloudEvent (ce-* headers) with application/json data"
    )]
    MediaType(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

/// The longest event id accepted (the Delivery spec allows 256).
pub const MAX_ID_LEN: usize = 256;

/// Parses `body` according to the request's headers.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<IncomingEvent, Rejection> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let binary_cloudevent = headers.contains_key("ce-specversion");
    let mut event = match media.as_str() {
        "application/cloudevents+json" => structured_cloudevent(json(body)?)?,
        "application/json" | "text/json" if binary_cloudevent => binary_cloudevent_event(headers, json(body)?)?,
        "application/json" | "text/json" => envelope(json(body)?)?,
        _ => return Err(Rejection::MediaType(content_type)),
    };
    if let Some(id) = &event.id
        && (id.is_empty() || id.len() > MAX_ID_LEN)
    {
        return Err(Rejection::Invalid(format!("id must be 1 to {MAX_ID_LEN} characters")));
    }
    // One traceparent (several make it invalid); tracestate lines join.
    let mut parents = headers.get_all("traceparent").iter();
    if event.traceparent.is_none()
        && let (Some(only), None) = (parents.next(), parents.next())
    {
        event.traceparent = only.to_str().ok().map(str::to_string);
        let states: Vec<&str> = headers
            .get_all("tracestate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        event.tracestate = (!states.is_empty()).then(|| states.join(","));
    }
    let depth = json_depth(&event.payload);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(Rejection::Invalid(too_deep(&depth.to_string())));
    }
    Ok(event)
}

fn too_deep(depth: &str) -> String {
    format!("payload nests arrays and objects {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} are accepted")
}

fn json(body: &[u8]) -> Result<Value, Rejection> {
    serde_json::from_slice(body).map_err(|e| {
        // serde_json stops at 128 levels; say what the limit here is.
        if e.to_string().starts_with("recursion limit exceeded") {
            Rejection::Invalid(too_deep("more than 128"))
        } else {
            Rejection::Json(e.to_string())
        }
    })
}

fn string_field(object: &serde_json::Map<String, Value>, field: &str) -> Result<Option<String>, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::Invalid(format!("{field} must be a string"))),
    }
}

fn envelope(value: Value) -> Result<IncomingEvent, Rejection> {
    let Value::Object(object) = value else {
        return Err(Rejection::Invalid(
            "the body must be a JSON object {\"name\", \"payload\"}".into(),
        ));
    };
    let name = string_field(&object, "name")?.ok_or_else(|| {
        Rejection::Invalid("name is required: the event name, such as dynamic-content.content-item.updated".into())
    })?;
    Ok(IncomingEvent {
        id: string_field(&object, "id")?,
        name,
        payload: object.get("payload").cloned().unwrap_or(Value::Null),
        traceparent: None,
        tracestate: None,
    })
}

fn structured_cloudevent(value: Value) -> Result<IncomingEvent, Rejection> {
    let Value::Object(object) = value else {
        return Err(Rejection::Invalid(
            "a structured CloudEvent must be a JSON object".into(),
        ));
    };
    let required = |field: &str| {
        string_field(&object, field)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Rejection::Invalid(format!("CloudEvent attribute {field} is required")))
    };
    let version = required("specversion")?;
    if version != "1.0" {
        return Err(Rejection::Invalid(format!(
            "CloudEvent specversion {version:?} is not supported; use \"1.0\""
        )));
    }
    required("source")?;
    let payload = match (object.get("data"), string_field(&object, "data_base64")?) {
        (Some(data), _) => data.clone(),
        (None, Some(_)) => {
            return Err(Rejection::Invalid(
                "CloudEvent data_base64 is not supported; send JSON data".into(),
            ));
        }
        (None, None) => Value::Null,
    };
    // The distributed-tracing extension; a malformed one is ignored, as
    // a trace never decides whether an event is accepted.
    let attribute = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
    Ok(IncomingEvent {
        id: Some(required("id")?),
        name: required("type")?,
        payload,
        traceparent: attribute("traceparent"),
        tracestate: attribute("tracestate"),
    })
}

fn binary_cloudevent_event(headers: &HeaderMap, data: Value) -> Result<IncomingEvent, Rejection> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Rejection::Invalid(format!("CloudEvent header {name} is required")))
    };
    let version = header("ce-specversion")?;
    if version != "1.0" {
        return Err(Rejection::Invalid(format!(
            "CloudEvent specversion {version:?} is not supported; use \"1.0\""
        )));
    }
    header("ce-source")?;
    Ok(IncomingEvent {
        id: Some(header("ce-id")?),
        name: header("ce-type")?,
        payload: data,
        traceparent: None,
        tracestate: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn envelope_with_and_without_id() {
        let h = headers(&[("content-type", "application/json; charset=utf-8")]);
        let e = parse(
            &h,
            br#"{"name":"dynamic-content.edition.scheduled","payload":{"id":"ed-1"}}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            IncomingEvent {
                id: None,
                name: "dynamic-content.edition.scheduled".into(),
                payload: json!({"id":"ed-1"}),
                traceparent: None,
                tracestate: None,
            }
        );
        let e = parse(&h, br#"{"id":"evt-9","name":"x.y","payload":null}"#).unwrap();
        assert_eq!(e.id.as_deref(), Some("evt-9"));
    }

    #[test]
    fn structured_cloudevent_maps_type_id_and_data() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = br#"{"specversion":"1.0","id":"ce-1","source":"/cms","type":"dynamic-content.snapshot.published","data":{"a":1}}"#;
        let e = parse(&h, body).unwrap();
        assert_eq!(
            (e.id.as_deref(), e.name.as_str()),
            (Some("ce-1"), "dynamic-content.snapshot.published")
        );
        assert_eq!(e.payload, json!({"a":1}));
    }

    #[test]
    fn binary_cloudevent_reads_ce_headers() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "ce-2"),
            ("ce-source", "/cms"),
            ("ce-type", "dynamic-content.edition.published"),
        ]);
        let e = parse(&h, br#"{"edition":"e-1"}"#).unwrap();
        assert_eq!(
            (e.id.as_deref(), e.name.as_str()),
            (Some("ce-2"), "dynamic-content.edition.published")
        );
        assert_eq!(e.payload, json!({"edition":"e-1"}));
    }

    #[test]
    fn rejections_say_what_is_wrong() {
        let json_h = headers(&[("content-type", "application/json")]);
        assert!(matches!(parse(&json_h, b"{not json"), Err(Rejection::Json(_))));
        assert!(
            matches!(parse(&json_h, br#"{"payload":{}}"#), Err(Rejection::Invalid(m)) if m.contains("name is required"))
        );
        assert!(
            matches!(parse(&json_h, br#"{"name":5}"#), Err(Rejection::Invalid(m)) if m.contains("name must be a string"))
        );
        assert!(matches!(
            parse(&headers(&[("content-type", "text/plain")]), b"{}"),
            Err(Rejection::MediaType(_))
        ));
        assert!(matches!(parse(&HeaderMap::new(), b"{}"), Err(Rejection::MediaType(_))));
        let ce = headers(&[("content-type", "application/cloudevents+json")]);
        assert!(
            matches!(parse(&ce, br#"{"specversion":"1.0","id":"x","type":"t"}"#), Err(Rejection::Invalid(m)) if m.contains("source"))
        );
        assert!(
            matches!(parse(&ce, br#"{"specversion":"0.3","id":"x","source":"s","type":"t"}"#), Err(Rejection::Invalid(m)) if m.contains("specversion"))
        );
        let long = format!(r#"{{"id":"{}","name":"a.b"}}"#, "x".repeat(300));
        assert!(matches!(parse(&json_h, long.as_bytes()), Err(Rejection::Invalid(m)) if m.contains("id must be")));
    }

    #[test]
    fn payloads_nested_past_the_limit_are_refused_naming_it() {
        let json_h = headers(&[("content-type", "application/json")]);
        let nested = |levels: usize| {
            format!(
                r#"{{"name":"a.b","payload":{}1{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        // The payload object itself is not counted: `[[1]]` is 2 levels.
        assert!(parse(&json_h, nested(MAX_PAYLOAD_DEPTH + 1).as_bytes()).is_ok());
        for levels in [MAX_PAYLOAD_DEPTH + 2, 126, 500] {
            let err = parse(&json_h, nested(levels).as_bytes()).unwrap_err();
            assert!(
                matches!(&err, Rejection::Invalid(m) if m.contains("at most 32")),
                "{levels}: {err}"
            );
        }
    }

    #[test]
    fn trace_context_comes_from_a_cloudevents_attributes_else_the_headers() {
        const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        const OTHER: &str = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut h = headers(&[("content-type", "application/json"), ("traceparent", PARENT)]);
        h.append("tracestate", HeaderValue::from_static("a=1"));
        h.append("tracestate", HeaderValue::from_static("b=2"));
        let e = parse(&h, br#"{"name":"x.y","payload":{}}"#).unwrap();
        assert_eq!(
            (e.traceparent.as_deref(), e.tracestate.as_deref()),
            (Some(PARENT), Some("a=1,b=2"))
        );
        // Two traceparent headers are no trace context at all.
        h.append("traceparent", HeaderValue::from_static(OTHER));
        let e = parse(&h, br#"{"name":"x.y","payload":{}}"#).unwrap();
        assert_eq!((e.traceparent, e.tracestate), (None, None));
        // A structured CloudEvent's own attributes come first.
        let h = headers(&[("content-type", "application/cloudevents+json"), ("traceparent", OTHER)]);
        let body = json!({"specversion": "1.0", "id": "e1", "source": "/cms", "type": "x.y",
            "traceparent": PARENT, "tracestate": "v=1", "data": {}});
        let e = parse(&h, body.to_string().as_bytes()).unwrap();
        assert_eq!(
            (e.traceparent.as_deref(), e.tracestate.as_deref()),
            (Some(PARENT), Some("v=1"))
        );
    }
}
