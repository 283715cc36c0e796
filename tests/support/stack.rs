//! A hub with `hookrelay controller` and `hookrelay ingest` running for it:
//! the set-up of every end-to-end delivery test.

use super::{ChildProcess, Ingest, TestEnv, eventually};
use hookrelay::resources::delivery::Phase;
use hookrelay::resources::webhook::WebhookSpec;
use hookrelay::resources::{Delivery, Hub, Webhook};
use hookrelay::secrets;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(60);

/// Where the stack's deliveries live (`--store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Kubernetes,
    Postgres,
}

/// Defines `mod NAME { kubernetes, postgres }`: the test body `NAME(store)`
/// run once against each delivery store.
#[macro_export]
macro_rules! both_stores {
    ($($test:ident),* $(,)?) => { $(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn kubernetes() {
                super::$test(super::support::stack::Store::Kubernetes).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$test(super::support::stack::Store::Postgres).await
            }
        }
    )* };
}

/// A hub, the controller and ingest, ready to take events.
pub struct Stack {
    pub env: TestEnv,
    pub controller: ChildProcess,
    pub ingest: Ingest,
    pub token: String,
    pub store: Store,
    /// The Postgres store, with `Store::Postgres`.
    pub postgres: Option<std::sync::Arc<hookrelay::store::postgres::Postgres>>,
    controller_args: Vec<String>,
    ingest_args: Vec<String>,
    controller_kubeconfig: PathBuf,
}

/// How a `Stack` is set up.
pub struct Options {
    /// The hub, named "main" (default: examples/hub.yaml).
    pub hub: Hub,
    /// Ingest's kubeconfig (default: the admin one).
    pub ingest_kubeconfig: Option<PathBuf>,
    /// Extra `hookrelay controller` arguments.
    pub controller_args: Vec<String>,
    /// The controller's kubeconfig (default: the admin one).
    pub controller_kubeconfig: Option<PathBuf>,
    /// Set up this namespace instead of a new one.
    pub env: Option<TestEnv>,
    /// Extra `hookrelay ingest` arguments.
    pub ingest_args: Vec<String>,
    /// Where deliveries live.
    pub store: Store,
}

impl Options {
    /// One controller that delivers without leader election.
    pub fn single_controller() -> Self {
        Self {
            controller_args: vec!["--leader-elect=false".into()],
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hub: serde_yaml::from_str(include_str!("../../examples/hub.yaml")).unwrap(),
            ingest_kubeconfig: None,
            controller_args: vec![],
            controller_kubeconfig: None,
            env: None,
            ingest_args: vec![],
            store: Store::Kubernetes,
        }
    }
}

impl Stack {
    pub async fn start(test: &str) -> Stack {
        Self::start_with(test, Options::default()).await
    }

    /// `start` against the given delivery store.
    pub async fn start_in(test: &str, store: Store) -> Stack {
        Self::start_with(
            test,
            Options {
                store,
                ..Options::default()
            },
        )
        .await
    }

    pub async fn start_with(test: &str, mut options: Options) -> Stack {
        let postgres = match options.store {
            Store::Kubernetes => None,
            Store::Postgres => {
                let url = super::postgres::Postgres::shared().url.clone();
                let args = [
                    "--store".to_string(),
                    "postgres".into(),
                    "--postgres-url".into(),
                    url.clone(),
                ];
                options.controller_args.extend(args.clone());
                options.ingest_args.extend(args);
                Some(hookrelay::store::postgres::Postgres::open(&url, None).expect("a Postgres URL"))
            }
        };
        let env = match options.env {
            Some(env) => env,
            None => TestEnv::new(test).await,
        };
        let args: Vec<&str> = options.controller_args.iter().map(String::as_str).collect();
        let kubeconfig = options
            .controller_kubeconfig
            .clone()
            .unwrap_or(env.cluster.admin_kubeconfig.clone());
        let controller = env.start_controller_as(&kubeconfig, &args);
        env.api::<Hub>()
            .create(&PostParams::default(), &options.hub)
            .await
            .unwrap();
        let token = hub_token(&env, "main").await;
        let ingest_args: Vec<&str> = options.ingest_args.iter().map(String::as_str).collect();
        let ingest = env
            .start_ingest_with(options.ingest_kubeconfig.as_deref(), &ingest_args)
            .await;
        Stack {
            env,
            controller,
            ingest,
            token,
            store: options.store,
            postgres,
            controller_args: options.controller_args,
            ingest_args: options.ingest_args,
            controller_kubeconfig: kubeconfig,
        }
    }

    /// The controller's extra arguments (the store's included).
    pub fn controller_args(&self) -> &[String] {
        &self.controller_args
    }

    /// Ingest's extra arguments (the store's included).
    pub fn ingest_args(&self) -> &[String] {
        &self.ingest_args
    }

    /// SIGKILLs the controller (as a crash would).
    pub fn kill_controller(&mut self) {
        self.controller.kill();
    }

    /// Starts the controller again, with the same arguments.
    pub fn restart_controller(&mut self) {
        self.controller.kill();
        let args: Vec<&str> = self.controller_args.iter().map(String::as_str).collect();
        self.controller = self.env.start_controller_as(&self.controller_kubeconfig, &args);
    }

    /// Creates a webhook and waits until it is Ready; returns its signing secret.
    pub async fn webhook(&self, name: &str, spec: WebhookSpec) -> String {
        let ready = ready_webhook(&self.env, name, spec).await;
        let r = ready.status.unwrap().secret_ref.unwrap();
        let secret = self.env.api::<Secret>().get(&r.name).await.unwrap();
        secrets::value(&secret, &r.key).unwrap().to_string()
    }

    pub async fn post(&self, body: Value) -> (u16, Value) {
        self.post_raw(
            "main",
            Some(&self.token),
            "application/json",
            body.to_string().into_bytes(),
            &[],
        )
        .await
    }

    /// POSTs to ingest; returns the status, the Retry-After header and the JSON answer.
    pub async fn post_full(
        &self,
        hub: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Option<String>, Value) {
        let mut request = self
            .ingest
            .http
            .post(self.ingest.events_url(&self.env.ns, hub))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("ingest answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap();
        (
            status,
            retry_after,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_raw(
        &self,
        hub: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, _, answer) = self.post_full(hub, token, content_type, body, headers).await;
        (status, answer)
    }

    /// A delivery as stored (an object, or a row of the Postgres store).
    pub async fn delivery(&self, name: &str) -> Option<Delivery> {
        match &self.postgres {
            Some(store) => store.read(&self.env.ns, name).await.ok()?,
            None => self.env.api::<Delivery>().get(name).await.ok(),
        }
    }

    /// Every delivery of this stack's namespace.
    pub async fn deliveries(&self) -> Option<Vec<Delivery>> {
        match &self.postgres {
            Some(store) => store.recent(Some(&self.env.ns), None, &[], 100_000).await.ok(),
            None => Some(self.env.api::<Delivery>().list(&Default::default()).await.ok()?.items),
        }
    }

    /// Asks for a new round of attempts, as the console and plugin do.
    pub async fn redeliver(&self, name: &str, request: &str) {
        match &self.postgres {
            Some(store) => {
                eventually(WAIT, "no attempt under way, to redeliver", || async {
                    store.redeliver(&self.env.ns, name, request).await.ok()?.then_some(())
                })
                .await
            }
            None => {
                let annotate =
                    serde_json::json!({ "metadata": { "annotations": { "hookrelay.dev/redeliver": request } } });
                self.env
                    .api::<Delivery>()
                    .patch(
                        name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(annotate),
                    )
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn delivery_done(&self, name: &str) -> Delivery {
        eventually(WAIT, &format!("delivery {name} to finish"), || async {
            let d = self.delivery(name).await?;
            d.status.as_ref().is_some_and(|s| s.phase.is_finished()).then_some(d)
        })
        .await
    }

    pub fn logs(&self) -> String {
        format!("{}\n{}", self.controller.logs(), self.ingest.process.logs())
    }

    pub async fn cleanup(self) {
        self.env.cleanup().await;
    }
}

/// Creates a webhook in `env`'s namespace and waits until it is Ready.
pub async fn ready_webhook(env: &TestEnv, name: &str, spec: WebhookSpec) -> Webhook {
    let api: Api<Webhook> = env.api();
    api.create(&PostParams::default(), &Webhook::new(name, spec))
        .await
        .unwrap();
    eventually(WAIT, &format!("webhook {name} Ready"), || async {
        let w = api.get(name).await.ok()?;
        let ok = w
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ok.then_some(w)
    })
    .await
}

pub async fn hub_token(env: &TestEnv, hub: &str) -> String {
    let hubs: Api<Hub> = env.api();
    let r = eventually(WAIT, "the hub's ingest token", || async {
        hubs.get(hub).await.ok()?.status?.ingest_token_secret_ref
    })
    .await;
    let secret = env.api::<Secret>().get(&r.name).await.unwrap();
    secrets::value(&secret, &r.key).unwrap().to_string()
}

pub fn spec(url: String, events: &[&str]) -> WebhookSpec {
    WebhookSpec::new("main", "Test", &url, events)
}

pub fn deliveries_of(answer: &Value) -> Vec<String> {
    answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// How many times the receiver saw each `webhook-id`.
pub fn ids_seen(received: &[super::receiver::Received]) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for r in received {
        *seen
            .entry(r.header("webhook-id").unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    seen
}

/// Waits until exactly `expected` Deliveries exist and all Succeeded.
pub async fn all_succeeded(stack: &Stack, expected: usize, timeout: Duration) -> Vec<Delivery> {
    eventually(timeout, &format!("{expected} deliveries to succeed"), || async {
        let list = stack.deliveries().await?;
        let done = list
            .iter()
            .filter(|d| d.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded))
            .count();
        (list.len() == expected && done == expected).then_some(list)
    })
    .await
}

/// The pid in the controller Lease's holder identity (host-pid).
pub fn holder_pid(lease: &k8s_openapi::api::coordination::v1::Lease) -> Option<u32> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_ref()?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

/// A token for a ServiceAccount, from the TokenRequest API.
pub async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        metadata: Default::default(),
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        status: None,
    };
    let issued: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for ServiceAccount {name}: {e}"));
    issued.status.expect("a TokenRequest status").token
}
