//! `kubectl hookrelay status`: each hub's webhooks, their state and recent failures.

use super::*;

pub(super) async fn status(ctx: &Ctx, only: Option<String>) -> anyhow::Result<()> {
    let hubs = ctx.api::<Hub>().list(&ListParams::default()).await?.items;
    if let Some(name) = &only
        && !hubs.iter().any(|h| h.name_any() == *name)
    {
        bail!("no such hub {name:?} in namespace {}", ctx.namespace);
    }
    let webhooks = ctx.api::<Webhook>().list(&ListParams::default()).await?.items;
    let namespace = (!ctx.all).then_some(ctx.namespace.as_str());
    let deliveries = ctx.deliveries.list(namespace, None, &[], LISTED).await?;
    let now = Timestamp::now();
    let hour_ago = now - jiff::SignedDuration::from_hours(1);
    let mut report = vec![];
    for hub in hubs.iter().filter(|h| only.as_ref().is_none_or(|n| h.name_any() == *n)) {
        let ns = hub.namespace().unwrap_or_default();
        let mut rows = vec![];
        for w in webhooks
            .iter()
            .filter(|w| w.spec.hub == hub.name_any() && w.namespace() == hub.namespace())
        {
            let of_webhook: Vec<&Delivery> = deliveries
                .iter()
                .filter(|d| d.spec.webhook == w.name_any() && d.namespace() == w.namespace())
                .collect();
            let failures = of_webhook
                .iter()
                .flat_map(|d| d.status.iter().flat_map(|s| s.attempts.iter()))
                .filter(|a| a.time.0 >= hour_ago)
                .filter(|a| !a.response.as_ref().is_some_and(|r| (200..300).contains(&r.status_code)))
                .count();
            let retrying = of_webhook.iter().filter(|d| phase_of(d) == Phase::Retrying).count();
            let ready = w
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| {
                    if c.status == "True" {
                        "True".to_string()
                    } else {
                        c.reason.clone()
                    }
                })
                .unwrap_or_else(|| "Unknown".into());
            // From the Deliveries themselves: the Webhook's summary is
            // written coalesced, a moment later.
            let last_status = of_webhook
                .iter()
                .filter_map(|d| d.status.as_ref())
                .filter_map(|s| Some((s.attempts.last()?.time.0, s.last_status_code)))
                .max_by_key(|(time, _)| *time)
                .and_then(|(_, code)| code)
                .or_else(|| {
                    w.status
                        .as_ref()
                        .and_then(|s| s.last_delivery.as_ref())
                        .and_then(|d| d.status_code)
                });
            let rate = w.spec.rate_limit(Some(&hub.spec));
            rows.push(json!({
                "webhook": w.name_any(), "label": w.spec.label, "active": w.spec.active, "paused": w.spec.paused, "ready": ready,
                "signing": w.spec.signing_scheme(Some(&hub.spec)),
                "rateLimit": rate,
                "lastStatus": last_status,
                "failuresLastHour": failures, "retrying": retrying,
            }));
        }
        let ready = hub
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        report.push(json!({
            "namespace": ns, "hub": hub.name_any(), "label": hub.spec.label, "ready": ready,
            "ingestPath": format!("/v1/namespaces/{ns}/hubs/{}/events", hub.name_any()),
            "egressProxy": hub.status.as_ref().and_then(|s| s.egress_proxy.clone()),
            "webhooks": rows,
        }));
    }
    if ctx.output.is_structured() {
        return print_structured(&ctx.output, &json!({ "hubs": report }));
    }
    if report.is_empty() {
        println!("No hubs in namespace {}.", ctx.namespace);
    }
    for hub in &report {
        let webhooks = hub["webhooks"].as_array().cloned().unwrap_or_default();
        let active = webhooks.iter().filter(|w| w["active"] == true).count();
        let egress = match hub["egressProxy"].as_str() {
            Some(proxy) => format!("; requests leave through the egress proxy {proxy}"),
            None => String::new(),
        };
        println!(
            "Hub {} ({}) in {}: {}, {active}/{} webhooks active; the CMS posts to {}{egress}",
            hub["hub"].as_str().unwrap_or_default(),
            one_line(hub["label"].as_str().unwrap_or_default()),
            hub["namespace"].as_str().unwrap_or_default(),
            if hub["ready"] == true {
                ctx.paint("Ready", "32")
            } else {
                ctx.paint("Not ready", "31")
            },
            webhooks.len(),
            hub["ingestPath"].as_str().unwrap_or_default(),
        );
        let wide = ctx.output == Output::Wide;
        let rows: Vec<Vec<String>> = webhooks
            .iter()
            .map(|w| {
                let mut row = vec![
                    w["webhook"].as_str().unwrap_or_default().to_string(),
                    one_line(w["label"].as_str().unwrap_or_default()),
                    match (w["active"] == true, w["paused"] == true) {
                        (true, false) => "true".into(),
                        (true, true) => ctx.paint("paused", "33"),
                        (false, _) => ctx.paint("false", "31"),
                    },
                    w["ready"].as_str().unwrap_or_default().to_string(),
                    ctx.status_code(w["lastStatus"].as_u64().map(|c| c as u16)),
                    w["failuresLastHour"].to_string(),
                    w["retrying"].to_string(),
                ];
                if wide {
                    row.push(w["signing"].as_str().unwrap_or_default().to_string());
                    row.push(match w["rateLimit"].as_object() {
                        Some(r) => format!(
                            "{}/s burst {}",
                            r["requestsPerSecond"],
                            r.get("burst").and_then(Value::as_u64).unwrap_or(1)
                        ),
                        None => "-".into(),
                    });
                }
                row
            })
            .collect();
        if !rows.is_empty() {
            let headers = [
                "WEBHOOK",
                "LABEL",
                "ACTIVE",
                "READY",
                "LAST STATUS",
                "FAILED (1H)",
                "RETRYING",
                "SIGNING",
                "RATE LIMIT",
            ];
            let shown = if wide { headers.len() } else { headers.len() - 2 };
            println!("{}\n", table(&headers[..shown], &rows));
        }
    }
    Ok(())
}
