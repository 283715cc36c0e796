//! `kubectl hookrelay show`: one delivery and its attempts.

use super::*;

pub(super) async fn show(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let mut d = ctx.delivery(name).await?;
    d.metadata.managed_fields = None;
    if ctx.output.is_structured() {
        return print_structured(&ctx.output, &d);
    }
    let template = ctx
        .here::<Webhook>()
        .get_opt(&d.spec.webhook)
        .await?
        .and_then(|w| w.spec.custom_payload);
    let s = d.status.clone().unwrap_or_default();
    let bold = |t: &str| ctx.paint(t, "1");
    println!("{} {}", bold("Delivery"), d.name_any());
    println!("  webhook   {}", d.spec.webhook);
    println!("  event     {} ({})", d.spec.event.name, d.spec.event.id);
    println!("  received  {}", d.spec.event.received_at.0);
    if let Some(trace) = &d.spec.event.trace {
        println!("  trace     {}", trace.trace_id());
    }
    println!("  outcome   {:?} after {} attempts", s.phase, s.attempt_count);
    if let Some(m) = &s.message {
        println!("  message   {}", printable(m, true));
    }
    if let Some(next) = &s.next_attempt_at {
        println!("  next      {}", next.0);
    }
    if s.attempts_omitted > 0 {
        println!(
            "  ({} attempts left out to keep the delivery within its size budget)",
            s.attempts_omitted
        );
    }
    let recorded = s.request_body.clone().map(String::into_bytes);
    match recorded
        .map(Ok)
        .unwrap_or_else(|| request::body(&d, template.as_deref()))
    {
        Ok(body) => {
            let body = String::from_utf8_lossy(&body).into_owned();
            let pretty = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body);
            println!("\n{}\n{}", bold("Request body (as sent)"), printable(&pretty, true));
        }
        Err(e) => println!("\nRequest body cannot be shown: {}", one_line(&e.to_string())),
    }
    for a in &s.attempts {
        let waited = a
            .rate_limit_wait_ms
            .map(|ms| format!("  (waited {:.1} s for the rate limit)", ms as f64 / 1000.0))
            .unwrap_or_default();
        println!(
            "\n{} {}  {} ms{waited}",
            bold(&format!("Attempt {}", a.number)),
            a.time.0,
            a.duration_ms
        );
        println!("→ {} {}", a.request.method, one_line(&a.request.url));
        for h in &a.request.headers {
            println!("  {}: {}", ctx.paint(&one_line(&h.name), "36"), one_line(&h.value));
        }
        match &a.response {
            Some(r) => {
                println!("← {}", ctx.status_code(Some(r.status_code)));
                for h in &r.headers {
                    println!("  {}: {}", ctx.paint(&one_line(&h.name), "36"), one_line(&h.value));
                }
                if !r.body.is_empty() {
                    let cut = if r.body_truncated { " …(cut)" } else { "" };
                    println!("  {}{cut}", printable(&r.body, true));
                }
            }
            None => println!(
                "← {}",
                ctx.paint(&one_line(a.error.as_deref().unwrap_or("no response")), "31")
            ),
        }
    }
    Ok(())
}
