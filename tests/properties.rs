//! Property tests over what tenants and senders control: the ingest parser,
//! filters and templates never panic on arbitrary input, every refusal is a
//! named 4xx, and what is accepted stays within the limits.

use axum::http::{HeaderMap, HeaderValue};
use hookrelay::filters;
use hookrelay::ingest::event::{self, Rejection};
use hookrelay::resources::delivery::{MAX_PAYLOAD_DEPTH, json_depth};
use hookrelay::resources::webhook::WebhookFilter;
use hookrelay::template;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON, nested up to 40 levels (past the limit of 32).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(40, 200, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn headers(content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert("content-type", v);
    }
    h
}

/// What ingest answers for a rejection: always a 4xx, with a message.
fn status_of(rejection: &Rejection) -> u16 {
    match rejection {
        Rejection::MediaType(_) => 415,
        Rejection::Json(_) | Rejection::Invalid(_) => 400,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_refusals_say_why(
        body in prop::collection::vec(any::<u8>(), 0..512),
        content_type in prop_oneof![
            Just("application/json".to_string()),
            Just("application/cloudevents+json".to_string()),
            ".{0,20}",
        ],
    ) {
        match event::parse(&headers(&content_type), &body) {
            Ok(e) => prop_assert!(json_depth(&e.payload) <= MAX_PAYLOAD_DEPTH),
            Err(r) => {
                prop_assert!((400..500).contains(&status_of(&r)));
                prop_assert!(!r.to_string().is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_envelopes_are_accepted_within_limits_or_refused_naming_the_field(
        name in prop_oneof![Just(json!("dynamic-content.snapshot.published")), any_json()],
        id in prop_oneof![Just(Value::Null), ".{0,300}".prop_map(Value::String), any_json()],
        payload in any_json(),
    ) {
        let body = json!({ "id": id, "name": name, "payload": payload }).to_string();
        match event::parse(&headers("application/json"), body.as_bytes()) {
            Ok(e) => {
                prop_assert!(json_depth(&e.payload) <= MAX_PAYLOAD_DEPTH);
                prop_assert!(e.id.as_ref().is_none_or(|i| !i.is_empty() && i.len() <= 256));
            }
            Err(Rejection::Invalid(m)) => prop_assert!(
                ["name", "id", "payload"].iter().any(|f| m.contains(f)),
                "{}", m
            ),
            Err(other) => prop_assert!(false, "a JSON body refused as {:?}", other),
        }
    }

    #[test]
    fn filters_never_panic_on_any_path_or_event(
        path in prop_oneof![".{0,24}", "\\$(\\.[a-z]{1,4}|\\[[0-9]\\]|\\[\\*\\]){0,4}"],
        equal in ".{0,8}",
        event in any_json(),
    ) {
        let filter = WebhookFilter { path, equal: Some(equal), in_: None };
        let checked = filters::check(std::slice::from_ref(&filter));
        let matched = filters::matches(std::slice::from_ref(&filter), &event);
        prop_assert_eq!(checked.is_ok(), matched.is_ok(), "check and match agree on validity");
    }

    #[test]
    fn templates_never_panic_and_accepted_ones_render_within_bounds(
        text in prop_oneof![
            ".{0,64}",
            prop::collection::vec(prop_oneof![
                Just("{{name}}"), Just("{{#each payload}}"), Just("{{/each}}"), Just("{{> p}}"),
                Just("{{#*inline \"p\"}}"), Just("{{/inline}}"), Just("{{json payload}}"),
                Just("{{#if id}}"), Just("{{/if}}"), Just("x"), Just("{{"), Just("}}"),
            ], 0..12).prop_map(|parts| parts.concat()),
        ],
        payload in any_json(),
    ) {
        let data = json!({ "id": "e", "name": "n", "payload": payload });
        match template::check(&text) {
            Ok(()) => {
                if let Ok(out) = template::render(&text, &data) {
                    prop_assert!(out.len() <= template::MAX_OUTPUT);
                }
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(template::render(&text, &data).is_err(), "refused at render too");
            }
        }
    }
}
