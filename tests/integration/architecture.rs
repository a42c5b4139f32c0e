//! The invariants of ARCHITECTURE.md that a reading of the code can check:
//! layers use only the layers below them, only `transport` names russh,
//! only `commands::signals` listens for signals, the library exposes only
//! `cli` and `commands`, files stay small, and the analysis core's
//! dependency tree holds no async runtime, SSH or AWS crate.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, highest layer first; a module may use its
/// own layer's other modules only where listed in `SAME_LAYER`.
const LAYERS: &[&[&str]] = &[
    &["commands"],
    &["cli"],
    &["fleet"],
    &["capture", "live"],
    &["pipeline", "analysis"],
    &["target", "repository"],
    &["transport"],
    &["record"],
    &["util"],
];

const SAME_LAYER: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments and without its `#[cfg(test)]` module
/// (tests may reach anywhere), as (line number, line) pairs.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = Vec::new();
    let mut in_tests = false;
    let mut previous_cfg_test = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if previous_cfg_test && trimmed.starts_with("mod ") && line.starts_with("mod ") {
            in_tests = true;
        }
        previous_cfg_test = trimmed == "#[cfg(test)]";
        if in_tests || trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // A comment after code (not a `//` inside a string literal).
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        lines.push((n + 1, code.to_string()));
    }
    lines
}

/// `src/<top>/...` or `src/<top>.rs` -> `top`.
fn top_module(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root().join("src")).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_string()),
    }
}

/// Every `crate::NAME` a line refers to.
fn crate_refs(line: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            refs.push(name);
        }
        // `crate::{a, b}` names several.
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.push(name);
                }
            }
        }
    }
    refs
}

fn src_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    assert!(
        files.len() > 40,
        "src/ not found under {}",
        root().display()
    );
    files
}

#[test]
fn layers_use_only_the_layers_below_them() {
    let layer: HashMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (*n, i)))
        .collect();
    let mut wrong = Vec::new();
    let mut seen_tops = BTreeSet::new();
    for file in src_files() {
        let Some(top) = top_module(&file) else {
            continue;
        };
        let Some(&own) = layer.get(top.as_str()) else {
            wrong.push(format!("{}: module {top} is in no layer", file.display()));
            continue;
        };
        seen_tops.insert(top.clone());
        for (n, line) in code_lines(&file) {
            for used in crate_refs(&line) {
                if used == top || SAME_LAYER.contains(&(top.as_str(), used.as_str())) {
                    continue;
                }
                match layer.get(used.as_str()) {
                    Some(&theirs) if theirs > own => {}
                    Some(_) => wrong.push(format!(
                        "{}:{n}: {top} uses {used}, which is not below it",
                        file.display()
                    )),
                    None => wrong.push(format!(
                        "{}:{n}: crate::{used} is in no layer",
                        file.display()
                    )),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "wrong-way arrows:\n{}", wrong.join("\n"));
    let listed: BTreeSet<String> = layer.keys().map(|k| k.to_string()).collect();
    assert_eq!(seen_tops, listed, "the layer table and src/ disagree");
}

/// The checker itself: a wrong-way reference must be seen.
#[test]
fn the_layer_reader_sees_references_in_every_form() {
    assert_eq!(crate_refs("use crate::capture::CaptureJob;"), ["capture"]);
    assert_eq!(
        crate_refs("    let x = crate::util::fs::write_small_file(p, b);"),
        ["util"]
    );
    assert_eq!(
        crate_refs("use crate::{cli, record::X};"),
        ["cli", "record"]
    );
    assert!(crate_refs("use memimage::crate_like::X;").is_empty());
}

fn files_naming(token: &str) -> Vec<String> {
    let mut found = Vec::new();
    for file in src_files() {
        for (n, line) in code_lines(&file) {
            if line.contains(token) {
                let relative = file.strip_prefix(root()).unwrap().display().to_string();
                found.push(format!("{relative}:{n}"));
            }
        }
    }
    found
}

#[test]
fn only_transport_speaks_ssh() {
    let outside: Vec<String> = files_naming("russh")
        .into_iter()
        .filter(|place| !place.starts_with("src/transport/"))
        .collect();
    assert!(outside.is_empty(), "russh outside transport: {outside:?}");
}

#[test]
fn only_the_top_listens_for_signals() {
    let mut places = files_naming("tokio::signal");
    places.extend(files_naming("ctrl_c"));
    let outside: Vec<&String> = places
        .iter()
        .filter(|place| !place.starts_with("src/commands/signals.rs"))
        .collect();
    assert!(
        outside.is_empty(),
        "signals handled outside commands::signals: {outside:?}"
    );
    assert!(!places.is_empty(), "no signal handling found at all");
}

#[test]
fn the_library_exposes_only_cli_and_commands() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let public: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(public, ["cli", "commands"]);
    assert!(!lib.contains("pub use"), "lib.rs re-exports more");
}

#[test]
fn no_source_file_is_much_over_600_lines() {
    let mut long = Vec::new();
    let mut files = src_files();
    rust_files(&root().join("crates/memimage/src"), &mut files);
    for file in files {
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        if lines > 650 {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(long.is_empty(), "split these: {long:?}");
}

/// The analysis core's normal dependencies, transitively, by name.
fn memimage_dependencies() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        // The host's dependencies only: others may not be downloaded.
        .args([
            "--filter-platform",
            &format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let start = names
        .iter()
        .find(|(_, name)| **name == "memimage")
        .map(|(id, _)| *id)
        .unwrap();
    let mut todo = vec![start];
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap();
            if normal && seen.insert(names[dep_id].to_string()) {
                todo.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn the_analysis_core_depends_on_no_async_ssh_or_aws_crate() {
    let deps = memimage_dependencies();
    assert!(
        deps.contains("memchr"),
        "the walk found too little: {deps:?}"
    );
    let forbidden: Vec<&String> = deps
        .iter()
        .filter(|d| {
            ["tokio", "russh", "reqwest", "hyper", "mio"].contains(&d.as_str())
                || d.starts_with("aws-")
        })
        .collect();
    assert!(forbidden.is_empty(), "memimage pulls in {forbidden:?}");
}
