//! The library's dependencies run one way (docs/ARCHITECTURE.md): every top-level module of
//! `servercore/src` sits in a layer, and may use only modules of lower layers. This test
//! reads the sources (`crate::NAME`, `use crate::{..}` and `super::` paths that reach the
//! crate root; comments and `#[cfg(test)]` modules left out) and fails on an upward or
//! sideways reference, or on a module no layer names.

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

/// Whether `line` is a `#[cfg(..)]` attribute that keeps what follows to test builds:
/// `#[cfg(test)]` or `#[cfg(all(test, ..))]`.
fn is_test_cfg(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("#[cfg(test)]") || t.starts_with("#[cfg(all(test,")
}

/// The leading whitespace of `line`.
fn indent_of(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// Whether `line` opens an inline module (`mod NAME {`, `pub mod NAME {`, ..).
fn opens_inline_mod(line: &str) -> bool {
    let t = line.trim();
    let t = match t.strip_prefix("pub") {
        Some(r) if r.starts_with(' ') || r.starts_with('(') => {
            r.split_once(')').map_or(r, |(_, after)| after).trim_start()
        }
        _ => t,
    };
    t.starts_with("mod ") && t.ends_with('{')
}

/// The source without comments and without its test-only items. A `#[cfg(test)]` (or
/// `#[cfg(all(test, ..))]`) item, be it a test module, a test-only field, function or
/// statement, is left out up to its end: the first line at the item's own indentation that
/// ends in `;`, `,` or `}` (rustfmt's layout). Test code may reach anywhere; the rest of the
/// file, after a test-only item mid-file too, is checked.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut code = String::new();
    let mut i = 0;
    while i < lines.len() {
        if is_test_cfg(lines[i]) {
            i += 1;
            while i < lines.len() && lines[i].trim_start().starts_with("#[") {
                i += 1;
            }
            let indent = lines.get(i).map_or("", |l| indent_of(l));
            while i < lines.len() {
                let line = lines[i].split("//").next().unwrap_or("").trim_end();
                i += 1;
                if indent_of(line) == indent && line.ends_with([';', ',', '}']) {
                    break;
                }
            }
            continue;
        }
        code.push_str(lines[i].split("//").next().unwrap_or(""));
        code.push('\n');
        i += 1;
    }
    code
}

/// How deep the module of the file at `rel` (a path below `src`) sits: 1 for `a.rs` and
/// `a/mod.rs`, 2 for `a/b.rs` and `a/b/mod.rs`, and so on. That many `super::` reach the
/// crate root.
fn depth_of(rel: &Path) -> usize {
    let n = rel.components().count();
    if rel.file_name().is_some_and(|f| f == "mod.rs") {
        n - 1
    } else {
        n
    }
}

/// The module depth of every line of `code`, for a file at `depth`: an inline `mod NAME {`
/// adds one up to its closing brace at the same indentation.
fn line_depths(code: &str, depth: usize) -> Vec<usize> {
    let mut open: Vec<String> = Vec::new();
    let mut depths = Vec::new();
    for line in code.lines() {
        if open.last().is_some_and(|close| line.trim_end() == close) {
            open.pop();
        }
        depths.push(depth + open.len());
        if opens_inline_mod(line) {
            open.push(format!("{}}}", indent_of(line)));
        }
    }
    depths
}

/// The names at the head of each item of a `{a, b::c, d::{e, f}}` group; `group` starts
/// just after the opening brace.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut nesting = 0;
    let mut at_item = true;
    for (k, c) in group.char_indices() {
        match c {
            '{' => nesting += 1,
            '}' if nesting == 0 => break,
            '}' => nesting -= 1,
            ',' if nesting == 0 => at_item = true,
            c if at_item && !c.is_whitespace() => {
                at_item = false;
                heads.push(ident_at(&group[k..]));
            }
            _ => {}
        }
    }
    heads
}

/// The identifier `s` starts with.
fn ident_at(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// The top-level modules `code` (of a module `depth` levels below the crate root) refers
/// to: `crate::NAME`, `crate::{NAME, ..}`, and `super::` chains that reach the crate root
/// (`super::NAME` in `a/mod.rs` or `a.rs`, `super::super::NAME` in `a/b.rs`, ..).
fn references(code: &str, depth: usize) -> Vec<String> {
    let depths = line_depths(code, depth);
    let mut line_starts = vec![0];
    line_starts.extend(code.match_indices('\n').map(|(i, _)| i + 1));
    let depth_at = |i: usize| {
        let line = line_starts.partition_point(|&s| s <= i) - 1;
        depths.get(line).copied().unwrap_or(depth)
    };
    let at_boundary = |i: usize| {
        i == 0 || {
            let c = code.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        }
    };
    let mut refs = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let root = if rest.starts_with("crate::") && at_boundary(i) {
            Some("crate::".len())
        } else if rest.starts_with("super::") && at_boundary(i) {
            let mut after = rest;
            let mut supers = 0;
            while let Some(r) = after.strip_prefix("super::") {
                supers += 1;
                after = r;
            }
            let len = rest.len() - after.len();
            if supers == depth_at(i) {
                Some(len)
            } else {
                i += len;
                continue;
            }
        } else {
            None
        };
        match root {
            Some(len) => {
                let after = &rest[len..];
                match after.strip_prefix('{') {
                    Some(group) => refs.extend(group_heads(group)),
                    None => refs.push(ident_at(after)),
                }
                i += len;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
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
        for r in references(&code, depth_of(rel)) {
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
    assert_eq!(references(&code, 1), ["a", "c", "d", "f"]);
}

#[test]
fn a_test_only_item_mid_file_does_not_end_the_check() {
    // As in `driver/uring/mod.rs`: a `#[cfg(test)]` field, then more code.
    let code = code_of(
        "struct S {\n    #[cfg(test)]\n    pub(crate) fail: Option<crate::x::E>,\n    \
         a: crate::a::A,\n}\nfn f() {\n    #[cfg(test)]\n    if let Some(e) = crate::y::E {\n        \
         return;\n    }\n    crate::b::g();\n}\n#[cfg(test)]\nfn only_in_tests(\n    x: X,\n) \
         -> crate::z::Z {\n}\nuse crate::c;\n",
    );
    assert_eq!(references(&code, 1), ["a", "b", "c"]);
}

#[test]
fn test_modules_are_skipped_to_their_closing_brace() {
    // As in `sys/seccomp.rs`: a nested test module with code after it; and one at the end.
    let code = code_of(
        "mod imp {\n    use crate::a;\n\n    #[cfg(test)]\n    mod tests {\n        \
         use crate::b;\n        fn f() {\n        }\n    }\n}\nuse crate::c;\n\
         #[cfg(all(test, not(loom)))]\n#[allow(unused)]\nmod tests {\n    use crate::d;\n}\n\
         use crate::e;\n",
    );
    assert_eq!(references(&code, 1), ["a", "c", "e"]);
}

#[test]
fn super_paths_that_reach_the_crate_root_are_references() {
    // In `x/mod.rs` (depth 1), `super::` is the crate root; in `x/y.rs` (depth 2) it is `x`.
    let code = code_of("use super::a::A;\nuse super::{b, c::{C, D}};\nlet v = super::d::f();\n");
    assert_eq!(references(&code, 1), ["a", "b", "c", "d"]);
    assert!(references(&code, 2).is_empty());
    let deep = code_of("use super::super::e;\nuse super::sibling;\n");
    assert_eq!(references(&deep, 2), ["e"]);
    // An inline module adds a level: `super::` inside it is the file's own module.
    let inline = code_of("pub mod fuzzing {\n    pub use super::frame::check;\n}\nuse super::g;\n");
    assert_eq!(references(&inline, 1), ["g"]);
    assert_eq!(depth_of(Path::new("ws/mod.rs")), 1);
    assert_eq!(depth_of(Path::new("room.rs")), 1);
    assert_eq!(depth_of(Path::new("driver/uring/wait.rs")), 3);
}
