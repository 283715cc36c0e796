//! `kubectl hookrelay deliveries`: the history, filtered.

use super::*;

/// Deliveries read per webhook at most where the store bounds it (the
/// newest; the Kubernetes store lists them all).
pub(super) const LISTED: usize = 1000;

/// The deliveries a command is about, newest first.
pub(super) async fn select(ctx: &Ctx, webhook: Option<&str>, filter: &Filter) -> anyhow::Result<Vec<Delivery>> {
    if let Some(w) = webhook {
        ctx.webhook(w).await?;
    }
    let now = Timestamp::now();
    let namespace = (!ctx.all).then_some(ctx.namespace.as_str());
    let all = ctx.deliveries.list(namespace, webhook, &[], LISTED).await?;
    let mut list: Vec<Delivery> = all.into_iter().filter(|d| filter.keeps(d, now)).collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.spec.event.received_at.0));
    Ok(list)
}

pub(super) async fn deliveries(ctx: &Ctx, webhook: Option<String>, filter: &Filter) -> anyhow::Result<()> {
    let list = select(ctx, webhook.as_deref(), filter).await?;
    let now = Timestamp::now();
    let rows: Vec<Value> = list
        .iter()
        .map(|d| {
            let s = d.status.clone().unwrap_or_default();
            json!({
                "namespace": d.namespace(), "delivery": d.name_any(), "webhook": d.spec.webhook,
                "event": d.spec.event.name, "eventId": d.spec.event.id, "received": d.spec.event.received_at.0.to_string(),
                "attempts": s.attempt_count, "statusCode": s.last_status_code, "outcome": format!("{:?}", s.phase),
                "contentItem": content_item(d), "nextAttemptAt": s.next_attempt_at.map(|t| t.0.to_string()),
            })
        })
        .collect();
    if ctx.output.is_structured() {
        return print_structured(&ctx.output, &rows);
    }
    if ctx.output == Output::Name {
        // `kubectl get delivery/NAME` reads it in either store.
        for d in &list {
            println!("delivery/{}", d.name_any());
        }
        return Ok(());
    }
    if rows.is_empty() {
        println!("No deliveries match.");
        return Ok(());
    }
    let wide = ctx.output == Output::Wide;
    let mut headers = vec!["DELIVERY", "WEBHOOK", "EVENT", "AGE", "ATTEMPTS", "STATUS", "OUTCOME"];
    if wide {
        headers.extend(["CONTENT ITEM", "NEXT ATTEMPT", "NAMESPACE"]);
    }
    let table_rows: Vec<Vec<String>> = list
        .iter()
        .zip(&rows)
        .map(|(d, r)| {
            let outcome = r["outcome"].as_str().unwrap_or_default().to_string();
            let mut row = vec![
                d.name_any(),
                d.spec.webhook.clone(),
                d.spec.event.name.clone(),
                age(d.spec.event.received_at.0, now),
                r["attempts"].to_string(),
                ctx.status_code(r["statusCode"].as_u64().map(|c| c as u16)),
                match outcome.as_str() {
                    "Succeeded" => ctx.paint(&outcome, "32"),
                    "Failed" | "Cancelled" => ctx.paint(&outcome, "31"),
                    _ => ctx.paint(&outcome, "33"),
                },
            ];
            if wide {
                row.push(r["contentItem"].as_str().unwrap_or("-").to_string());
                row.push(r["nextAttemptAt"].as_str().unwrap_or("-").to_string());
                row.push(d.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    println!("{}", table(&headers, &table_rows));
    Ok(())
}
