//! The layering gate: no import cycle between the modules of a crate of the workspace, nor
//! between the files of one module, read from the source as it is. Between crates, cargo
//! makes a cycle a compile error (the log is `crates/agentlog-log`); inside the root crate,
//! until the rest of the workspace split, this test does.
//!
//! A file's imports are the `crate::<module>` paths in its code (comments and its test module
//! left out); inside a directory, a file imports a sibling through `super::<file>` or its
//! module's full path. The binary's `cli/` and the benchmarks sit above everything and are
//! not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules that may import anything: nothing in the library imports them (and
/// this gate itself).
const TOP: [&str; 5] = ["main", "lib", "cli", "bench", "layering"];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a file without its test module and comment lines.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every identifier that follows `prefix` in `code` (`crate::` → `log`, `api`, ...), and
/// those listed in a `prefix{...}` group.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            names.extend(inner.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).map(str::to_string));
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// The source roots: this crate's `src/`, and each workspace crate's (`crates/*/src`).
fn source_roots() -> Vec<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = vec![manifest.join("src")];
    let crates = std::fs::read_dir(manifest.join("crates")).expect("crates/");
    let mut members: Vec<PathBuf> = crates.flatten().map(|e| e.path().join("src")).filter(|p| p.is_dir()).collect();
    members.sort();
    assert!(!members.is_empty(), "the scan found the workspace crates");
    roots.extend(members);
    roots
}

/// A cycle between the top-level modules of the crate at `root`, if there is one, and how many
/// modules it checked.
fn module_cycle(root: &Path) -> (Option<Vec<String>>, usize) {
    let modules: BTreeSet<String> = std::fs::read_dir(root)
        .expect("src")
        .flatten()
        .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|m| !TOP.contains(&m.as_str()))
        .collect();
    let mut graph = Graph::new();
    for file in rust_files(root) {
        let relative = file.strip_prefix(root).expect("under src");
        let module = relative.components().next().map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()).unwrap_or_default();
        if TOP.contains(&module.as_str()) {
            continue;
        }
        let code = code_of(&file);
        let mut imports = names_after(&code, "crate::");
        if file.parent() == Some(root) {
            // A file at the crate's root names its siblings through `super::` too.
            imports.extend(names_after(&code, "super::"));
        }
        graph.entry(module.clone()).or_default().extend(imports.into_iter().filter(|m| modules.contains(m) && *m != module));
    }
    (cycle(&graph), graph.len())
}

#[test]
fn no_import_cycle_between_modules() {
    let mut checked = 0;
    for root in source_roots() {
        let (found, modules) = module_cycle(&root);
        if let Some(found) = found {
            panic!("import cycle between the modules of {}: {}", root.display(), found.join(" → "));
        }
        checked += modules;
    }
    // A scan that found (almost) nothing would pass vacuously.
    assert!(checked >= 20, "the scan found only {checked} modules in the workspace's crates");
}

/// Checks every module directory under `root`; returns how many it checked.
fn check_module_files(root: &Path) -> usize {
    let mut dirs: Vec<PathBuf> = rust_files(root).iter().filter_map(|f| f.parent().map(Path::to_path_buf)).filter(|d| d != root).collect();
    dirs.sort();
    dirs.dedup();
    let mut checked = 0;
    for dir in dirs {
        let module_path = format!("crate::{}::", dir.strip_prefix(root).expect("under src").to_string_lossy().replace('/', "::"));
        let files: BTreeSet<String> = std::fs::read_dir(&dir)
            .expect("module directory")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .filter(|f| f != "mod")
            .collect();
        let mut graph = Graph::new();
        for file in &files {
            let code = code_of(&dir.join(format!("{file}.rs")));
            let mut imports = names_after(&code, "super::");
            imports.extend(names_after(&code, &module_path));
            graph.insert(file.clone(), imports.into_iter().filter(|f| files.contains(f) && f != file).collect());
        }
        if let Some(found) = cycle(&graph) {
            panic!("import cycle between the files of {}: {}", dir.display(), found.join(" → "));
        }
        checked += 1;
    }
    checked
}

#[test]
fn no_import_cycle_between_the_files_of_a_module() {
    let checked: usize = source_roots().iter().map(|root| check_module_files(root)).sum();
    assert!(checked >= 10, "the scan found only {checked} module directories in the workspace's crates");
}

#[test]
fn the_gate_sees_a_cycle() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")].into_iter().fold(Graph::new(), |mut g, (from, to)| {
        g.entry(from.to_string()).or_default().insert(to.to_string());
        g
    });
    assert_eq!(cycle(&graph), Some(vec!["a".to_string(), "b".to_string(), "c".to_string(), "a".to_string()]));
    let code = "use super::{State, storage};\nlet x = crate::log::EventLog;\n";
    assert_eq!(names_after(code, "super::"), ["State", "storage"].into_iter().map(String::from).collect());
    assert_eq!(names_after(code, "crate::"), ["log"].into_iter().map(String::from).collect());
}
