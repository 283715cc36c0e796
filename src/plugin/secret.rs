//! `kubectl hookrelay secret`: show, rotate or set a webhook's signing secret.

use super::*;

pub(super) async fn secret(
    ctx: &Ctx,
    name: &str,
    rotate: bool,
    set: Option<String>,
    standard_webhooks: bool,
    public_key: bool,
) -> anyhow::Result<()> {
    let webhook = ctx.webhook(name).await?;
    let signing = webhook.status.as_ref().and_then(|s| s.signing.clone());
    if public_key {
        // Needs no Secret rights: the public key is in the Webhook's status.
        let key = signing.as_ref().and_then(|s| s.public_key.clone()).ok_or_else(|| {
            anyhow!("webhook {name} has no public key: its signing.scheme is symmetric (set asymmetric or both), or the controller has not generated the key yet")
        })?;
        if ctx.output.is_structured() {
            return print_structured(&ctx.output, &signing);
        }
        println!("{key}");
        return Ok(());
    }
    let reference = webhook
        .spec
        .secret_ref
        .clone()
        .or_else(|| webhook.status.as_ref().and_then(|s| s.secret_ref.clone()))
        .ok_or_else(|| anyhow!("webhook {name} has no secret yet; is the controller running?"))?;
    let secrets_api: Api<Secret> = ctx.here();
    let read = || async {
        let s = secrets_api.get(&reference.name).await?;
        anyhow::Ok((secrets::value(&s, &reference.key).unwrap_or_default().to_string(), s))
    };
    if let Some(source) = set {
        let mut value = String::new();
        if source == "-" {
            std::io::stdin().read_to_string(&mut value)?;
        } else {
            value = std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?;
        }
        let value = value.trim();
        if value.len() < 16 {
            bail!("--set: a secret needs at least 16 characters");
        }
        let patch = json!({ "stringData": { reference.key.clone(): value } });
        secrets_api
            .patch(&reference.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        println!(
            "Secret {} set; deliveries are signed with it from now on.",
            reference.name
        );
        return Ok(());
    }
    if rotate {
        let (before, _) = read().await?;
        let patch =
            json!({ "metadata": { "annotations": { ROTATE_SECRET_ANNOTATION: Timestamp::now().to_string() } } });
        ctx.here::<Webhook>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (now, secret) = read().await?;
            if now != before && !now.is_empty() {
                let until = secrets::previous_expires_at(&secret)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!("Rotated. The previous secret also signs until {until}.");
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the controller did not rotate the secret within 60s; is it running?");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (value, _) = read().await?;
    let whsec = crate::delivery::signing::standard_webhooks_secret(&value);
    if ctx.output.is_structured() {
        let shown =
            json!({ "secret": value, "standardWebhooksSecret": whsec, "secretRef": reference, "signing": signing });
        return print_structured(&ctx.output, &shown);
    }
    println!("{}", if standard_webhooks { &whsec } else { &value });
    Ok(())
}
