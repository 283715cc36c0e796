//! Building the HTTP request of an attempt, and its record with secret
//! values redacted. Pure: everything it needs is passed in.

use super::signing;
use crate::resources::delivery::{Delivery, Header, InvalidPayload};
use crate::template;
use serde_json::value::RawValue;

/// What replaces a value read from a Secret in recorded headers.
pub const REDACTED: &str = "<redacted>";
/// The CMS's signature header, unless the hub names another.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Amplience-Webhook-Signature";

/// A custom header with its value resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedHeader {
    pub name: String,
    pub value: String,
    /// Read from a Secret: redacted in records.
    pub secret: bool,
}

/// The signing secrets of an attempt: the current one and, during a rotation
/// overlap, the previous one; the same for its ed25519 keys.
pub struct SigningKeys<'a> {
    pub header: &'a str,
    pub current: &'a str,
    pub previous: Option<&'a str>,
    /// `v1` signatures with the secrets (schemes symmetric and both).
    pub symmetric: bool,
    /// `v1a` signatures with these keys, current first (asymmetric and both).
    pub asymmetric: &'a [ring::signature::Ed25519KeyPair],
}

/// A request ready to send, and how it is recorded.
#[derive(Debug)]
pub struct Outgoing {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `headers` with secret values replaced by `REDACTED`.
    pub recorded_headers: Vec<Header>,
}

/// `url` as recorded: credentials in it (`https://user:pass@host/`) read
/// `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    }
}

/// Why no body can be made for a delivery.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The stored payload is unusable: no attempt can ever succeed.
    #[error(transparent)]
    Payload(#[from] InvalidPayload),
    #[error(transparent)]
    Template(#[from] template::TemplateError),
}

/// The CMS envelope, with the payload's text inserted as stored.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    name: &'a str,
    payload: &'a RawValue,
}

/// The body: the CMS envelope `{"name", "payload"}`, or the custom payload.
pub fn body(delivery: &Delivery, custom_payload: Option<&str>) -> Result<Vec<u8>, BodyError> {
    match custom_payload {
        None => {
            let payload = delivery.spec.payload_raw()?;
            let envelope = Envelope {
                name: &delivery.spec.event.name,
                payload: &payload,
            };
            Ok(serde_json::to_vec(&envelope).expect("a string and a raw value serialise"))
        }
        Some(t) => Ok(template::render(t, &delivery.event_document()?)?.into_bytes()),
    }
}

/// The `webhook-signature` header's signatures, space-separated: `v1` with
/// each secret and `v1a` with each key, as the scheme says.
fn standard_signatures(keys: &SigningKeys<'_>, secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signatures = Vec::with_capacity(4);
    if keys.symmetric {
        signatures.push(signing::standard_signature_header(secrets, id, timestamp, body));
    }
    signatures.extend(
        keys.asymmetric
            .iter()
            .map(|pair| signing::asymmetric_signature(pair, id, timestamp, body)),
    );
    signatures.join(" ")
}

/// Assembles the request: signatures over the exact body, Standard Webhooks
/// headers under the delivery id, then custom headers.
pub fn build(
    delivery_id: &str,
    method: &'static str,
    url: &str,
    body: Vec<u8>,
    keys: &SigningKeys<'_>,
    custom: &[ResolvedHeader],
    timestamp: i64,
) -> Outgoing {
    let mut secrets = vec![keys.current];
    secrets.extend(keys.previous);
    let mut headers: Vec<(String, String, bool)> = vec![
        ("Content-Type".into(), "application/json".into(), false),
        ("User-Agent".into(), format!("hookrelay/{}", crate::VERSION), false),
        (
            keys.header.to_string(),
            signing::body_signature(keys.current, &body),
            false,
        ),
        ("webhook-id".into(), delivery_id.to_string(), false),
        ("webhook-timestamp".into(), timestamp.to_string(), false),
        (
            "webhook-signature".into(),
            standard_signatures(keys, &secrets, delivery_id, timestamp, &body),
            false,
        ),
    ];
    headers.extend(custom.iter().map(|h| (h.name.clone(), h.value.clone(), h.secret)));
    let recorded_headers = headers
        .iter()
        .map(|(name, value, secret)| Header {
            name: name.clone(),
            value: if *secret { REDACTED.to_string() } else { value.clone() },
        })
        .collect();
    Outgoing {
        method,
        url: url.to_string(),
        headers: headers.into_iter().map(|(n, v, _)| (n, v)).collect(),
        body,
        recorded_headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::{DeliverySpec, EventRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::{Value, json};

    fn delivery() -> Delivery {
        Delivery::new(
            "shop-0123456789abcdef",
            DeliverySpec {
                webhook: "shop".into(),
                hub: "main".into(),
                event: EventRef {
                    id: "evt-1".into(),
                    name: "dynamic-content.content-item.updated".into(),
                    received_at: MicroTime("2026-11-22T10:00:00Z".parse().unwrap()),
                    trace: None,
                },
                payload: json!({ "id": "c-1", "label": "Grüße" }).to_string(),
            },
        )
    }

    fn keys<'a>(previous: Option<&'a str>) -> SigningKeys<'a> {
        SigningKeys {
            header: DEFAULT_SIGNATURE_HEADER,
            current: "current-secret",
            previous,
            symmetric: true,
            asymmetric: &[],
        }
    }

    fn header<'a>(o: &'a Outgoing, name: &str) -> Option<&'a str> {
        o.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("https://user:s3cr3t@hooks.example.com/in?x=@y"),
            "https://<redacted>@hooks.example.com/in?x=@y"
        );
        assert_eq!(
            redact_url("http://tok@127.0.0.1:8080"),
            "http://<redacted>@127.0.0.1:8080"
        );
        assert_eq!(
            redact_url("https://hooks.example.com/a@b"),
            "https://hooks.example.com/a@b"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn default_body_is_the_cms_envelope() {
        let b = body(&delivery(), None).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({ "name": "dynamic-content.content-item.updated", "payload": { "id": "c-1", "label": "Grüße" } })
        );
    }

    #[test]
    fn an_undecodable_payload_is_a_payload_error_not_a_panic() {
        let mut d = delivery();
        d.spec.payload = "{not json".into();
        assert!(matches!(body(&d, None), Err(BodyError::Payload(_))));
        assert!(matches!(body(&d, Some("{{name}}")), Err(BodyError::Payload(_))));
    }

    #[test]
    fn custom_payload_is_rendered_with_the_event() {
        let b = body(
            &delivery(),
            Some(r#"{"item": {{json payload.id}}, "event": "{{name}}"}"#),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"item": "c-1", "event": "dynamic-content.content-item.updated"}"#
        );
    }

    #[test]
    fn request_carries_both_signature_schemes_over_the_exact_body() {
        let body = body(&delivery(), None).unwrap();
        let o = build(
            "shop-0123456789abcdef",
            "POST",
            "http://127.0.0.1/h",
            body.clone(),
            &keys(None),
            &[],
            1_700_000_000,
        );
        assert_eq!(
            header(&o, "X-Amplience-Webhook-Signature"),
            Some(signing::body_signature("current-secret", &body).as_str())
        );
        assert_eq!(header(&o, "webhook-id"), Some("shop-0123456789abcdef"));
        assert_eq!(header(&o, "webhook-timestamp"), Some("1700000000"));
        assert_eq!(
            header(&o, "webhook-signature"),
            Some(signing::standard_signature("current-secret", "shop-0123456789abcdef", 1_700_000_000, &body).as_str())
        );
        assert_eq!(header(&o, "content-type"), Some("application/json"));
        assert!(header(&o, "user-agent").unwrap().starts_with("hookrelay/"));
        assert_eq!(o.body, body);
    }

    #[test]
    fn during_rotation_the_standard_header_has_two_signatures_and_the_cms_one_the_new() {
        let o = build(
            "id",
            "POST",
            "http://127.0.0.1/h",
            b"{}".to_vec(),
            &keys(Some("old-secret")),
            &[],
            1,
        );
        assert_eq!(header(&o, "webhook-signature").unwrap().split(' ').count(), 2);
        assert_eq!(
            header(&o, "X-Amplience-Webhook-Signature"),
            Some(signing::body_signature("current-secret", b"{}").as_str())
        );
    }

    #[test]
    fn secret_header_values_are_sent_but_redacted_in_the_record() {
        let custom = [
            ResolvedHeader {
                name: "X-Api-Key".into(),
                value: "s3cr3t".into(),
                secret: true,
            },
            ResolvedHeader {
                name: "X-Team".into(),
                value: "content".into(),
                secret: false,
            },
        ];
        let o = build(
            "id",
            "PUT",
            "http://127.0.0.1/h",
            b"{}".to_vec(),
            &keys(None),
            &custom,
            1,
        );
        assert_eq!(header(&o, "X-Api-Key"), Some("s3cr3t"));
        let recorded = |n: &str| o.recorded_headers.iter().find(|h| h.name == n).unwrap().value.clone();
        assert_eq!(recorded("X-Api-Key"), REDACTED);
        assert_eq!(recorded("X-Team"), "content");
        assert!(!format!("{:?}", o.recorded_headers).contains("s3cr3t"));
    }
}
