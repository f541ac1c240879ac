//! The workspace's layout rules (issue #12), checked over every crate's source:
//! - no module cycles between sibling modules: a module may use its parent (`super::`), but
//!   two modules that use each other (directly or around a ring) are one job split badly;
//! - no Rust file over 800 lines.
//!
//! References are read from the text: every `crate::…`, `super::…` and `self::…` path (and
//! the items of a `{…}` group after one), outside comments and `#[cfg(test)]` code, resolved
//! to the longest module file it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds host/")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The crates' `src/` directories.
fn crate_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
        out.push(dir.join("src"));
    }
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() && !name.starts_with('.') && !matches!(name.as_str(), "target" | "src") {
            crate_sources(&p, out);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Module = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    parts
}

/// The text without `//` comments and without what follows the first `#[cfg(test)]`.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path starting with `crate`, `super` or `self`, as segments; a `{a, b::c}` group after
/// it gives one path per item.
fn paths(code: &str) -> Vec<Vec<String>> {
    let b: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_ident(b[i]) || (i > 0 && (is_ident(b[i - 1]) || b[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let mut segs: Vec<String> = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < b.len() && is_ident(b[j]) {
                j += 1;
            }
            segs.push(b[start..j].iter().collect());
            if j + 2 < b.len() && b[j] == ':' && b[j + 1] == ':' && is_ident(b[j + 2]) {
                j += 2;
            } else {
                break;
            }
        }
        if !matches!(segs[0].as_str(), "crate" | "super" | "self") {
            i = j;
            continue;
        }
        if j + 2 < b.len() && b[j] == ':' && b[j + 1] == ':' && b[j + 2] == '{' {
            let end = b[j + 3..]
                .iter()
                .position(|&c| c == '}')
                .map_or(b.len(), |p| j + 3 + p);
            let group: String = b[j + 3..end].iter().collect();
            for item in group.split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                if !item.is_empty() && item != "self" && item != "*" {
                    let mut p = segs.clone();
                    p.extend(item.split("::").map(str::to_owned));
                    out.push(p);
                }
            }
            j = end;
        }
        out.push(segs);
        i = j.max(i + 1);
    }
    out
}

/// Absolute module path of `path` written in module `m`.
fn absolute(m: &Module, path: &[String]) -> Module {
    let mut base: Module = Vec::new();
    let mut rest = path;
    match path[0].as_str() {
        "crate" => rest = &path[1..],
        "self" => {
            base = m.clone();
            rest = &path[1..];
        }
        _ => {
            base = m.clone();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
    }
    base.extend(rest.iter().cloned());
    base
}

fn cycles(src: &Path) -> Vec<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "bin"))
        .map(|f| (module_of(src, &f), f))
        .collect();
    let resolve = |p: &Module| -> Option<Module> {
        (0..=p.len())
            .rev()
            .map(|n| p[..n].to_vec())
            .find(|prefix| modules.contains_key(prefix))
    };
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, f) in &modules {
        let text = std::fs::read_to_string(f).expect("a readable source file");
        for p in paths(&code(&text)) {
            if let Some(t) = resolve(&absolute(m, &p))
                && &t != m
            {
                edges.entry(m.clone()).or_default().insert(t);
            }
        }
    }
    strongly_connected(&modules.keys().cloned().collect::<Vec<_>>(), &edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| c.into_iter().map(|m| m.join("::")).collect())
        .collect()
}

/// Tarjan's strongly connected components.
fn strongly_connected(
    nodes: &[Module],
    edges: &BTreeMap<Module, BTreeSet<Module>>,
) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T<'_>, v: &Module) {
        let n = t.index.len();
        t.index.insert(v.clone(), n);
        t.low.insert(v.clone(), n);
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let next: Vec<Module> = t
            .edges
            .get(v)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for w in next {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let l = t.low[v].min(t.low[&w]);
                t.low.insert(v.clone(), l);
            } else if t.on.contains(&w) {
                let l = t.low[v].min(t.index[&w]);
                t.low.insert(v.clone(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            t.out.push(comp);
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_checker_finds_a_ring_and_ignores_parents() {
    let dir = std::env::temp_dir().join(format!("kagi-layout-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;\n").unwrap();
    // a -> b -> c -> a is a ring; a::child -> a (its parent) and the doc link are not edges.
    std::fs::write(src.join("a.rs"), "use crate::b::B;\n/// [`crate::c`]\n").unwrap();
    std::fs::write(src.join("a/child.rs"), "use super::*;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::{c::C, a};\n").unwrap();
    std::fs::write(
        src.join("c.rs"),
        "fn f() { super::a::g() }\n#[cfg(test)]\nuse crate::b;\n",
    )
    .unwrap();
    let found = cycles(&src);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut ring = found[0].clone();
    ring.sort();
    assert_eq!(ring, ["a", "b", "c"]);
    // Without c's call back to a, b -> a, a -> b is still a ring; without that too, none.
    std::fs::write(src.join("c.rs"), "fn f() {}\n").unwrap();
    assert_eq!(cycles(&src).len(), 1);
    std::fs::write(src.join("b.rs"), "use crate::c::C;\n").unwrap();
    assert!(cycles(&src).is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn no_module_cycles_in_any_crate() {
    let mut srcs = Vec::new();
    crate_sources(&workspace(), &mut srcs);
    assert!(srcs.len() > 15, "crates found: {srcs:?}");
    let mut found = Vec::new();
    for src in &srcs {
        for c in cycles(src) {
            found.push(format!("{}: {}", src.display(), c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn no_rust_file_over_800_lines() {
    let mut files = Vec::new();
    rust_files(&workspace(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by job: {}", long.join(", "));
}
