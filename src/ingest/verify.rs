//! Signed ingest: checking the signatures the CMS's own webhooks (and any
//! Standard Webhooks sender) put on a request, so they can post to a hub
//! without a bearer header. Pure: secrets, headers and the clock are given.

use crate::delivery::signing;
use subtle::ConstantTimeEq;

fn same(a: &str, b: &str) -> bool {
    bool::from(a.trim().as_bytes().ct_eq(b.as_bytes()))
}

/// `X-Amplience-Webhook-Signature`: base64 HMAC-SHA256 of the exact body.
pub fn amplience(secret: &str, body: &[u8], signature: Option<&str>) -> Result<(), String> {
    let presented = signature.ok_or("no X-Amplience-Webhook-Signature header")?;
    if same(presented, &signing::body_signature(secret, body)) {
        Ok(())
    } else {
        Err("X-Amplience-Webhook-Signature does not match the body".into())
    }
}

/// The Standard Webhooks headers of a request.
pub struct StandardHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
/// (any of several space-separated), with the timestamp within `tolerance`
/// seconds of `now`. The message id, which becomes the event id, on success.
pub fn standard_webhooks(
    secret: &str,
    headers: &StandardHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<String, String> {
    let id = headers.id.filter(|i| !i.is_empty()).ok_or("no webhook-id header")?;
    let timestamp: i64 = headers
        .timestamp
        .ok_or("no webhook-timestamp header")?
        .trim()
        .parse()
        .map_err(|_| "webhook-timestamp is not unix seconds".to_string())?;
    // abs_diff: an extreme timestamp cannot overflow the subtraction.
    let skew = now.abs_diff(timestamp);
    if skew > tolerance.unsigned_abs() {
        return Err(format!(
            "webhook-timestamp is {skew}s from now; at most {tolerance}s is accepted (a stale or replayed request)"
        ));
    }
    let signatures = headers.signature.ok_or("no webhook-signature header")?;
    let secret = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
    let expected = signing::standard_signature(secret, id, timestamp, body);
    if signatures.split_whitespace().any(|s| same(s, &expected)) {
        Ok(id.to_string())
    } else {
        Err("webhook-signature does not match the body".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_test_vector_verifies_and_tampering_does_not() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let headers = StandardHeaders {
            id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
            timestamp: Some("1614265330"),
            signature: Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        };
        assert_eq!(
            standard_webhooks(secret, &headers, body, 1614265330, 300).unwrap(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek"
        );
        let tampered = br#"{"test": 2432232315}"#;
        assert!(standard_webhooks(secret, &headers, tampered, 1614265330, 300).is_err());
        let stale = standard_webhooks(secret, &headers, body, 1614265330 + 301, 300).unwrap_err();
        assert!(stale.contains("stale"), "{stale}");
    }

    #[test]
    fn extreme_timestamps_are_refused_not_overflowed() {
        for timestamp in [i64::MIN.to_string(), i64::MAX.to_string()] {
            let headers = StandardHeaders {
                id: Some("msg_1"),
                timestamp: Some(&timestamp),
                signature: Some("v1,AAAA"),
            };
            let err = standard_webhooks(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                &headers,
                b"{}",
                1614265330,
                300,
            )
            .unwrap_err();
            assert!(err.contains("stale"), "{timestamp}: {err}");
        }
    }

    #[test]
    fn amplience_signatures_are_checked_over_the_exact_body() {
        let body = br#"{"name":"dynamic-content.snapshot.published","payload":{}}"#;
        let good = signing::body_signature("cms-secret", body);
        assert!(amplience("cms-secret", body, Some(&good)).is_ok());
        assert!(amplience("cms-secret", &body[1..], Some(&good)).is_err());
        assert!(amplience("other", body, Some(&good)).is_err());
        assert!(
            amplience("cms-secret", body, None)
                .unwrap_err()
                .contains("no X-Amplience")
        );
    }
}
