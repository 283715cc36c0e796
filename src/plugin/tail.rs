//! `kubectl hookrelay tail`: deliveries as they happen.

use super::*;

pub(super) async fn tail(ctx: &Ctx, webhook: Option<String>) -> anyhow::Result<()> {
    if let Some(w) = &webhook {
        ctx.webhook(w).await?;
    }
    let config = match &webhook {
        Some(w) => watcher::Config::default().labels(&format!("{WEBHOOK_LABEL}={w}")),
        None => watcher::Config::default(),
    };
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    let namespace = (!ctx.all).then_some(ctx.namespace.as_str());
    let mut events = crate::store::history::watch(&ctx.client, ctx.history, namespace, config);
    let mut following = false;
    while let Some(event) = events.next().await {
        let (d, initial) = match event? {
            watcher::Event::InitApply(d) => (d, true),
            watcher::Event::Apply(d) => (d, false),
            watcher::Event::InitDone if !following => {
                // What exists was read: every attempt from now on is printed.
                following = true;
                eprintln!("following attempts (Ctrl-C to stop)…");
                continue;
            }
            _ => continue,
        };
        let key = (d.namespace().unwrap_or_default(), d.name_any());
        let status = d.status.clone().unwrap_or_default();
        let before = seen.insert(key, status.attempt_count).unwrap_or(0);
        if initial {
            continue;
        }
        for a in status.attempts.iter().filter(|a| a.number > before) {
            let outcome = match &a.response {
                Some(r) => ctx.status_code(Some(r.status_code)),
                None => ctx.paint(&one_line(a.error.as_deref().unwrap_or("no response")), "31"),
            };
            println!(
                "{}  {}  {}  {}  #{}  {}  {} ms",
                a.time.0.strftime("%H:%M:%S"),
                d.name_any(),
                d.spec.webhook,
                d.spec.event.name,
                a.number,
                outcome,
                a.duration_ms
            );
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}
