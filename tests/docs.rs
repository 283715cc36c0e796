//! The docs site (`docs/`, built by `make docs` with mdBook) stays true:
//! the generated reference pages match the code, every relative link and
//! include points at a file that exists (and, within the book, at a heading
//! that exists), every page is in the table of contents, and every alert the
//! chart defines has its runbook.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "md") {
            into.push(path);
        }
    }
}

fn book_pages() -> Vec<PathBuf> {
    let mut pages = Vec::new();
    markdown_files(&root().join("docs"), &mut pages);
    pages.sort();
    pages
}

/// Link targets of `text`: what `](…)` holds, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    found
}

/// Heading anchors as mdBook makes them: lower case, spaces to hyphens,
/// other punctuation dropped.
fn anchors(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn the_reference_pages_are_generated_from_the_code() {
    for page in ["resources", "cli", "plugin"] {
        let path = root().join("docs/reference").join(format!("{page}.md"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = hookrelay::cli::reference_page(page).unwrap();
        assert!(
            committed == generated,
            "{} is not what the code generates: run `make docs`",
            path.display()
        );
    }
}

/// helm-docs (built once by controlplane.sh, from the Go module proxy) run
/// over the chart with a template from the chart.
fn helm_docs(args: &[&str]) -> String {
    let chart = root().join("charts/hookrelay");
    let out = std::process::Command::new("bash")
        .arg(root().join("tests/controlplane/controlplane.sh"))
        .arg("helm-docs")
        .args([
            "--chart-search-root",
            chart.to_str().unwrap(),
            "--dry-run",
            "--skip-version-footer",
        ])
        .args(args)
        .output()
        .expect("running controlplane.sh helm-docs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.is_empty(),
        "helm-docs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The chart's README (what `helm show readme` prints, and the docs' values
/// reference includes) and the descriptions in values.schema.json (what
/// editors show) both come from the `# --` comments in values.yaml: one
/// text per value, and every value has one.
#[test]
fn the_charts_readme_and_schema_descriptions_are_generated_from_values_yaml() {
    let chart = root().join("charts/hookrelay");
    let committed = std::fs::read_to_string(chart.join("README.md")).unwrap_or_default();
    let generated = helm_docs(&[]);
    assert!(
        committed.trim_end() == generated.trim_end(),
        "charts/hookrelay/README.md is not what helm-docs makes of values.yaml: run `make chart-docs`"
    );

    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap()).unwrap();
    let mut rows = 0;
    let mut wrong = Vec::new();
    for line in helm_docs(&["--template-files", "values.tsv.gotmpl"]).lines() {
        let Some((key, description)) = line.split_once('\t') else {
            continue;
        };
        rows += 1;
        if description.is_empty() {
            wrong.push(format!("{key}: no `# --` comment in values.yaml"));
            continue;
        }
        // Through a shared definition ($ref: ingress, httpRoute) the schema's
        // text is the definition's, worded for both uses.
        let mut node = &schema;
        for part in key.split('.') {
            if node.get("$ref").is_some() {
                break;
            }
            node = &node["properties"][part];
        }
        if node.is_null() {
            wrong.push(format!("{key}: not in values.schema.json"));
        } else if node.get("$ref").is_none() && node["description"].as_str() != Some(description) {
            wrong.push(format!(
                "{key}: the schema's description is not values.yaml's: {description:?}"
            ));
        }
    }
    assert!(rows > 50, "helm-docs listed the values ({rows})");
    assert!(wrong.is_empty(), "run `make chart-docs`:\n{}", wrong.join("\n"));
}

#[test]
fn every_relative_link_and_include_resolves() {
    let mut files = book_pages();
    files.push(root().join("README.md"));
    files.push(root().join("examples/receivers/README.md"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let dir = file.parent().unwrap();
        let mut targets: Vec<String> = links(&text)
            .into_iter()
            .filter(|l| !l.contains("://") && !l.starts_with("mailto:"))
            .collect();
        targets.extend(text.match_indices("{{#include ").map(|(at, _)| {
            text[at + 11..]
                .split("}}")
                .next()
                .unwrap_or_default()
                .trim()
                // `path:anchor` includes the part between ANCHOR comments.
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        }));
        for target in targets {
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() { file.clone() } else { dir.join(path) };
            if !resolved.exists() {
                broken.push(format!("{}: {target}", file.display()));
                continue;
            }
            let in_book = resolved.starts_with(root().join("docs"));
            if !anchor.is_empty() && in_book && resolved.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&resolved).unwrap());
                if !headings.contains(anchor) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(checked > 20, "the scan sees the links ({checked})");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_is_in_the_table_of_contents() {
    let summary = std::fs::read_to_string(root().join("docs/SUMMARY.md")).unwrap();
    let listed: BTreeSet<PathBuf> = links(&summary).iter().map(|l| root().join("docs").join(l)).collect();
    for page in book_pages() {
        if page.ends_with("SUMMARY.md") {
            continue;
        }
        assert!(listed.contains(&page), "{} is not in docs/SUMMARY.md", page.display());
    }
    for page in &listed {
        assert!(
            page.exists(),
            "docs/SUMMARY.md lists {} which does not exist",
            page.display()
        );
    }
}

#[test]
fn every_alert_has_a_runbook() {
    let rules = std::fs::read_to_string(root().join("charts/hookrelay/templates/prometheusrule.yaml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 5, "the scan sees the alerts: {alerts:?}");
    assert_eq!(
        rules.matches("runbook_url:").count(),
        alerts.len(),
        "each alert links its runbook"
    );
    let page = anchors(&std::fs::read_to_string(root().join("docs/operations/alerts.md")).unwrap());
    for alert in alerts {
        assert!(
            page.contains(&alert.to_lowercase()),
            "docs/operations/alerts.md has no runbook for {alert}"
        );
    }
}
