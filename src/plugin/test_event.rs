//! `kubectl hookrelay test`: a test event for one webhook.

use super::*;

pub(super) fn read_payload(path: Option<PathBuf>, event: &str) -> anyhow::Result<Value> {
    match path {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?
            };
            serde_json::from_str(&text).map_err(|e| anyhow!("--payload is not JSON: {e}"))
        }
        None => Ok(sample_payload(event)),
    }
}

pub(super) async fn test(
    ctx: &Ctx,
    name: &str,
    event: Option<String>,
    payload: Option<PathBuf>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let webhook = ctx.webhook(name).await?;
    if !webhook.spec.active {
        bail!("webhook {name} is inactive (spec.active is false): activate it first, nothing would be sent");
    }
    let event = event
        .or_else(|| webhook.spec.events.iter().find(|e| !e.ends_with('*')).cloned())
        .unwrap_or_else(|| crate::events::BUILTIN_EVENTS[0].to_string());
    let payload = read_payload(payload, &event)?;
    let delivery = crate::fanout::test_delivery(&webhook, &event, &payload).map_err(|e| anyhow!("--payload: {e}"))?;
    let id = delivery.name_any();
    let row = crate::store::NewDelivery {
        delivery,
        ordering_key: None,
    };
    ctx.deliveries
        .insert(&ctx.namespace, Box::new(std::iter::once(row)), false)
        .await?;
    eprintln!("sent {event} to {name} as delivery {id}; waiting for the answer…");
    let deadline = tokio::time::Instant::now() + timeout;
    let attempt = loop {
        let d = ctx.delivery(&id).await?;
        let status = d.status.unwrap_or_default();
        if let Some(a) = status.attempts.into_iter().next() {
            break a;
        }
        if status.phase.is_finished() {
            bail!(
                "delivery {id} ended {:?}: {}",
                status.phase,
                status.message.unwrap_or_default()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no attempt of delivery {id} within {timeout:?}; is the controller running?");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let code = attempt.response.as_ref().map(|r| r.status_code);
    if ctx.output.is_structured() {
        print_structured(
            &ctx.output,
            &json!({ "delivery": id, "event": event, "attempt": attempt }),
        )?;
    } else {
        println!(
            "delivery {id}: {} in {} ms",
            match code {
                Some(c) => ctx.status_code(Some(c)),
                None => ctx.paint(&one_line(attempt.error.as_deref().unwrap_or("no response")), "31"),
            },
            attempt.duration_ms
        );
        if let Some(body) = attempt
            .response
            .as_ref()
            .map(|r| r.body.as_str())
            .filter(|b| !b.is_empty())
        {
            println!("{}", printable(body, true));
        }
    }
    match code {
        Some(200..=299) => Ok(()),
        Some(c) => bail!("the handler answered {c}"),
        None => bail!("no answer: {}", attempt.error.unwrap_or_default()),
    }
}
