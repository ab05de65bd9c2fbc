//! The layers of `src/` (docs/ARCHITECTURE.md, "Layers"): each module may
//! use only the ones below it, so there is no import cycle and nothing
//! reaches back up. Read from the `crate::` paths in every source file,
//! comments left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The layers from the bottom: each may use the ones before it. `observe`
/// is two layers: its log and metrics serve every layer above; `status`
/// and `http` read the engine and come before the scheduler, which thus
/// never depends on them, nor they on it.
const LAYERS: &[&str] = &[
    "signals",
    "model",
    "schedule",
    "config",
    "observe",
    "coordination",
    "notify",
    "executor",
    "reload",
    "observe-readers",
    "api",
    "dashboard",
    "scheduler",
    "cli",
];

/// The layer a file of `src/` belongs to.
fn layer_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let top = first.trim_end_matches(".rs");
    if top == "lib" || top == "main" {
        return None;
    }
    let file = rel.file_stem()?.to_str()?;
    if top == "observe" && (file == "status" || file == "http") {
        return Some("observe-readers".into());
    }
    Some(top.to_string())
}

/// The layer a `crate::` path names: `crate::observe::status` is a reader,
/// any other `crate::observe` path the log and metrics.
fn layer_named(path: &str) -> String {
    let mut parts = path.split("::");
    let top = parts.next().unwrap_or_default();
    let rest: String = parts.collect::<Vec<_>>().join("::");
    if top == "observe" && (rest.contains("status") || rest.contains("http")) {
        return "observe-readers".into();
    }
    top.to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::…` path in `text` outside comments, with what follows it
/// up to the end of the statement (a `use` group names several).
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let end = rest.find([';', '\n', '(', ' ']).unwrap_or(rest.len());
        let path = &rest[..end];
        if path.contains('{') {
            // `use crate::observe::{http, log, Metrics};`: each member.
            let close = rest.find('}').unwrap_or(rest.len());
            let (prefix, group) = rest[..close].split_once('{').expect("a group");
            for member in group.split(',') {
                out.push(format!("{prefix}{}", member.trim()));
            }
        } else {
            out.push(path.to_string());
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .enumerate()
        .map(|(i, layer)| (*layer, LAYERS[..i].iter().copied().collect()))
        .collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let Some(layer) = layer_of(rel) else { continue };
        let Some(may) = allowed.get(layer.as_str()) else {
            wrong.push(format!(
                "{}: layer {layer} is not in ALLOWED",
                rel.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read a source file");
        for path in crate_paths(&text) {
            let named = layer_named(&path);
            if named != layer && !may.contains(named.as_str()) {
                wrong.push(format!(
                    "{} ({layer}) uses crate::{path} ({named})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that reach up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_a_use_group_member_that_reaches_up() {
    let paths = crate_paths("use crate::observe::{log, status::Source};\n// crate::cli::x\n");
    let named: Vec<String> = paths.iter().map(|p| layer_named(p)).collect();
    assert_eq!(named, ["observe", "observe-readers"]);
}
