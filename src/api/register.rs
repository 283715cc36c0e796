//! `hookrelay api --register`: for local use and tests, the APIService and
//! the Service it points to are made by the process itself and removed
//! when it stops. The Service is an `ExternalName` one naming the address
//! the process listens on: without `--enable-aggregator-routing` the
//! aggregator connects to an ExternalName Service's name and the
//! APIService's port, and Endpoints may not hold loopback addresses. In a
//! cluster the chart makes both, pointing at the pods.

use super::{GROUP, GROUP_PRIORITY, VERSION};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{APIService, APIServiceSpec, ServiceReference};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use std::net::SocketAddr;

/// The Service the APIService points to.
pub const SERVICE: &str = "hookrelay-api";
const MANAGER: &str = "hookrelay-api";

/// The APIService's name: version.group.
pub fn api_service_name() -> String {
    format!("{VERSION}.{GROUP}")
}

/// The name the aggregator expects the serving certificate to carry.
pub fn service_host(namespace: &str) -> String {
    format!("{SERVICE}.{namespace}.svc")
}

/// A self-signed serving certificate and key (PEM) for the Service's name
/// and this machine's loopback.
pub fn self_signed(namespace: &str) -> anyhow::Result<(String, String)> {
    let names = vec![service_host(namespace), "localhost".into(), "127.0.0.1".into()];
    let certified = rcgen::generate_simple_self_signed(names)?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// What was made, to remove at stop.
pub struct Registration {
    client: kube::Client,
    namespace: String,
}

impl Registration {
    /// Makes (or updates) the Service and the APIService for `address`,
    /// trusting `cert_pem`.
    pub async fn make(
        client: &kube::Client,
        namespace: &str,
        address: SocketAddr,
        cert_pem: &str,
    ) -> anyhow::Result<Self> {
        let host = match address.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            ip => ip.to_string(),
        };
        let service = Service {
            metadata: ObjectMeta {
                name: Some(SERVICE.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some(host),
                ..Default::default()
            }),
            ..Default::default()
        };
        let apply = PatchParams::apply(MANAGER).force();
        Api::<Service>::namespaced(client.clone(), namespace)
            .patch(SERVICE, &apply, &Patch::Apply(&service))
            .await
            .map_err(|e| anyhow::anyhow!("--register: making Service {namespace}/{SERVICE}: {e}"))?;
        let api_service = APIService {
            metadata: ObjectMeta {
                name: Some(api_service_name()),
                ..Default::default()
            },
            spec: Some(APIServiceSpec {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                group_priority_minimum: GROUP_PRIORITY,
                version_priority: 100,
                ca_bundle: Some(k8s_openapi::ByteString(cert_pem.as_bytes().to_vec())),
                service: Some(ServiceReference {
                    name: Some(SERVICE.into()),
                    namespace: Some(namespace.into()),
                    port: Some(i32::from(address.port())),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<APIService>::all(client.clone())
            .patch(&api_service_name(), &apply, &Patch::Apply(&api_service))
            .await
            .map_err(|e| anyhow::anyhow!("--register: making APIService {}: {e}", api_service_name()))?;
        tracing::info!(api_service = %api_service_name(), namespace, "registered");
        Ok(Self {
            client: client.clone(),
            namespace: namespace.into(),
        })
    }

    /// Removes the APIService and the Service (what is gone already is fine).
    pub async fn remove(self) {
        let deleted = Api::<APIService>::all(self.client.clone())
            .delete(&api_service_name(), &DeleteParams::default())
            .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "removing the APIService failed");
        }
        let deleted = Api::<Service>::namespaced(self.client, &self.namespace)
            .delete(SERVICE, &DeleteParams::default())
            .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "removing the Service failed");
        }
    }
}
