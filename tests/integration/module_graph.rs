//! The crate's module graph stays acyclic and matches the layers the README shows.
//!
//! A node is a top-level module of `src/` (a "room": `grants`, `slack`, `config`, …; its
//! submodules belong to it), plus `crate` for what `lib.rs` itself defines. An edge is a
//! path that names another room (`crate::store::…`, `use crate::{audit, …}`, or `super::x`
//! from a top-level file), outside comments, string literals and `#[cfg(test)]` items:
//! tests may reach anywhere. `main.rs` is a separate crate on top of everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

const ROOT: &str = "crate";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/approvals/oncall.rs` → `["approvals", "oncall"]`; `src/lib.rs` → `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// `text` with comments, string literals and char literals blanked out (lengths kept), so
/// that `crate::` inside them is not taken for a path.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident(b[i - 1]);
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            // A raw string: r"…", r#"…"#, br"…".
            let mut j = i + if c == 'b' { 2 } else { 1 };
            while b.get(j) == Some(&'#') {
                j += 1;
            }
            b.get(j) == Some(&'"')
        } {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while b[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1f}') or a lifetime ('a).
            let close = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(k) => {
                    out.push_str("' '");
                    i = k + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `code` without its `#[cfg(test)]` items (a `mod tests { … }`, or an item up to `;`).
fn without_tests(code: &str) -> String {
    let mut code = code.to_string();
    while let Some(start) = code.find("#[cfg(test)]") {
        let after = start + "#[cfg(test)]".len();
        let brace = code[after..].find('{').map(|k| k + after);
        let semi = code[after..].find(';').map(|k| k + after);
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => s + 1,
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = code.len();
                for (k, ch) in code[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => code.len(),
        };
        code.replace_range(start..end, "");
    }
    code
}

/// The first segment of every path after `crate::` (each item of a `crate::{…}` group).
fn crate_references(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(k) = rest.find("crate::") {
        let before = rest[..k].chars().next_back();
        rest = &rest[k + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `jitgate_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split on commas outside nested braces.
            let (mut depth, mut item) = (0, String::new());
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            out.push(first_segment(&item));
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Room → the rooms it uses.
fn room_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| f != &src.join("main.rs"));
    let modules: Vec<(PathBuf, Vec<String>)> = files.iter().map(|f| (f.clone(), module_path(src, f))).collect();
    let rooms: BTreeSet<String> = modules.iter().filter_map(|(_, m)| m.first().cloned()).collect();
    let room_of = |name: &str| {
        if rooms.contains(name) {
            name.to_string()
        } else {
            ROOT.to_string()
        }
    };
    let mut graph: Graph = rooms.iter().map(|r| (r.clone(), BTreeSet::new())).collect();
    graph.insert(ROOT.to_string(), BTreeSet::new());
    for (file, module) in &modules {
        let this = module.first().cloned().unwrap_or_else(|| ROOT.to_string());
        let code = without_tests(&code_only(&std::fs::read_to_string(file).unwrap()));
        let mut used: Vec<String> = crate_references(&code).iter().map(|s| room_of(s)).collect();
        // In a top-level file, `super::x` is `crate::x`.
        if module.len() == 1 {
            let mut rest = code.as_str();
            while let Some(k) = rest.find("super::") {
                rest = &rest[k + "super::".len()..];
                used.push(room_of(&first_segment(rest)));
            }
        }
        // In lib.rs, modules are named directly (`jobs::scheduler(…)`).
        if module.is_empty() {
            for room in &rooms {
                if code.contains(&format!("{room}::")) {
                    used.push(room.clone());
                }
            }
        }
        for u in used {
            if u != this {
                graph.get_mut(&this).unwrap().insert(u);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the list of its nodes (first = last), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(k, v)| format!("  {k} -> {}", v.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The README's layers, top first: each line of its "Architecture" table names the
/// modules of one layer in backticks.
fn readme_layers() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("\n## Architecture")
        .nth(1)
        .expect("README.md has an `## Architecture` section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| layer") && !l.starts_with("| ---"))
        .map(|l| {
            let modules = l.split('|').nth(2).unwrap_or("");
            modules
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|m| m.trim_end_matches("/").to_string())
                .collect()
        })
        .collect()
}

#[test]
fn top_level_modules_use_each_other_without_a_cycle() {
    let graph = room_graph(&src());
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "module cycle: {}\nGive the shared piece a home below both (see README, Architecture).\nThe graph:\n{}",
            cycle.join(" -> "),
            show(&graph)
        );
    }
}

#[test]
fn every_module_sits_in_a_readme_layer_and_uses_only_layers_below() {
    let graph = room_graph(&src());
    let layers = readme_layers();
    let layer_of = |m: &str| layers.iter().position(|l| l.iter().any(|x| x == m));
    for module in graph.keys() {
        assert!(
            layer_of(module).is_some(),
            "module `{module}` is not in the README's Architecture table; add it to its layer"
        );
    }
    for listed in layers.iter().flatten() {
        assert!(
            graph.contains_key(listed),
            "the README's Architecture table lists `{listed}`, which is not a module of src/"
        );
    }
    for (from, tos) in &graph {
        for to in tos {
            assert!(
                layer_of(from) <= layer_of(to),
                "`{from}` uses `{to}`, which the README's Architecture table puts in a higher layer; \
                 move the shared piece down or fix the table.\nThe graph:\n{}",
                show(&graph)
            );
        }
    }
}

#[test]
fn there_is_no_catch_all_module() {
    let graph = room_graph(&src());
    for name in ["util", "utils", "common", "helpers", "misc", "shared"] {
        assert!(
            !graph.contains_key(name),
            "`{name}` says nothing about what it holds; give each helper a home named for what it does"
        );
    }
}

#[test]
fn the_check_sees_paths_in_code_but_not_in_comments_strings_or_tests() {
    let text = r##"
        use crate::{alpha, beta::{x, y}, self};
        // crate::commented
        /* crate::blocked /* nested */ */
        const S: &str = "crate::quoted \" crate::escaped";
        const R: &str = r#"crate::raw "still" raw"#;
        const C: char = '"';
        fn f<'a>(x: &'a str) -> &'a str { crate::gamma::call(x) }
        #[cfg(test)]
        mod tests { use crate::delta; fn g() { let _ = "}"; } }
        #[cfg(test)]
        use crate::epsilon;
        fn h() { crate::zeta::Z }
    "##;
    let refs = crate_references(&without_tests(&code_only(text)));
    assert_eq!(refs, ["alpha", "beta", "gamma", "zeta"]);
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_accepts_a_dag() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let cycle = find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
}
