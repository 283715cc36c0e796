//! An attempt's record as a `Delivery` status write.

use super::Objects;
use crate::resources::delivery::{Delivery, DeliveryStatus, Phase};
use crate::store::{Records, StoreError, Written};
use kube::ResourceExt;
use kube::api::PostParams;
use std::time::Duration;

/// How long one API call of a record may take before it counts as failed.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl Records for Objects {
    /// A PUT of the status at the resourceVersion the attempt started from,
    /// so a deposed leader's write fails instead of overwriting. After a
    /// conflict the record still stands if nobody recorded progress (a
    /// label or an annotation changed): written again at the new version.
    async fn record(
        &self,
        delivery: &Delivery,
        status: &DeliveryStatus,
        _claimant: &str,
    ) -> Result<Written, StoreError> {
        let (ns, name) = (delivery.namespace().unwrap_or_default(), delivery.name_any());
        let api = self.api(Some(&ns));
        let base = progress(delivery.status.as_ref());
        let mut resource_version = delivery.resource_version();
        loop {
            let body = status_body(delivery, status, resource_version.as_deref());
            let request = kube::core::Request::new(api.resource_url())
                .replace_subresource("status", &name, &PostParams::default(), body)
                .expect("a status request builds");
            let write = self.client.request::<Delivery>(request);
            match tokio::time::timeout(API_CALL_TIMEOUT, write).await {
                Ok(Ok(stored)) => return Ok(Written::Stored(stored)),
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => return Ok(Written::Gone),
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                    let read = tokio::time::timeout(API_CALL_TIMEOUT, api.get_opt(&name)).await;
                    match read {
                        Ok(Ok(None)) => return Ok(Written::Gone),
                        Ok(Ok(Some(fresh))) if progress(fresh.status.as_ref()) == base => {
                            resource_version = fresh.resource_version();
                        }
                        Ok(Ok(Some(fresh))) => return Ok(Written::Superseded(fresh)),
                        Ok(Err(e)) => {
                            return Err(StoreError::Api {
                                code: None,
                                message: format!("after a conflict: reading Delivery {name}: {e}"),
                            });
                        }
                        Err(_) => {
                            return Err(StoreError::Api {
                                code: None,
                                message: format!(
                                    "after a conflict: reading Delivery {name}: no answer within {API_CALL_TIMEOUT:?}"
                                ),
                            });
                        }
                    }
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(StoreError::Api {
                        code: None,
                        message: format!("no answer within {API_CALL_TIMEOUT:?}"),
                    });
                }
            }
        }
    }
}

/// What says whether anyone recorded progress on a delivery since we read
/// it: an attempt, a phase change or a new round.
fn progress(status: Option<&DeliveryStatus>) -> (u32, Phase, Option<String>, Option<u32>) {
    let s = status.cloned().unwrap_or_default();
    (s.attempt_count, s.phase, s.redelivered_for, s.round_start)
}

/// The body of a record: the Delivery's identity, the resourceVersion the
/// attempt started from and the whole new status. A PUT to the status
/// subresource takes only the status from it; sending it whole spares the
/// API server the read-encode-merge-decode of a patch, the largest part of
/// a record's cost there.
fn status_body(delivery: &Delivery, status: &DeliveryStatus, resource_version: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": <Delivery as kube::Resource>::api_version(&()),
        "kind": <Delivery as kube::Resource>::kind(&()),
        "metadata": {
            "name": delivery.metadata.name,
            "namespace": delivery.metadata.namespace,
            "resourceVersion": resource_version,
        },
        "status": status,
    }))
    .expect("a status serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::{DeliverySpec, EventRef};
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn delivery() -> Delivery {
        Delivery::new(
            "d",
            DeliverySpec {
                webhook: "w".into(),
                hub: "h".into(),
                event: EventRef {
                    id: "e".into(),
                    name: "n".into(),
                    received_at: MicroTime(Timestamp::UNIX_EPOCH),
                    trace: None,
                },
                payload: format!("\"{}\"", "p".repeat(1000)),
            },
        )
    }

    #[test]
    fn a_record_is_conditional_and_carries_no_spec() {
        let status = DeliveryStatus {
            attempt_count: 2,
            ..Default::default()
        };
        let body: serde_json::Value = serde_json::from_slice(&status_body(&delivery(), &status, Some("7"))).unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["metadata"]["name"], "d");
        assert_eq!(body["kind"], "Delivery");
        assert_eq!(body["status"]["attemptCount"], 2);
        assert!(body.get("spec").is_none(), "the payload is not sent again");
    }
}
