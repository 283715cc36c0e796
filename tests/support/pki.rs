//! A test CA (rcgen) for handlers on https, and the Secrets that hand its
//! certificates to webhooks.

use hookrelay::resources::webhook::CREDENTIAL_CONSENT_LABEL;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// A test CA that issues server and client certificates.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "hookrelay test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn issue(&self, name: &str, san: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(san.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// What the TLS handler saw: the client certificate (DER) of each request.
pub type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// An https handler on 127.0.0.1, its certificate for `name`, that requires
/// a client certificate from `pki` and answers 200, noting the certificate
/// of each request.
pub async fn tls_handler(pki: &Pki, name: &str) -> (SocketAddr, Seen) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let server = pki.issue("handler", &[name]);
    let chain = vec![rustls::pki_types::CertificateDer::from(server.der.clone())];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let noted = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, noted) = (acceptor.clone(), noted.clone());
            tokio::spawn(async move {
                // A client without a certificate fails here.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let service = hyper::service::service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
                    noted.lock().unwrap().push(cert.clone().unwrap_or_default());
                    async { Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok"))) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, seen)
}

pub fn tls_secret(name: &str, issued: &Issued, consent: bool) -> Secret {
    let mut secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(
            [
                ("tls.crt".to_string(), issued.cert_pem.clone()),
                ("tls.key".to_string(), issued.key_pem.clone()),
            ]
            .into(),
        ),
        ..Default::default()
    };
    if consent {
        secret.metadata.labels = Some([(CREDENTIAL_CONSENT_LABEL.to_string(), "true".to_string())].into());
    }
    secret
}

pub fn opaque_secret(name: &str, key: &str, value: &str, consent: bool) -> Secret {
    let mut secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some([(key.to_string(), value.to_string())].into()),
        ..Default::default()
    };
    if consent {
        secret.metadata.labels = Some([(CREDENTIAL_CONSENT_LABEL.to_string(), "true".to_string())].into());
    }
    secret
}
