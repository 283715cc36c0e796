//! Generated secrets: signing secrets of webhooks and ingest tokens of hubs.
//! Pure functions that build the Secret objects and patches; the reconcilers
//! in `controller` send them. Values never leave this module in any log,
//! Event, status or error.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use rand::TryRngCore;
use rand::distr::{Alphanumeric, Distribution};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Length of generated secrets and tokens, as the CMS generates them.
pub const SECRET_LENGTH: usize = 128;
/// Key of the current value in a generated Secret.
pub const CURRENT_KEY: &str = "secret";
/// Key of the previous value while a rotation overlap lasts.
pub const PREVIOUS_KEY: &str = "previous";
/// Key of a webhook's ed25519 private key (`whsk_…`), with the asymmetric schemes.
pub const PRIVATE_KEY: &str = "private-key";
/// Key of the previous private key while a rotation overlap lasts.
pub const PREVIOUS_PRIVATE_KEY: &str = "previous-private-key";
/// Key of the ingest token in a generated hub Secret.
pub const TOKEN_KEY: &str = "token";
/// Annotation on a generated Secret: when `PREVIOUS_KEY` stops signing (RFC 3339).
pub const PREVIOUS_EXPIRES_ANNOTATION: &str = "hookrelay.dev/previous-expires-at";
/// Annotation on a generated Secret: the `hookrelay.dev/rotate-secret` value
/// its current value answers. Kept with the value, so a rotation is done
/// exactly once per new annotation value even across crashes.
pub const ROTATED_FOR_ANNOTATION: &str = "hookrelay.dev/rotated-for";

/// A new random alphanumeric value from the operating system's CSPRNG.
pub fn generate() -> String {
    // OsRng only fails if the OS cannot supply randomness; there is no safe
    // fallback for a secret, so that is fatal.
    let mut rng = OsRng.unwrap_err();
    Alphanumeric
        .sample_iter(&mut rng)
        .take(SECRET_LENGTH)
        .map(char::from)
        .collect()
}

/// Name of a child object: `{owner}-{suffix}`, shortened with a hash of the
/// owner's name when that would exceed the 253 characters a name may have.
pub fn child_name(owner: &str, suffix: &str) -> String {
    let name = format!("{owner}-{suffix}");
    if name.len() <= 253 {
        return name;
    }
    let digest = Sha256::digest(owner.as_bytes());
    let digest: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let keep = 253 - suffix.len() - 18;
    format!("{}-{digest}-{suffix}", &owner[..keep])
}

/// A new generated Secret holding `value` under `key`, owned by `owner` so it
/// is garbage-collected with it.
pub fn build_generated(
    name: &str,
    namespace: &str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    rotated_for: Option<&str>,
    key: &str,
    value: &str,
) -> Secret {
    let annotations = rotated_for.map(|v| BTreeMap::from([(ROTATED_FOR_ANNOTATION.to_string(), v.to_string())]));
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The value under `key`, if present, UTF-8 and not empty.
/// Label by which a Secret's owner consents to its values being sent in a
/// Webhook's headers. Without it a Webhook author could send any Secret of
/// the namespace to a URL of their choosing.
pub const HEADER_CONSENT_LABEL: &str = "hookrelay.dev/webhook-header";

/// A header's value from a Secret, if its owner consented (the label). The
/// message is the same whether the Secret is missing or unlabelled, so it
/// does not tell a Webhook author which Secrets exist.
pub fn header_value<'a>(secret: Option<&'a Secret>, header: &str, name: &str, key: &str) -> Result<&'a str, String> {
    let secret = consented(secret, HEADER_CONSENT_LABEL)
        .ok_or_else(|| format!("header {header}: {}", not_consented(name, HEADER_CONSENT_LABEL)))?;
    value(secret, key).ok_or_else(|| format!("header {header}: Secret {name} has no non-empty key {key}"))
}

/// `secret` if it exists and its owner set `label` to "true".
pub fn consented<'a>(secret: Option<&'a Secret>, label: &str) -> Option<&'a Secret> {
    secret.filter(|s| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(label))
            .is_some_and(|v| v == "true")
    })
}

/// Why a Secret cannot be used, the same whether it is missing or
/// unlabelled.
pub fn not_consented(name: &str, label: &str) -> String {
    format!("Secret {name} does not exist or is not labelled {label}: \"true\" (its owner's consent to use it)")
}

/// A value from a Secret its owner consented to (`label`), or one message
/// whether the Secret is missing, unlabelled or without the key, so it does
/// not tell a Webhook author which Secrets or keys exist.
pub fn consented_value<'a>(secret: Option<&'a Secret>, label: &str, name: &str, key: &str) -> Result<&'a str, String> {
    consented(secret, label)
        .and_then(|s| value(s, key))
        .ok_or_else(|| {
            format!(
                "Secret {name} does not exist, is not labelled {label}: \"true\" (its owner's consent to use it), or has no non-empty key {key}"
            )
        })
}

pub fn value<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    let bytes = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&bytes.0).ok().filter(|v| !v.is_empty())
}

/// When the previous value of a rotated Secret stops signing, if it has one.
pub fn previous_expires_at(secret: &Secret) -> Option<jiff::Timestamp> {
    secret.data.as_ref()?.get(PREVIOUS_KEY)?;
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(PREVIOUS_EXPIRES_ANNOTATION)?
        .parse()
        .ok()
}

/// The rotation request the Secret's current value answers.
pub fn rotated_for(secret: &Secret) -> Option<&str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(ROTATED_FOR_ANNOTATION)
        .map(String::as_str)
}

/// A merge patch that makes `new_value` (and `new_private_key`, if any)
/// current, answering rotation request `rotated_for`, and keeps the current
/// ones as the previous ones until `expires_at`. The resourceVersion makes
/// it fail with a conflict if the Secret changed since it was read (e.g. a
/// user just replaced the value), so no edit is silently lost.
pub fn rotation_patch(
    secret: &Secret,
    new_value: &str,
    new_private_key: Option<&str>,
    rotated_for: &str,
    expires_at: jiff::Timestamp,
) -> serde_json::Value {
    let mut data = serde_json::Map::new();
    let mut rotate = |current: &str, previous: &str, new: &str| {
        data.insert(current.into(), base64(new.as_bytes()).into());
        let old = value(secret, current).map(|old| base64(old.as_bytes()).into());
        data.insert(previous.into(), old.unwrap_or(serde_json::Value::Null));
    };
    rotate(CURRENT_KEY, PREVIOUS_KEY, new_value);
    if let Some(key) = new_private_key {
        rotate(PRIVATE_KEY, PREVIOUS_PRIVATE_KEY, key);
    }
    serde_json::json!({
        "metadata": {
            "resourceVersion": secret.metadata.resource_version,
            "annotations": {
                PREVIOUS_EXPIRES_ANNOTATION: expires_at.to_string(),
                ROTATED_FOR_ANNOTATION: rotated_for,
            },
        },
        "data": data,
    })
}

/// A merge patch that sets `key` to a new value (the key was missing or empty).
pub fn refill_patch(secret: &Secret, key: &str, new_value: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": { "resourceVersion": secret.metadata.resource_version },
        "data": { key: base64(new_value.as_bytes()) },
    })
}

/// A merge patch that drops an expired previous value.
pub fn expire_previous_patch(secret: &Secret) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "resourceVersion": secret.metadata.resource_version,
            "annotations": { PREVIOUS_EXPIRES_ANNOTATION: null },
        },
        "data": { PREVIOUS_KEY: null, PREVIOUS_PRIVATE_KEY: null },
    })
}

fn base64(bytes: &[u8]) -> String {
    // Serialising a ByteString yields standard base64, the form the API wants.
    match serde_json::to_value(ByteString(bytes.to_vec())) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("ByteString serialises to a string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_secrets_need_their_owners_consent_and_do_not_reveal_existence() {
        let secret = |labelled: bool| Secret {
            metadata: ObjectMeta {
                name: Some("api-key".into()),
                labels: labelled.then(|| [(HEADER_CONSENT_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            data: Some([("key".to_string(), ByteString(b"v".to_vec()))].into()),
            ..Default::default()
        };
        let (labelled, unlabelled) = (secret(true), secret(false));
        assert_eq!(header_value(Some(&labelled), "X-Key", "api-key", "key"), Ok("v"));
        let missing = header_value(None, "X-Key", "api-key", "key").unwrap_err();
        let refused = header_value(Some(&unlabelled), "X-Key", "api-key", "key").unwrap_err();
        assert_eq!(missing, refused, "the same answer whether it exists or not");
        assert!(missing.contains(HEADER_CONSENT_LABEL));
        assert!(
            header_value(Some(&labelled), "X-Key", "api-key", "other")
                .unwrap_err()
                .contains("no non-empty key other")
        );
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "hookrelay.dev/v1alpha1".into(),
            kind: "Webhook".into(),
            name: "w".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn secret_with(current: &str) -> Secret {
        let mut s = build_generated(
            "w-signing",
            "ns",
            owner(),
            BTreeMap::new(),
            Some("r0"),
            CURRENT_KEY,
            current,
        );
        s.metadata.resource_version = Some("42".into());
        s
    }

    #[test]
    fn generated_values_are_128_alphanumeric_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), SECRET_LENGTH);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn generated_secret_is_owned_and_holds_the_value() {
        let s = secret_with("abc");
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(value(&s, CURRENT_KEY), Some("abc"));
        assert_eq!(value(&s, PREVIOUS_KEY), None);
    }

    #[test]
    fn empty_values_count_as_missing() {
        assert_eq!(value(&secret_with(""), CURRENT_KEY), None);
    }

    #[test]
    fn rotation_keeps_the_old_value_as_previous_until_expiry() {
        let s = secret_with("old");
        let at: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(rotated_for(&s), Some("r0"));
        let patch = rotation_patch(&s, "new", None, "r1", at);
        assert_eq!(patch["metadata"]["annotations"][ROTATED_FOR_ANNOTATION], "r1");
        assert_eq!(patch["data"][CURRENT_KEY], base64(b"new"));
        assert_eq!(patch["data"][PREVIOUS_KEY], base64(b"old"));
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(
            patch["metadata"]["annotations"][PREVIOUS_EXPIRES_ANNOTATION],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_private_key_rotates_with_the_secret_and_expires_with_it() {
        let mut s = secret_with("old");
        s.data
            .as_mut()
            .unwrap()
            .insert(PRIVATE_KEY.into(), ByteString(b"whsk_old".to_vec()));
        let at: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let patch = rotation_patch(&s, "new", Some("whsk_new"), "r1", at);
        assert_eq!(patch["data"][PRIVATE_KEY], base64(b"whsk_new"));
        assert_eq!(patch["data"][PREVIOUS_PRIVATE_KEY], base64(b"whsk_old"));
        assert_eq!(patch["data"][PREVIOUS_KEY], base64(b"old"));
        // Without a key to rotate, the key fields are left alone.
        let plain = rotation_patch(&s, "new", None, "r1", at);
        assert!(plain["data"].get(PRIVATE_KEY).is_none());
        let expired = expire_previous_patch(&s);
        assert!(expired["data"][PREVIOUS_KEY].is_null() && expired["data"][PREVIOUS_PRIVATE_KEY].is_null());
    }

    #[test]
    fn previous_expiry_is_read_only_when_a_previous_value_exists() {
        let mut s = secret_with("cur");
        s.metadata.annotations = Some(BTreeMap::from([(
            PREVIOUS_EXPIRES_ANNOTATION.to_string(),
            "2026-01-01T00:00:00Z".to_string(),
        )]));
        assert_eq!(previous_expires_at(&s), None);
        s.data
            .as_mut()
            .unwrap()
            .insert(PREVIOUS_KEY.into(), ByteString(b"old".to_vec()));
        assert_eq!(previous_expires_at(&s), Some("2026-01-01T00:00:00Z".parse().unwrap()));
        let patch = expire_previous_patch(&s);
        assert!(patch["data"][PREVIOUS_KEY].is_null());
    }

    #[test]
    fn child_names_fit_in_253_characters_and_stay_distinct() {
        assert_eq!(child_name("shop", "signing"), "shop-signing");
        let long_a = "a".repeat(253);
        let long_b = format!("{}b", "a".repeat(252));
        let (na, nb) = (child_name(&long_a, "signing"), child_name(&long_b, "signing"));
        assert!(na.len() <= 253 && nb.len() <= 253);
        assert_ne!(na, nb);
        assert!(na.ends_with("-signing"));
    }
}
