//! Credentials towards handlers: a webhook's client certificate and CAs,
//! and OAuth 2.0 access tokens from the client-credentials grant, cached
//! per webhook and client secret until shortly before they expire.
//! No value read here appears in an error.

use super::http::{self, Limits, Tls};
use super::request::{Outgoing, REDACTED};
use crate::egress::Policy;
use crate::resources::SecretKeyRef;
use crate::resources::delivery::Header;
use crate::resources::webhook::{CREDENTIAL_CONSENT_LABEL, ClientAuth, OAuth2, WebhookSpec};
use crate::secret_cache::SecretCache;
use crate::secrets;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook's credentials, read from its Secrets.
#[derive(Default)]
pub struct Credentials {
    pub tls: Option<Tls>,
    pub oauth2: Option<OAuthClient>,
}

/// What a token request needs; the secret is never printed.
pub struct OAuthClient {
    pub spec: OAuth2,
    secret: String,
    /// Identifies the cached token: namespace, webhook, settings and secret.
    key: [u8; 32],
}

/// Reads the Secrets of `spec.tls` and `spec.oauth2`. The outer `Err` is an
/// API failure (try again); the inner one says, by field, why a Secret is
/// not usable.
pub async fn resolve(
    cache: &SecretCache,
    ns: &str,
    webhook: &str,
    spec: &WebhookSpec,
) -> Result<Result<Credentials, String>, kube::Error> {
    let mut credentials = Credentials::default();
    if let Some(tls) = &spec.tls {
        let identity = match &tls.client_cert_secret_ref {
            None => None,
            Some(r) => match identity(cache.get(ns, &r.name).await?.as_deref(), &r.name) {
                Ok(pem) => Some(pem),
                Err(e) => return Ok(Err(e)),
            },
        };
        let roots = match &tls.ca_secret_ref {
            None => None,
            Some(r) => match roots(cache.get(ns, &r.name).await?.as_deref(), r) {
                Ok(pem) => Some(pem),
                Err(e) => return Ok(Err(e)),
            },
        };
        let tls = Tls { identity, roots };
        if let Err(e) = tls.check() {
            return Ok(Err(e));
        }
        credentials.tls = Some(tls);
    }
    if let Some(oauth) = &spec.oauth2 {
        let r = &oauth.client_secret_ref;
        let secret = match client_secret(cache.get(ns, &r.name).await?.as_deref(), r) {
            Ok(s) => s.to_string(),
            Err(e) => return Ok(Err(e)),
        };
        let mut digest = Sha256::new();
        for part in [ns, webhook, &serde_json::to_string(oauth).unwrap_or_default(), &secret] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        credentials.oauth2 = Some(OAuthClient {
            spec: oauth.clone(),
            secret,
            key: digest.finalize().into(),
        });
    }
    Ok(Ok(credentials))
}

/// The certificate chain and key of a consenting `kubernetes.io/tls` Secret, as PEM.
fn identity(secret: Option<&Secret>, name: &str) -> Result<Arc<[u8]>, String> {
    let field = "spec.tls.clientCertSecretRef";
    let secret = secrets::consented(secret, CREDENTIAL_CONSENT_LABEL)
        .ok_or_else(|| format!("{field}: {}", secrets::not_consented(name, CREDENTIAL_CONSENT_LABEL)))?;
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!("{field}: Secret {name} is not of type kubernetes.io/tls"));
    }
    let data = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .filter(|v| !v.0.is_empty())
            .map(|v| v.0.as_slice())
            .ok_or_else(|| format!("{field}: Secret {name} has no non-empty key {key}"))
    };
    let mut pem = data("tls.crt")?.to_vec();
    pem.push(b'\n');
    pem.extend_from_slice(data("tls.key")?);
    Ok(pem.into())
}

/// CA certificates from a Secret key. They are not credentials: no consent
/// needed; but one message whether the Secret or key is missing or holds no
/// certificates, so it tells nothing of other Secrets.
fn roots(secret: Option<&Secret>, r: &SecretKeyRef) -> Result<Arc<[u8]>, String> {
    secret
        .and_then(|s| s.data.as_ref()?.get(&r.key))
        .filter(|v| reqwest::Certificate::from_pem_bundle(&v.0).is_ok_and(|certs| !certs.is_empty()))
        .map(|v| Arc::from(v.0.as_slice()))
        .ok_or_else(|| {
            format!(
                "spec.tls.caSecretRef: Secret {} does not exist or its key {} holds no PEM certificates",
                r.name, r.key
            )
        })
}

fn client_secret<'a>(secret: Option<&'a Secret>, r: &SecretKeyRef) -> Result<&'a str, String> {
    let field = "spec.oauth2.clientSecretRef";
    let secret = secrets::consented(secret, CREDENTIAL_CONSENT_LABEL)
        .ok_or_else(|| format!("{field}: {}", secrets::not_consented(&r.name, CREDENTIAL_CONSENT_LABEL)))?;
    secrets::value(secret, &r.key).ok_or_else(|| format!("{field}: Secret {} has no non-empty key {}", r.name, r.key))
}

/// An access token and when to fetch the next one.
#[derive(Clone)]
pub struct Token {
    value: String,
    refresh_at: Instant,
}

/// Lifetime assumed when the token endpoint does not say (`expires_in`).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The largest token response read.
const TOKEN_RESPONSE_LIMIT: usize = 16 * 1024;

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Cached tokens, one slot per client; one fetch at a time per slot, so a
/// burst of deliveries costs the token endpoint one request.
#[derive(Default)]
pub struct Tokens(Mutex<HashMap<[u8; 32], Slot>>);

impl Tokens {
    fn slot(&self, key: [u8; 32]) -> Slot {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&key) {
            // Slots of rotated secrets or deleted webhooks: expired and unused.
            let now = Instant::now();
            slots.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map(|t| t.as_ref().is_some_and(|t| t.refresh_at > now))
                        .unwrap_or(true)
            });
        }
        slots.entry(key).or_default().clone()
    }

    /// A token for `client`: the cached one unless it is due for refresh or
    /// is `refused` (the handler answered 401 to it), else a new one.
    pub async fn get(
        &self,
        http: &http::Client,
        egress: &Policy,
        timeout: Duration,
        client: &OAuthClient,
        refused: Option<&str>,
    ) -> Result<String, String> {
        let slot = self.slot(client.key);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref()
            && token.refresh_at > Instant::now()
            && Some(token.value.as_str()) != refused
        {
            return Ok(token.value.clone());
        }
        *cached = None;
        let token = fetch(http, egress, timeout, client).await?;
        *cached = Some(token.clone());
        Ok(token.value)
    }
}

/// One client-credentials token request (RFC 6749 section 4.4).
async fn fetch(http: &http::Client, egress: &Policy, timeout: Duration, client: &OAuthClient) -> Result<Token, String> {
    let request = token_request(client);
    let limits = Limits {
        timeout,
        body_limit: TOKEN_RESPONSE_LIMIT,
    };
    let url = super::request::redact_url(&client.spec.token_url);
    let started = Instant::now();
    let (response, _) = http::send(http, egress, &request, &limits)
        .await
        .map_err(|e| format!("oauth2: token endpoint {url}: {e}"))?;
    parse_token(response.status_code, &response.body, started).map_err(|e| format!("oauth2: token endpoint {url} {e}"))
}

/// The token request: a form, the client authenticated as configured.
fn token_request(client: &OAuthClient) -> Outgoing {
    let spec = &client.spec;
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !spec.scopes.is_empty() {
        form.append_pair("scope", &spec.scopes.join(" "));
    }
    if let Some(audience) = &spec.audience {
        form.append_pair("audience", audience);
    }
    let mut headers = vec![
        (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("Accept".to_string(), "application/json".to_string()),
    ];
    match spec.client_auth {
        // Section 2.3.1: both parts form-encoded, then HTTP Basic.
        ClientAuth::Basic => {
            let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(&spec.client_id), encode(&client.secret));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            headers.push(("Authorization".to_string(), format!("Basic {basic}")));
        }
        ClientAuth::Body => {
            form.append_pair("client_id", &spec.client_id);
            form.append_pair("client_secret", &client.secret);
        }
    }
    Outgoing {
        method: "POST",
        url: spec.token_url.clone(),
        headers,
        body: form.finish().into_bytes(),
        recorded_headers: vec![],
    }
}

/// The token in a token endpoint's answer, or what it said instead.
fn parse_token(status: u16, body: &str, fetched_at: Instant) -> Result<Token, String> {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| json.as_ref().and_then(|j| j.get(name));
    if !(200..300).contains(&status) {
        // RFC 6749 section 5.2: error and error_description, quoted cut.
        let said = [field("error"), field("error_description")]
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .map(|s| s.chars().take(200).collect::<String>())
            .collect::<Vec<_>>()
            .join(": ");
        return Err(if said.is_empty() {
            format!("answered {status}")
        } else {
            format!("answered {status}: {said}")
        });
    }
    let value = field("access_token")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .ok_or("answered without an access_token")?;
    // RFC 6750's b64token: visible ASCII, so it can be a header value.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("answered with an access_token that is not a bearer token".into());
    }
    if let Some(kind) = field("token_type").and_then(|v| v.as_str())
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(format!(
            "answered with token_type {kind:?}; only Bearer tokens are supported"
        ));
    }
    // Some providers send expires_in as a string.
    let lifetime = field("expires_in")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LIFETIME);
    // Refreshed a little early, so no request leaves with a token about to lapse.
    let margin = (lifetime / 5).min(Duration::from_secs(60));
    Ok(Token {
        value: value.to_string(),
        refresh_at: fetched_at + lifetime - margin,
    })
}

/// Sets (or replaces) the request's bearer token; recorded as `<redacted>`.
pub fn set_bearer(request: &mut Outgoing, token: &str) {
    request
        .headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
    request
        .recorded_headers
        .retain(|h| !h.name.eq_ignore_ascii_case("authorization"));
    request
        .headers
        .push(("Authorization".into(), format!("Bearer {token}")));
    request.recorded_headers.push(Header {
        name: "Authorization".into(),
        value: REDACTED.into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn a_token_answer_is_read_and_refreshed_before_it_expires() {
        let now = Instant::now();
        let t = parse_token(
            200,
            r#"{"access_token":"abc.def","token_type":"bearer","expires_in":3600}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.value, "abc.def");
        assert_eq!(t.refresh_at, now + Duration::from_secs(3540));
        let t = parse_token(200, r#"{"access_token":"x","expires_in":"10"}"#, now).unwrap();
        assert_eq!(t.refresh_at, now + Duration::from_secs(8));
        let t = parse_token(200, r#"{"access_token":"x"}"#, now).unwrap();
        assert_eq!(t.refresh_at, now + DEFAULT_LIFETIME - Duration::from_secs(60));
    }

    #[test]
    fn token_endpoint_refusals_say_what_it_said_and_never_the_token() {
        let now = Instant::now();
        let e = parse_token(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#,
            now,
        )
        .err();
        assert_eq!(e.as_deref(), Some("answered 401: invalid_client: bad secret"));
        assert_eq!(parse_token(502, "<html>", now).err().as_deref(), Some("answered 502"));
        assert!(parse_token(200, "{}", now).is_err());
        let e = parse_token(200, r#"{"access_token":"s3cret","token_type":"mac"}"#, now)
            .err()
            .unwrap();
        assert!(e.contains("\"mac\"") && !e.contains("s3cret"), "{e}");
        let e = parse_token(200, "{\"access_token\":\"bad token\\n\"}", now)
            .err()
            .unwrap();
        assert!(!e.contains("bad token"), "{e}");
    }

    #[test]
    fn a_bearer_token_replaces_the_previous_one_and_is_recorded_redacted() {
        let mut request = Outgoing {
            method: "POST",
            url: "http://127.0.0.1/".into(),
            headers: vec![],
            body: vec![],
            recorded_headers: vec![],
        };
        set_bearer(&mut request, "one");
        set_bearer(&mut request, "two");
        assert_eq!(
            request.headers,
            vec![("Authorization".to_string(), "Bearer two".to_string())]
        );
        assert_eq!(request.recorded_headers.len(), 1);
        assert_eq!(request.recorded_headers[0].value, REDACTED);
    }

    fn client(auth: ClientAuth) -> OAuthClient {
        OAuthClient {
            spec: OAuth2 {
                token_url: "http://127.0.0.1:9/token".into(),
                client_id: "shop id".into(),
                client_secret_ref: SecretKeyRef {
                    name: "o".into(),
                    key: "k".into(),
                },
                scopes: vec!["hooks:write".into(), "read".into()],
                audience: Some("https://api.example.com".into()),
                client_auth: auth,
            },
            secret: "p&ss:word".into(),
            key: [0; 32],
        }
    }

    #[test]
    fn token_requests_follow_rfc_6749() {
        let basic = token_request(&client(ClientAuth::Basic));
        let body = String::from_utf8(basic.body.clone()).unwrap();
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=hooks%3Awrite+read&audience=https%3A%2F%2Fapi.example.com"
        );
        let authorization = basic.headers.iter().find(|(n, _)| n == "Authorization").unwrap();
        // base64("shop+id:p%26ss%3Aword"): each part form-encoded first (section 2.3.1).
        assert_eq!(authorization.1, "Basic c2hvcCtpZDpwJTI2c3MlM0F3b3Jk");
        let in_body = token_request(&client(ClientAuth::Body));
        assert!(in_body.headers.iter().all(|(n, _)| n != "Authorization"));
        let body = String::from_utf8(in_body.body).unwrap();
        assert!(
            body.ends_with("&client_id=shop+id&client_secret=p%26ss%3Aword"),
            "{body}"
        );
    }

    fn secret(labelled: bool, type_: &str, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret {
            type_: Some(type_.into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        if labelled {
            s.metadata.labels = Some([(CREDENTIAL_CONSENT_LABEL.to_string(), "true".to_string())].into());
        }
        s
    }

    #[test]
    fn credential_secrets_need_their_owners_consent_and_the_right_shape() {
        let tls = [("tls.crt", "CERT"), ("tls.key", "KEY")];
        let e = identity(Some(&secret(false, "kubernetes.io/tls", &tls)), "c").unwrap_err();
        assert_eq!(
            e,
            identity(None, "c").unwrap_err(),
            "missing and unlabelled read the same"
        );
        assert!(e.contains(CREDENTIAL_CONSENT_LABEL), "{e}");
        let e = identity(Some(&secret(true, "Opaque", &tls)), "c").unwrap_err();
        assert!(e.contains("kubernetes.io/tls"), "{e}");
        let e = identity(Some(&secret(true, "kubernetes.io/tls", &tls[..1])), "c").unwrap_err();
        assert!(e.contains("tls.key"), "{e}");
        assert!(identity(Some(&secret(true, "kubernetes.io/tls", &tls)), "c").is_ok());
        let r = SecretKeyRef {
            name: "o".into(),
            key: "client-secret".into(),
        };
        let unlabelled = secret(false, "Opaque", &[("client-secret", "s3cret")]);
        let e = client_secret(Some(&unlabelled), &r).unwrap_err();
        assert!(
            e.starts_with("spec.oauth2.clientSecretRef") && !e.contains("s3cret"),
            "{e}"
        );
        let labelled = secret(true, "Opaque", &[("client-secret", "s3cret")]);
        assert_eq!(client_secret(Some(&labelled), &r), Ok("s3cret"));
    }
}
