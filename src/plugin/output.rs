//! How results are printed: aligned tables, ages, JSON or YAML.

use super::*;

/// The id in a delivery's payload (`$.payload.id`), if any.
pub(super) fn content_item(d: &Delivery) -> Option<String> {
    match d.spec.payload_value().ok()?.get("id")? {
        Value::String(s) => Some(one_line(s)),
        other => Some(other.to_string()),
    }
}

/// Columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| strip_ansi(s).chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i] - width(cell) + 3));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

/// `s` with control characters escaped (`\x1b`, `\r`, `\u{9b}`, …): handler
/// responses, OAuth errors and payload values reach a terminal here, where
/// raw escape sequences could rewrite or hide what it shows. Bodies keep
/// their newlines and tabs (`lines`); single values do not.
pub(super) fn printable(s: &str, lines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if lines => out.push(c),
            c if c.is_control() => match u32::from(c) {
                n @ 0..=0xff => out.push_str(&format!("\\x{n:02x}")),
                n => out.push_str(&format!("\\u{{{n:x}}}")),
            },
            c => out.push(c),
        }
    }
    out
}

/// One value on one line (see `printable`).
pub(super) fn one_line(s: &str) -> String {
    printable(s, false)
}

pub(super) fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// "5m" style ages.
pub(crate) fn age(since: Timestamp, now: Timestamp) -> String {
    let s = now.duration_since(since).as_secs().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub(super) fn print_structured(output: &Output, value: &impl serde::Serialize) -> anyhow::Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Output::JsonPath(path) => {
            for line in jsonpath_lines(path, &serde_json::to_value(value)?)? {
                println!("{line}");
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

/// What `path` selects in `value`, one line each: strings as they are,
/// everything else as compact JSON.
pub(super) fn jsonpath_lines(path: &str, value: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    let path = serde_json_path::JsonPath::parse(path)?;
    Ok(path
        .query(value)
        .all()
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect())
}

pub(super) fn phase_of(d: &Delivery) -> Phase {
    d.status.as_ref().map(|s| s.phase).unwrap_or_default()
}
