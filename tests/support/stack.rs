//! A hub with `hookrelay controller` and `hookrelay ingest` running for it:
//! the set-up of every end-to-end delivery test.

use super::{ChildProcess, Ingest, TestEnv, eventually};
use hookrelay::resources::webhook::{HttpMethod, WebhookSpec};
use hookrelay::resources::{Delivery, Hub, Webhook};
use hookrelay::secrets;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(60);

/// A hub, the controller and ingest, ready to take events.
pub struct Stack {
    pub env: TestEnv,
    pub controller: ChildProcess,
    pub ingest: Ingest,
    pub token: String,
    controller_args: Vec<String>,
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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hub: serde_yaml::from_str(include_str!("../../examples/hub.yaml")).unwrap(),
            ingest_kubeconfig: None,
            controller_args: vec![],
            controller_kubeconfig: None,
            env: None,
        }
    }
}

impl Stack {
    pub async fn start(test: &str) -> Stack {
        Self::start_with(test, Options::default()).await
    }

    pub async fn start_with(test: &str, options: Options) -> Stack {
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
        let ingest = env.start_ingest(options.ingest_kubeconfig.as_deref()).await;
        Stack {
            env,
            controller,
            ingest,
            token,
            controller_args: options.controller_args,
            controller_kubeconfig: kubeconfig,
        }
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
        let api: Api<Webhook> = self.env.api();
        api.create(&PostParams::default(), &Webhook::new(name, spec))
            .await
            .unwrap();
        let ready = eventually(WAIT, &format!("webhook {name} Ready"), || async {
            let w = api.get(name).await.ok()?;
            let ok = w
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ok.then_some(w)
        })
        .await;
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

    pub async fn delivery_done(&self, name: &str) -> Delivery {
        let api: Api<Delivery> = self.env.api();
        eventually(WAIT, &format!("delivery {name} to finish"), || async {
            let d = api.get(name).await.ok()?;
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
    WebhookSpec {
        hub: "main".into(),
        label: "Test".into(),
        url,
        events: events.iter().map(|s| s.to_string()).collect(),
        active: true,
        method: HttpMethod::Post,
        headers: vec![],
        filters: vec![],
        custom_payload: None,
        secret_ref: None,
        retry: None,
        ordering: None,
    }
}

pub fn deliveries_of(answer: &Value) -> Vec<String> {
    answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}
