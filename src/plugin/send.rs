//! `kubectl hookrelay send`: an event into a hub's ingest, as the CMS would send it.

use super::*;

pub(super) async fn send(
    ctx: &Ctx,
    hub_name: &str,
    event: &str,
    payload: Option<PathBuf>,
    id: Option<String>,
    ingest_url: Option<String>,
) -> anyhow::Result<()> {
    let ingest_url = ingest_url.ok_or_else(|| {
        anyhow!(
            "give --ingest-url (or HOOKRELAY_INGEST_URL), e.g. http://127.0.0.1:8080 after `kubectl -n RELEASE_NAMESPACE port-forward svc/RELEASE-hookrelay-ingest 8080:80`"
        )
    })?;
    let hub = ctx
        .here::<Hub>()
        .get_opt(hub_name)
        .await?
        .ok_or_else(|| anyhow!("no such hub {hub_name:?} in namespace {}", ctx.namespace))?;
    let reference = hub
        .spec
        .ingest
        .as_ref()
        .and_then(|i| i.token_secret_ref.clone())
        .or_else(|| hub.status.as_ref().and_then(|s| s.ingest_token_secret_ref.clone()))
        .ok_or_else(|| anyhow!("hub {hub_name} has no ingest token yet; is the controller running?"))?;
    let secret = ctx.here::<Secret>().get(&reference.name).await?;
    let token = secrets::value(&secret, &reference.key)
        .ok_or_else(|| anyhow!("Secret {} has no key {}", reference.name, reference.key))?;
    let mut body = json!({ "name": event, "payload": read_payload(payload, event)? });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let url = format!(
        "{}/v1/namespaces/{}/hubs/{hub_name}/events",
        ingest_url.trim_end_matches('/'),
        ctx.namespace
    );
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = response.status();
    let answer: Value = serde_json::from_str(&response.text().await?).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "ingest answered {status}: {}",
            answer["message"].as_str().unwrap_or_default()
        );
    }
    if ctx.output.is_structured() {
        return print_structured(&ctx.output, &answer);
    }
    let deliveries = answer["deliveries"].as_array().cloned().unwrap_or_default();
    println!(
        "accepted event {} ({event}): {} deliveries",
        answer["id"].as_str().unwrap_or_default(),
        deliveries.len()
    );
    for d in deliveries {
        println!("  {}", d.as_str().unwrap_or_default());
    }
    Ok(())
}
