//! `kubectl hookrelay pause` / `resume`: hold a webhook's deliveries
//! (events are still stored for it) and send the backlog later.

use super::*;

pub(super) async fn set_paused(ctx: &Ctx, webhook: &str, paused: bool) -> anyhow::Result<()> {
    let api: Api<Webhook> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let patch = json!({ "spec": { "paused": paused } });
    let changed = api
        .patch(webhook, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => anyhow!("no webhook {webhook} in namespace {}", ctx.namespace),
            e => anyhow!("{} webhook {webhook}: {e}", if paused { "pause" } else { "resume" }),
        })?;
    if ctx.output.is_structured() {
        return print_structured(
            &ctx.output,
            &json!({ "webhook": webhook, "namespace": ctx.namespace, "paused": changed.spec.paused }),
        );
    }
    if paused {
        println!(
            "webhook {webhook} paused: its events are still stored, nothing is sent until `kubectl hookrelay resume {webhook}`"
        );
    } else {
        println!("webhook {webhook} resumed: its held deliveries are sent, oldest first");
    }
    Ok(())
}
