//! The library's dependencies run one way (docs/ARCHITECTURE.md): every top-level module of
//! `servercore/src` sits in a layer, and may use only modules of lower layers. This test
//! reads the sources (as `shared/tools/modcycles.py` does: `crate::NAME` and
//! `use crate::{..}` references, comments and `#[cfg(test)]` tails left out) and fails on
//! an upward or sideways reference, or on a module no layer names.

mod sources;

use sources::rust_files;
use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top. A module may use the modules of the layers before its own.
const LAYERS: &[&[&str]] = &[
    &["sys"],
    &["buffer", "error", "reason", "timer"],
    &["driver", "telemetry", "tls", "ws"],
    &["config", "transport"],
    &["mailbox"],
    &["registry"],
    &["session"],
    &["room", "worker"],
    &["packet", "service"],
    &["job"],
    &["cluster"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The source without comments and without what follows the first `#[cfg(test)]` line
/// (test modules sit at the end of a file and may reach anywhere).
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        code.push_str(line.split("//").next().unwrap_or(""));
        code.push('\n');
    }
    code
}

/// The top-level modules `code` refers to with `crate::NAME` or `crate::{NAME, ..}`.
fn references(code: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let boundary = i == 0 || {
            let c = rest.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        if boundary {
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    refs.push(name);
                }
            } else {
                let name: String =
                    after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                refs.push(name);
            }
        }
        rest = after;
    }
    refs
}

#[test]
fn dependencies_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeMap::new();
    for name in std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()) {
        let stem = name.file_stem().unwrap().to_string_lossy().to_string();
        if stem != "lib" {
            modules.insert(stem, ());
        }
    }
    let mut problems = Vec::new();
    for m in modules.keys() {
        if layer_of(m).is_none() {
            problems.push(format!("module `{m}` is in no layer (add it to LAYERS and the docs)"));
        }
    }
    let mut edges = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let me = top.trim_end_matches(".rs").to_string();
        if me == "lib" {
            continue; // the crate root re-exports everything by design
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for r in references(&code) {
            if r == me || !modules.contains_key(&r) {
                continue;
            }
            edges += 1;
            match (layer_of(&me), layer_of(&r)) {
                (Some(a), Some(b)) if b < a => {}
                (Some(_), Some(_)) => problems.push(format!(
                    "{} uses `{r}`, which is not in a lower layer than `{me}`",
                    rel.display()
                )),
                _ => {}
            }
        }
    }
    assert!(edges > 20, "only {edges} references found: is the parser broken?");
    assert!(problems.is_empty(), "dependencies that do not point down:\n{}", problems.join("\n"));
}

#[test]
fn the_reference_parser_sees_paths_and_groups() {
    let code = code_of(
        "use crate::a::B;\nuse crate::{c, d::E};\nlet x = crate::f::g(); // crate::h\n\
         #[cfg(test)]\nuse crate::i;",
    );
    assert_eq!(references(&code), ["a", "c", "d", "f"]);
}
