//! The layering docs/ARCHITECTURE.md describes, checked on the source: who may import whom,
//! where processes are spawned and the real kernel is built, and how long a file may grow.
//! Imports are read from the code (comments stripped): every `crate::NAME` path, including
//! the names inside `use crate::{a, b::c}`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its text.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    assert!(out.len() > 20, "found only {} source files", out.len());
    out
}

/// `src/serve/conn.rs` -> `serve`; `src/plan.rs` -> `plan`.
fn module_of(path: &Path) -> String {
    let rel = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without comments (line comments and doc comments), so that a doc
/// link to `crate::x` is not taken for an import.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal is rare in this code base; the test would
            // then see more imports than there are, never fewer.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file's code names through `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    let code = code(text);
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        if bytes.get(start) == Some(&b'{') {
            // A group: the first identifier of each top-level item.
            let (mut depth, mut expect, mut j) = (0usize, true, start);
            while j < bytes.len() {
                match bytes[j] {
                    b'{' => {
                        depth += 1;
                        if depth == 1 {
                            expect = true;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => expect = true,
                    c if depth == 1 && expect && (c.is_ascii_alphabetic() || c == b'_') => {
                        let end = code[j..]
                            .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                            .map_or(code.len(), |k| j + k);
                        out.insert(code[j..end].to_owned());
                        expect = false;
                        j = end;
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else {
            let end = code[start..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map_or(code.len(), |k| start + k);
            out.insert(code[start..end].to_owned());
        }
    }
    out.remove("self");
    out
}

/// Module -> the other top-level modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let m = module_of(&path);
        let mut uses = imports(&text);
        uses.remove(&m);
        g.entry(m).or_default().extend(uses);
    }
    g
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn the_import_reader_sees_plain_paths_groups_and_not_comments() {
    let text = "use crate::{cli::{Cli, Color}, kernel::nft::NftKernel, diag};\n\
                // crate::serve is only named here\n\
                let x = crate::plan::fingerprint(None); /// [`crate::status`]\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["cli", "diag", "kernel", "plan"]);
}

#[test]
fn lower_layers_import_neither_the_command_line_nor_the_command_layer() {
    let g = graph();
    let lower = [
        "serve",
        "converge",
        "status",
        "plan",
        "apply",
        "lower",
        "render",
        "config",
        "model",
        "nft",
        "types",
        "diag",
        "cache",
        "confirm",
        "preflight",
        "state",
        "kernel",
    ];
    let mut bad = Vec::new();
    for m in lower {
        let uses = g
            .get(m)
            .unwrap_or_else(|| panic!("no module `{m}` in src/"));
        for forbidden in ["cli", "cmd", "EXIT_OK", "EXIT_ERROR", "run"] {
            if uses.contains(forbidden) {
                bad.push(format!("{m} imports crate::{forbidden}"));
            }
        }
    }
    // status is read by serve's socket and metrics; it must not lean back on serve.
    if g["status"].contains("serve") {
        bad.push("status imports crate::serve (serve imports status)".into());
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_pure_pipeline_imports_nothing_from_the_kernel() {
    let g = graph();
    let mut bad = Vec::new();
    for m in [
        "plan", "apply", "render", "lower", "config", "model", "nft", "types",
    ] {
        if g[m].contains("kernel") {
            bad.push(m);
        }
    }
    assert!(bad.is_empty(), "these import crate::kernel: {bad:?}");
}

#[test]
fn no_import_cycle_among_config_model_render_plan_apply() {
    let g = graph();
    let core = ["config", "model", "render", "plan", "apply"];
    // Depth-first search for a path back to the start, within the core modules.
    for start in core {
        let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for next in g.get(&m).into_iter().flatten() {
                if !core.contains(&next.as_str()) {
                    continue;
                }
                if next == start {
                    panic!("import cycle: {} -> {start}", path.join(" -> "));
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
}

#[test]
fn only_the_kernel_module_spawns_and_only_the_command_layer_builds_the_real_kernel() {
    let mut spawns = Vec::new();
    let mut builds = Vec::new();
    for (path, text) in sources() {
        let code = code(&text);
        let name = rel(&path);
        if code.contains("Command::new") && !name.starts_with("src/kernel/") {
            spawns.push(name.clone());
        }
        let builds_kernel = code.contains("NftKernel::default()")
            || code.contains("NftKernel::new(")
            || code.contains("NftKernel {");
        if builds_kernel && !name.starts_with("src/cmd/") && !name.starts_with("src/kernel/") {
            builds.push(name);
        }
    }
    assert!(
        spawns.is_empty(),
        "spawn processes outside src/kernel/: {spawns:?}"
    );
    assert!(
        builds.is_empty(),
        "build NftKernel outside src/cmd/: {builds:?}"
    );
}

#[test]
fn no_source_file_is_over_800_lines_and_serve_mod_is_under_300() {
    let mut long = Vec::new();
    for (path, text) in sources() {
        let lines = text.lines().count();
        let name = rel(&path);
        if lines > 800 {
            long.push(format!("{name}: {lines} lines"));
        }
        if name == "src/serve/mod.rs" && lines >= 300 {
            long.push(format!("{name}: {lines} lines (at most 299)"));
        }
    }
    assert!(long.is_empty(), "{long:#?}");
}
