//! Who a request forwarded by the aggregation layer is from. The
//! kube-apiserver authenticates the user, then forwards the request over
//! TLS with a client certificate its front-proxy CA signed and the user in
//! headers (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`). Those
//! headers are believed only on a connection whose client certificate that
//! CA signed (the TLS handshake verifies the chain) and whose common name
//! the API server allows; any other request is refused, whatever it says.
//!
//! The CA, the allowed names and the header names are what the API server
//! publishes in `kube-system/extension-apiserver-authentication`.

use axum::http::HeaderMap;
use std::collections::BTreeMap;

/// Where the API server publishes how it forwards identities.
pub const CONFIG_MAP_NAMESPACE: &str = "kube-system";
pub const CONFIG_MAP_NAME: &str = "extension-apiserver-authentication";

/// How the API server forwards identities, from its ConfigMap.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontProxy {
    /// PEM: the CA that signs the API server's proxy client certificate.
    pub ca_pem: String,
    /// Common names a proxy certificate may have (any, when empty).
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

/// A user as the API server authenticated them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The proxy certificate a connection presented (its common name), if
/// any; set on every request of the connection.
#[derive(Clone, Debug, Default)]
pub struct Peer(pub Option<String>);

/// Why a request's identity is not believed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error(
        "no client certificate from the API server's front proxy: this server is reached through the Kubernetes API (kubectl get deliveries), not directly"
    )]
    NoCertificate,
    #[error("the client certificate's common name {0:?} is not one the API server allows for its front proxy")]
    NameNotAllowed(String),
    #[error("the front proxy named no user")]
    NoUser,
}

impl FrontProxy {
    /// Reads what the ConfigMap's `data` says; a missing CA is an error that
    /// names the API server flag that publishes it.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let ca_pem = data.get("requestheader-client-ca-file").cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "{CONFIG_MAP_NAMESPACE}/{CONFIG_MAP_NAME} has no requestheader-client-ca-file: the kube-apiserver runs without --requestheader-client-ca-file, so it cannot forward requests to an aggregated API"
            )
        })?;
        let list = |key: &str, default: &[&str]| -> anyhow::Result<Vec<String>> {
            match data.get(key) {
                None => Ok(default.iter().map(|s| s.to_string()).collect()),
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| anyhow::anyhow!("{CONFIG_MAP_NAMESPACE}/{CONFIG_MAP_NAME} {key}: {e}")),
            }
        };
        Ok(Self {
            ca_pem,
            allowed_names: list("requestheader-allowed-names", &[])?,
            username_headers: list("requestheader-username-headers", &["X-Remote-User"])?,
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"])?,
            extra_prefixes: list("requestheader-extra-headers-prefix", &["X-Remote-Extra-"])?,
        })
    }

    /// Reads the API server's ConfigMap (a Role to read it is bound to
    /// `extension-apiserver-authentication-reader` in kube-system).
    pub async fn load(client: &kube::Client) -> anyhow::Result<Self> {
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), CONFIG_MAP_NAMESPACE);
        let map = api.get(CONFIG_MAP_NAME).await.map_err(|e| {
            anyhow::anyhow!("reading {CONFIG_MAP_NAMESPACE}/{CONFIG_MAP_NAME} (the front-proxy CA): {e}")
        })?;
        Self::from_config_map(&map.data.unwrap_or_default())
    }

    /// The user a request is from: believed only when the connection
    /// presented a front-proxy certificate with an allowed name.
    pub fn user(&self, peer: &Peer, headers: &HeaderMap) -> Result<User, Refused> {
        let name = peer.0.as_deref().ok_or(Refused::NoCertificate)?;
        if !self.allowed_names.is_empty() && !self.allowed_names.iter().any(|allowed| allowed == name) {
            return Err(Refused::NameNotAllowed(name.to_string()));
        }
        let values = |header: &str| {
            headers
                .get_all(header)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let name = self
            .username_headers
            .iter()
            .find_map(|h| values(h).into_iter().find(|v| !v.is_empty()))
            .ok_or(Refused::NoUser)?;
        let groups = self.group_headers.iter().flat_map(|h| values(h)).collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            let lower = header.as_str();
            let Some(prefix) = self
                .extra_prefixes
                .iter()
                .find(|p| lower.starts_with(&p.to_ascii_lowercase()))
            else {
                continue;
            };
            // The key is percent-encoded in the header's name (RFC 3986).
            let key = percent_decode(&lower[prefix.len()..]);
            if let Ok(value) = value.to_str() {
                extra.entry(key).or_default().push(value.to_string());
            }
        }
        Ok(User { name, groups, extra })
    }
}

/// Decodes `%XX` escapes; anything malformed is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The common name of a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxy() -> FrontProxy {
        let data = BTreeMap::from([
            ("requestheader-client-ca-file".to_string(), "PEM".to_string()),
            (
                "requestheader-allowed-names".to_string(),
                r#"["front-proxy-client"]"#.to_string(),
            ),
            (
                "requestheader-username-headers".to_string(),
                r#"["X-Remote-User"]"#.to_string(),
            ),
            (
                "requestheader-group-headers".to_string(),
                r#"["X-Remote-Group"]"#.to_string(),
            ),
            (
                "requestheader-extra-headers-prefix".to_string(),
                r#"["X-Remote-Extra-"]"#.to_string(),
            ),
        ]);
        FrontProxy::from_config_map(&data).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_user_comes_from_the_headers_of_an_allowed_proxy_certificate() {
        let user = proxy()
            .user(
                &Peer(Some("front-proxy-client".into())),
                &headers(&[
                    ("x-remote-user", "alice"),
                    ("x-remote-group", "team-a"),
                    ("x-remote-group", "system:authenticated"),
                    ("x-remote-extra-scopes%2Fread", "yes"),
                ]),
            )
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["team-a", "system:authenticated"]);
        assert_eq!(user.extra["scopes/read"], ["yes"]);
    }

    #[test]
    fn headers_without_an_allowed_certificate_are_refused() {
        let forged = headers(&[("x-remote-user", "admin"), ("x-remote-group", "system:masters")]);
        assert_eq!(proxy().user(&Peer(None), &forged), Err(Refused::NoCertificate));
        assert_eq!(
            proxy().user(&Peer(Some("someone-else".into())), &forged),
            Err(Refused::NameNotAllowed("someone-else".into()))
        );
        assert_eq!(
            proxy().user(&Peer(Some("front-proxy-client".into())), &HeaderMap::new()),
            Err(Refused::NoUser)
        );
    }

    #[test]
    fn a_config_map_without_the_ca_names_the_flag() {
        let error = FrontProxy::from_config_map(&BTreeMap::new()).unwrap_err().to_string();
        assert!(error.contains("--requestheader-client-ca-file"), "{error}");
    }

    #[test]
    fn percent_escapes_decode_and_malformed_ones_stay() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
