//! Request signatures: the CMS's body signature and Standard Webhooks'
//! (`v1`, HMAC-SHA256 with the shared secret; `v1a`, ed25519 with the
//! webhook's private key, verified with its public key).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The CMS signature (`X-Amplience-Webhook-Signature`): base64 of
/// HMAC-SHA256 over the exact body bytes, keyed with the secret's UTF-8 bytes.
/// Byte-compatible with the CMS SDK's `WebhookSignature.calculate`.
pub fn body_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The key Standard Webhooks libraries derive from `whsec_<secret>`: the
/// base64 decoding of the secret. A secret that is not valid base64 (a value
/// a user chose) is used as raw bytes, which is what receivers then configure.
pub fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    STANDARD.decode(secret).unwrap_or_else(|_| secret.as_bytes().to_vec())
}

/// The `whsec_…` value Standard Webhooks libraries take for `secret`. They
/// base64-decode what follows the prefix; hookrelay signs with
/// `standard_webhooks_key`, so this is that key encoded (for a base64 secret,
/// the secret itself). `whsec_<secret>` is right only for base64 secrets.
pub fn standard_webhooks_secret(secret: &str) -> String {
    format!("whsec_{}", STANDARD.encode(standard_webhooks_key(secret)))
}

/// One Standard Webhooks signature, `v1,<base64 HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")>`.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(&standard_webhooks_key(secret)).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: the current secret's signature, then the
/// previous one's while a rotation overlap lasts, space-separated.
pub fn standard_signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| standard_signature(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The prefix of an ed25519 private key (its 32-byte seed, base64), as
/// Standard Webhooks writes it.
pub const PRIVATE_KEY_PREFIX: &str = "whsk_";
/// The prefix of an ed25519 public key (32 bytes, base64).
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// An ed25519 key pair from a `whsk_` value: the 32-byte seed, or the
/// 64-byte form (seed then public key) some libraries write.
pub fn key_pair(private_key: &str) -> Result<ring::signature::Ed25519KeyPair, String> {
    let encoded = private_key
        .strip_prefix(PRIVATE_KEY_PREFIX)
        .ok_or("the signing key does not start with whsk_")?;
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "the signing key is not base64 after whsk_")?;
    let seed = match bytes.len() {
        32 | 64 => &bytes[..32],
        n => {
            return Err(format!(
                "the signing key holds {n} bytes; an ed25519 key holds 32 (or 64)"
            ));
        }
    };
    ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| format!("the signing key is refused: {e}"))
}

/// A new private key (`whsk_<base64 of 32 random bytes>`) from the OS's CSPRNG.
pub fn generate_private_key() -> String {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    // Without randomness from the OS there is no safe key: fatal.
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .expect("the OS supplies randomness");
    format!("{PRIVATE_KEY_PREFIX}{}", STANDARD.encode(seed))
}

/// The `whpk_` public key receivers verify `v1a` signatures with.
pub fn public_key(private_key: &str) -> Result<String, String> {
    use ring::signature::KeyPair;
    let pair = key_pair(private_key)?;
    Ok(format!(
        "{PUBLIC_KEY_PREFIX}{}",
        STANDARD.encode(pair.public_key().as_ref())
    ))
}

/// One asymmetric Standard Webhooks signature, `v1a,<base64 ed25519
/// signature of "{id}.{timestamp}.{body}">`.
pub fn asymmetric_signature(pair: &ring::signature::Ed25519KeyPair, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut message = Vec::with_capacity(id.len() + body.len() + 24);
    message.extend_from_slice(id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    format!("v1a,{}", STANDARD.encode(pair.sign(&message).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_signature_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = body_signature("Jefe", b"what do ya want for nothing?");
        let expected = STANDARD.encode(
            [
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a,
                0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43,
            ]
            .as_slice(),
        );
        assert_eq!(sig, expected);
    }

    #[test]
    fn body_signature_covers_the_exact_bytes_including_non_ascii() {
        let body = "{\"name\":\"dynamic-content.content-item.updated\",\"payload\":{\"label\":\"Grüße 🌍\"}}";
        let a = body_signature("secret", body.as_bytes());
        let b = body_signature("secret", body.replace("🌍", "🌎").as_bytes());
        assert_ne!(a, b);
        assert_eq!(a, body_signature("secret", body.as_bytes()));
    }

    #[test]
    fn standard_signature_matches_the_specification_example() {
        // The example from the Standard Webhooks specification.
        let sig = standard_signature(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_header_carries_both_signatures_newest_first() {
        let header = standard_signature_header(&["bmV3", "b2xk"], "id", 1, b"{}");
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], standard_signature("bmV3", "id", 1, b"{}"));
        assert_eq!(parts[1], standard_signature("b2xk", "id", 1, b"{}"));
    }

    #[test]
    fn the_published_whsec_value_verifies_with_the_standard_webhooks_library() {
        let body = br#"{"name":"dynamic-content.snapshot.published","payload":{"id":"s-1"}}"#;
        let now = jiff::Timestamp::now().as_second();
        let generated = "a".repeat(64) + &"Z9".repeat(32);
        for secret in [
            "my-own-secret-value!",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            generated.as_str(),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert("webhook-id", "shop-0123".parse().unwrap());
            headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
            let signature = standard_signature_header(&[secret], "shop-0123", now, body);
            headers.insert("webhook-signature", signature.parse().unwrap());
            let published = standard_webhooks_secret(secret);
            standardwebhooks::Webhook::new(&published)
                .unwrap()
                .verify(body, &headers)
                .unwrap_or_else(|e| panic!("{secret}: {published} does not verify: {e}"));
        }
        // What the docs used to say, `whsec_<secret>`, fails for a secret
        // that is not base64.
        assert!(standardwebhooks::Webhook::new("whsec_my-own-secret-value!").is_err());
        // For a base64 secret the published value is `whsec_<secret>`.
        assert_eq!(standard_webhooks_secret(&generated), format!("whsec_{generated}"));
    }

    /// Verifies a `v1a` signature with ed25519-dalek, an implementation
    /// other than the one hookrelay signs with (ring).
    fn verifies(public: &str, signature: &str, id: &str, timestamp: i64, body: &[u8]) -> bool {
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        let key: [u8; 32] = STANDARD
            .decode(public.strip_prefix("whpk_").unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let signature: [u8; 64] = STANDARD
            .decode(signature.strip_prefix("v1a,").unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let message = [format!("{id}.{timestamp}.").as_bytes(), body].concat();
        VerifyingKey::from_bytes(&key)
            .unwrap()
            .verify(&message, &Signature::from_bytes(&signature))
            .is_ok()
    }

    #[test]
    fn asymmetric_signatures_verify_with_another_ed25519_implementation() {
        let private = generate_private_key();
        assert!(private.starts_with("whsk_"));
        assert_ne!(private, generate_private_key(), "each key is new");
        let public = public_key(&private).unwrap();
        let body = br#"{"name":"dynamic-content.content-item.updated","payload":{"id":"c-1"}}"#;
        let signature = asymmetric_signature(&key_pair(&private).unwrap(), "shop-0123", 1_614_265_330, body);
        assert!(verifies(&public, &signature, "shop-0123", 1_614_265_330, body));
        // Any other body, id or time, or another key: refused.
        assert!(!verifies(&public, &signature, "shop-0123", 1_614_265_330, b"{}"));
        assert!(!verifies(&public, &signature, "shop-0124", 1_614_265_330, body));
        assert!(!verifies(&public, &signature, "shop-0123", 1_614_265_331, body));
        let other = public_key(&generate_private_key()).unwrap();
        assert!(!verifies(&other, &signature, "shop-0123", 1_614_265_330, body));
    }

    #[test]
    fn the_public_key_is_the_one_ed25519_derives_from_the_seed() {
        // RFC 8032, 7.1, TEST 1: secret key 9d61…7f60, public key d75a…511a.
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len() / 2)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        };
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = public_key(&format!("whsk_{}", STANDARD.encode(&seed))).unwrap();
        let expected = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        assert_eq!(public, format!("whpk_{}", STANDARD.encode(expected)));
    }

    #[test]
    fn malformed_private_keys_are_refused_with_the_reason() {
        assert!(key_pair("abc").unwrap_err().contains("whsk_"));
        assert!(key_pair("whsk_!!!").unwrap_err().contains("base64"));
        assert!(key_pair("whsk_aGk=").unwrap_err().contains("2 bytes"));
    }

    #[test]
    fn non_base64_secrets_are_used_as_raw_bytes() {
        assert_eq!(standard_webhooks_key("not base64!"), b"not base64!".to_vec());
        assert_eq!(standard_webhooks_key("aGk="), b"hi".to_vec());
    }
}
