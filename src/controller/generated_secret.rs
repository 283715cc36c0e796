//! Keeping a generated Secret (a webhook's signing secret, a hub's ingest
//! token) present, filled and rotated. Shared by both reconcilers.

use super::Error;
use crate::delivery::signing::generate_private_key;
use crate::secret_cache::SecretCache;
use crate::secrets;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::collections::BTreeMap;

/// What the Secret should be.
pub(super) struct Desired<'a> {
    pub namespace: &'a str,
    pub name: String,
    pub key: &'static str,
    pub owner: OwnerReference,
    pub labels: BTreeMap<String, String>,
    /// The owner's rotation request (`hookrelay.dev/rotate-secret`), if any.
    pub rotate_for: Option<&'a str>,
    /// How long a rotated-out value keeps signing.
    pub overlap: std::time::Duration,
    /// Whether it also holds an ed25519 private key (`PRIVATE_KEY`),
    /// rotated with the value.
    pub private_key: bool,
}

/// What was done to the Secret.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    None,
    Created,
    /// The key was missing or empty and got a new value.
    Refilled,
    /// An ed25519 private key was added (a scheme that needs one was set).
    KeyGenerated,
    Rotated,
    PreviousExpired,
}

/// The Secret's state after `ensure`.
pub(super) enum State {
    Ready {
        change: Change,
        /// The rotation request the current value answers.
        rotated_for: Option<String>,
        /// When to look again (a previous value expires).
        recheck_at: Option<Timestamp>,
    },
    /// A Secret of that name exists and is not ours: it is never touched.
    NotOwned,
}

/// Brings the generated Secret to the desired state with at most one write.
/// A user's edit of the value is kept; only a new rotation request or a
/// missing value generates a new one.
pub(super) async fn ensure(
    api: &Api<Secret>,
    cache: &SecretCache,
    desired: &Desired<'_>,
    now: Timestamp,
) -> Result<State, Error> {
    let Some(secret) = cache.get(desired.namespace, &desired.name).await? else {
        let mut secret = secrets::build_generated(
            &desired.name,
            desired.namespace,
            desired.owner.clone(),
            desired.labels.clone(),
            desired.rotate_for,
            desired.key,
            &secrets::generate(),
        );
        if desired.private_key {
            let key = generate_private_key();
            secret
                .data
                .get_or_insert_default()
                .insert(secrets::PRIVATE_KEY.into(), ByteString(key.into_bytes()));
        }
        api.create(&PostParams::default(), &secret).await?;
        return Ok(State::Ready {
            change: Change::Created,
            rotated_for: desired.rotate_for.map(str::to_string),
            recheck_at: None,
        });
    };
    let owned = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == desired.owner.uid);
    if !owned {
        return Ok(State::NotOwned);
    }

    let merge = |patch: serde_json::Value| async move {
        api.patch(&desired.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
    };
    let handled = secrets::rotated_for(&secret).map(str::to_string);
    let expires_at = secrets::previous_expires_at(&secret);

    let missing_key = desired.private_key && secrets::value(&secret, secrets::PRIVATE_KEY).is_none();
    if secrets::value(&secret, desired.key).is_none() || missing_key {
        let refill = match missing_key {
            true => secrets::refill_patch(&secret, secrets::PRIVATE_KEY, &generate_private_key()),
            false => secrets::refill_patch(&secret, desired.key, &secrets::generate()),
        };
        merge(refill).await?;
        return Ok(State::Ready {
            change: if missing_key {
                Change::KeyGenerated
            } else {
                Change::Refilled
            },
            rotated_for: handled,
            recheck_at: expires_at,
        });
    }
    if let Some(request) = desired.rotate_for.filter(|r| Some(*r) != handled.as_deref()) {
        let until = now + desired.overlap;
        // A key, once made, is rotated with the secret (even after a switch
        // back to symmetric: switching again must not revive an old key).
        let new_key =
            (desired.private_key || secrets::value(&secret, secrets::PRIVATE_KEY).is_some()).then(generate_private_key);
        let patch = secrets::rotation_patch(&secret, &secrets::generate(), new_key.as_deref(), request, until);
        merge(patch).await?;
        return Ok(State::Ready {
            change: Change::Rotated,
            rotated_for: Some(request.to_string()),
            recheck_at: Some(until),
        });
    }
    if expires_at.is_some_and(|at| at <= now) {
        merge(secrets::expire_previous_patch(&secret)).await?;
        return Ok(State::Ready {
            change: Change::PreviousExpired,
            rotated_for: handled,
            recheck_at: None,
        });
    }
    Ok(State::Ready {
        change: Change::None,
        rotated_for: handled,
        recheck_at: expires_at,
    })
}

/// Whether a user-provided Secret key holds a usable value: `Err` carries the
/// reason and a message naming the Secret (never its value).
pub(super) async fn check_user_secret(
    cache: &SecretCache,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Result<(), (&'static str, String)>, Error> {
    Ok(match cache.get(namespace, name).await? {
        None => Err(("SecretNotFound", format!("Secret {name} not found"))),
        Some(s) if secrets::value(&s, key).is_none() => {
            Err(("SecretKeyMissing", format!("Secret {name} has no non-empty key {key}")))
        }
        Some(_) => Ok(()),
    })
}
