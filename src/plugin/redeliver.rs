//! `kubectl hookrelay redeliver`: a new round of attempts for one delivery or many.

use super::*;

pub(super) async fn redeliver(
    ctx: &Ctx,
    names: Vec<String>,
    webhook: Option<String>,
    filter: &Filter,
    yes: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    if names.is_empty() && webhook.is_none() && filter.is_empty() {
        bail!("name deliveries, or select them with --webhook, --outcome, --since, --event or --content-item");
    }
    // Everything is checked before anything changes.
    let mut chosen = vec![];
    for name in &names {
        chosen.push(ctx.delivery(name).await?);
    }
    if webhook.is_some() || !filter.is_empty() {
        let selected = select(ctx, webhook.as_deref(), filter).await?;
        chosen.extend(
            selected
                .into_iter()
                .filter(|d| names.is_empty() || names.contains(&d.name_any())),
        );
    }
    chosen.dedup_by_key(|d| (d.namespace(), d.name_any()));
    if ctx.output.is_structured() && dry_run {
        let list: Vec<String> = chosen.iter().map(|d| d.name_any()).collect();
        return print_structured(&ctx.output, &list);
    }
    println!("{} deliveries to redeliver:", chosen.len());
    for d in &chosen {
        println!(
            "  {}  {}  {}",
            d.name_any(),
            d.spec.event.name,
            content_item(d).unwrap_or_default()
        );
    }
    if dry_run || chosen.is_empty() {
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("add --yes to redeliver without a prompt (stdin is not a terminal)");
        }
        print!("Redeliver {} deliveries? [y/N] ", chosen.len());
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Nothing redelivered.");
            return Ok(());
        }
    }
    let value = Timestamp::now().to_string();
    for d in &chosen {
        let (ns, name) = (d.namespace().unwrap_or_default(), d.name_any());
        match ctx.deliveries.redeliver(&ns, &name, &value).await {
            Ok(()) => {}
            Err(StoreError::Busy) => {
                bail!("{name} is being attempted right now; redeliver it once that attempt is recorded")
            }
            Err(StoreError::Forbidden(_)) if ctx.namespace == ns => {
                bail!("your Kubernetes identity may not patch deliveries in namespace {ns} (hookrelay-edit grants it)")
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("redelivering {name}"))),
        }
    }
    println!("Redelivered {}.", chosen.len());
    Ok(())
}
