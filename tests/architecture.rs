//! The house rules of `src/`, checked on every test run: every module sits on a floor and
//! only uses modules on its own floor or below, no two modules (nor two files of one
//! folder) use each other in a circle, every file says what it owns in a `//!` line, and
//! no file's code (tests aside) runs past the length a reader can hold.
//!
//! A module's uses are read from its text the way `rustc` names them: `crate::NAME`
//! paths and `use crate::{…}` groups; inside a folder, `super::FILE` and
//! `crate::FOLDER::FILE` paths. Comments do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The floors, bottom up. A new module goes on the lowest floor whose modules it needs.
const FLOORS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "secret",
            "secret_format",
            "entropy",
            "random",
            "validate",
            "duration_serde",
            "parsed",
            "io",
            "http",
            "distro_kind",
            "host",
            "interrupt",
            "fault",
        ],
    ),
    (
        "node state and settings",
        &["state", "facts", "config", "logging", "role", "lock"],
    ),
    ("the plan engine", &["plan", "systemd"]),
    (
        "subsystems",
        &[
            "rootfs",
            "images",
            "containerd",
            "registry",
            "preflight",
            "api_proxy",
        ],
    ),
    ("the domain", &["hostprep", "distro", "join"]),
    ("the node's plan", &["node_plan"]),
    ("commands", &["cli", "app"]),
];

/// Lines of code a file may hold before its `#[cfg(test)]` module.
const MAX_CODE_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, by its module path (`["plan", "apply"]`, `["config"]`
/// for `config/mod.rs`).
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<Vec<String>, PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under src");
                let mut key: Vec<String> = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if key.last().is_some_and(|l| l == "mod") {
                    key.pop();
                }
                out.insert(key, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &src(), &mut out);
    out
}

/// The text without `//` comments (doc comments included), string contents kept.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str, start: usize) -> Option<&str> {
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let word = &rest[..end];
    (!word.is_empty() && word.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
        .then_some(word)
}

/// `(first, second)` segments of every path after `prefix` (`crate::`, `super::`), and
/// of every item of a `use crate::{…}` group.
fn paths_after(text: &str, prefix: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let start = from + i + prefix.len();
        from = start;
        let before = text[..start - prefix.len()].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if text[start..].starts_with('{') {
            let Some(end) = text[start..].find('}') else {
                continue;
            };
            for item in text[start + 1..start + end].split(',') {
                let item = item.trim();
                let mut parts = item.split("::");
                if let Some(first) = parts.next().and_then(|p| ident_at(p, 0)) {
                    let second = parts.next().and_then(|p| ident_at(p.trim(), 0));
                    out.push((first.to_owned(), second.map(str::to_owned)));
                }
            }
            continue;
        }
        if let Some(first) = ident_at(text, start) {
            let after = start + first.len();
            let second = text[after..]
                .strip_prefix("::")
                .and_then(|_| ident_at(text, after + 2));
            out.push((first.to_owned(), second.map(str::to_owned)));
        }
    }
    out
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Edges between top-level modules, and between the files of each folder.
fn graphs() -> (Graph, BTreeMap<String, Graph>) {
    let modules = modules();
    let tops: BTreeSet<String> = modules.keys().filter_map(|k| k.first().cloned()).collect();
    let mut top = Graph::new();
    let mut inner: BTreeMap<String, Graph> = BTreeMap::new();
    for (key, path) in &modules {
        let Some(me) = key.first() else { continue };
        if me == "main" || me == "lib" {
            continue;
        }
        top.entry(me.clone()).or_default();
        let text = code(path);
        for (first, second) in paths_after(&text, "crate::") {
            if !tops.contains(&first) {
                continue;
            }
            if &first != me {
                top.entry(me.clone()).or_default().insert(first);
            } else if let (Some(file), Some(second)) = (key.get(1), second) {
                if &second != file && modules.contains_key(&vec![me.clone(), second.clone()]) {
                    let folder = inner.entry(me.clone()).or_default();
                    folder.entry(file.clone()).or_default().insert(second);
                }
            }
        }
        if let Some(file) = key.get(1) {
            for (first, _) in paths_after(&text, "super::") {
                if &first != file && modules.contains_key(&vec![me.clone(), first.clone()]) {
                    let folder = inner.entry(me.clone()).or_default();
                    folder.entry(file.clone()).or_default().insert(first);
                }
            }
        }
    }
    (top, inner)
}

/// The strongly connected components with more than one member (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out
}

#[test]
fn no_module_uses_another_in_a_circle() {
    let (top, inner) = graphs();
    let mut found: Vec<String> = cycles(&top)
        .into_iter()
        .map(|c| format!("between modules: {}", c.join(" <-> ")))
        .collect();
    for (folder, graph) in &inner {
        for c in cycles(graph) {
            found.push(format!("inside {folder}/: {}", c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn every_module_uses_only_its_floor_and_below() {
    let floor_of: BTreeMap<&str, usize> = FLOORS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, names))| names.iter().map(move |n| (*n, i)))
        .collect();
    let (top, _) = graphs();
    let mut wrong = Vec::new();
    for (module, uses) in &top {
        let Some(&mine) = floor_of.get(module.as_str()) else {
            wrong.push(format!(
                "{module} is on no floor: add it to FLOORS in tests/architecture.rs and to docs/architecture.md"
            ));
            continue;
        };
        for used in uses {
            match floor_of.get(used.as_str()) {
                Some(&theirs) if theirs > mine => wrong.push(format!(
                    "{module} ({}) uses {used} ({}), a floor above it",
                    FLOORS[mine].0, FLOORS[theirs].0
                )),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_file_says_what_it_owns_and_stays_short() {
    let mut wrong = Vec::new();
    for path in modules().values() {
        let text = fs::read_to_string(path).expect("source file");
        let name = path
            .strip_prefix(src())
            .unwrap_or(path)
            .display()
            .to_string();
        if !text.trim_start().starts_with("//!") {
            wrong.push(format!("{name}: does not start with a `//!` line"));
        }
        let code_lines = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .count();
        if code_lines > MAX_CODE_LINES {
            wrong.push(format!(
                "{name}: {code_lines} lines before its tests (at most {MAX_CODE_LINES}): split it"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_cycles_and_uses() {
    let text = "use crate::{plan::Step, host};\nfn f() { crate::config::load(); super::apply::run(); }\n// crate::app\n";
    let found = paths_after(&code_from(text), "crate::");
    let firsts: Vec<&str> = found.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(firsts, ["plan", "host", "config"]);
    // Only module names count: `plan::Step` is a use of `plan`, not of a file `Step`.
    assert_eq!(found[0].1, None);
    let supers = paths_after(&code_from(text), "super::");
    assert_eq!(supers, [("apply".to_owned(), Some("run".to_owned()))]);

    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    graph.entry("d".into()).or_default().insert("a".into());
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
}

/// [`code`] for text rather than a file.
fn code_from(text: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.rs");
    fs::write(&path, text).expect("write");
    code(&path)
}
