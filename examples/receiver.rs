//! A webhook handler that verifies hookrelay's signatures and prints each
//! event: the receiver's side of the contract, in a few lines.
//!
//!     cargo run --example receiver -- --listen 127.0.0.1:8090 --secret "$SECRET"
//!
//! Give `--secret` once per webhook that posts here. A request is accepted
//! when both signatures verify with one of them:
//! - `X-Amplience-Webhook-Signature`: base64(HMAC-SHA256(secret bytes, body)),
//!   as the CMS SDK's `WebhookSignature.calculate`;
//! - Standard Webhooks: `webhook-signature` holds `v1,<base64(HMAC-SHA256(
//!   base64decode(secret), "{webhook-id}.{webhook-timestamp}.{body}"))>`, one
//!   per active secret, space-separated; the timestamp must be recent.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// Requests older or newer than this are refused (replay protection).
const TOLERANCE_SECONDS: i64 = 300;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time equality of two byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Which check failed, or Ok.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), &'static str> {
    // (Given the secret itself: its Standard Webhooks key is its base64 decoding,
    // or its bytes when it is not base64.)
    let cms = header(headers, "x-amplience-webhook-signature").ok_or("no X-Amplience-Webhook-Signature")?;
    if !same(
        cms.as_bytes(),
        STANDARD.encode(hmac(secret.as_bytes(), &[body])).as_bytes(),
    ) {
        return Err("X-Amplience-Webhook-Signature does not match");
    }
    let id = header(headers, "webhook-id").ok_or("no webhook-id")?;
    let timestamp = header(headers, "webhook-timestamp").ok_or("no webhook-timestamp")?;
    let seconds: i64 = timestamp.parse().map_err(|_| "webhook-timestamp is not a number")?;
    if (now - seconds).abs() > TOLERANCE_SECONDS {
        return Err("webhook-timestamp is too old or too new");
    }
    let key = STANDARD.decode(secret).unwrap_or_else(|_| secret.as_bytes().to_vec());
    let expected = STANDARD.encode(hmac(&key, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]));
    let signatures = header(headers, "webhook-signature").ok_or("no webhook-signature")?;
    let any = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| same(s.as_bytes(), expected.as_bytes()));
    any.then_some(()).ok_or("webhook-signature does not match")
}

async fn handle(State(secrets): State<Arc<Vec<String>>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let results: Vec<Result<(), &str>> = secrets.iter().map(|s| verify(s, &headers, &body, now)).collect();
    let id = header(&headers, "webhook-id").unwrap_or("?");
    if results.iter().any(Result::is_ok) {
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        println!(
            "✔ {id} {} signatures verified: {}",
            event["name"].as_str().unwrap_or("?"),
            event["payload"]
        );
        (StatusCode::OK, "ok".into())
    } else {
        let why = results
            .into_iter()
            .find_map(Result::err)
            .unwrap_or("no secret configured");
        println!("✘ {id} rejected: {why}");
        (StatusCode::UNAUTHORIZED, why.into())
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:8090".to_string();
    let mut secrets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--secret" => secrets.push(args.next().expect("--secret VALUE")),
            other => panic!("unknown argument {other}; use --listen ADDR --secret VALUE..."),
        }
    }
    let app = Router::new().fallback(handle).with_state(Arc::new(secrets));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("receiver listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_show_this_verify_function() {
        let source = include_str!("receiver.rs");
        let start = source.find("fn verify(").unwrap();
        let end = start + source[start..].find("\n}\n").unwrap() + 2;
        assert!(
            include_str!("../docs/concepts/signing.md").contains(&source[start..end]),
            "the Rust snippet in docs/concepts/signing.md is out of date"
        );
    }

    #[test]
    fn accepts_hookrelays_signatures_and_refuses_tampering() {
        let secret = "c2VjcmV0LXZhbHVlLWZvci10ZXN0cw==";
        let body = br#"{"name":"dynamic-content.content-item.updated","payload":{}}"#;
        let mut headers = HeaderMap::new();
        let key = STANDARD.decode(secret).unwrap();
        let standard = STANDARD.encode(hmac(&key, &[b"d-1", b".", b"1700000000", b".", body]));
        headers.insert(
            "x-amplience-webhook-signature",
            STANDARD.encode(hmac(secret.as_bytes(), &[body])).parse().unwrap(),
        );
        headers.insert("webhook-id", "d-1".parse().unwrap());
        headers.insert("webhook-timestamp", "1700000000".parse().unwrap());
        headers.insert("webhook-signature", format!("v1,{standard}").parse().unwrap());
        assert_eq!(verify(secret, &headers, body, 1_700_000_010), Ok(()));
        assert!(verify(secret, &headers, b"{}", 1_700_000_010).is_err());
        assert!(verify("other", &headers, body, 1_700_000_010).is_err());
        assert!(
            verify(secret, &headers, body, 1_700_009_999).is_err(),
            "stale timestamp"
        );
    }
}
