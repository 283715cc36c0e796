//! The source layout keeps its promises: no import cycle between the
//! crate's top-level modules (each concept has one home, and a module never
//! needs one that needs it), and the store is chosen in one place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its code names (`crate::x`),
/// tests left out. `lib.rs`, `main.rs` and `cli.rs` wire everything together
/// and are left out as sources.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let top = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if ["lib", "main", "cli"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let names = graph.entry(top.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(group.split(',').filter_map(|p| first_segment(p.trim())));
            } else if let Some(name) = first_segment(rest) {
                names.insert(name);
            }
        }
        names.remove(&top);
    }
    graph
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// The modules `from` reaches through `graph`.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next: Vec<String> = graph.get(from).into_iter().flatten().cloned().collect();
    while let Some(m) = next.pop() {
        if seen.insert(m.clone()) {
            next.extend(graph.get(&m).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = dependencies();
    assert!(
        graph.contains_key("delivery") && graph.contains_key("store") && graph["delivery"].contains("store"),
        "the scan must see the modules: {graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter(|m| reachable(&graph, m).contains(*m))
        .map(|m| format!("{m} → {:?}", graph[m]))
        .collect();
    assert!(
        cycles.is_empty(),
        "modules that reach themselves:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_store_depends_on_no_part_that_uses_it() {
    let graph = dependencies();
    let reached = reachable(&graph, "store");
    for user in ["delivery", "ingest", "console", "plugin", "controller"] {
        assert!(!reached.contains(user), "store reaches {user}: {reached:?}");
    }
}
