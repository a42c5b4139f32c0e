//! Rows as people and programs read them: tables (pstree drawn as a
//! tree), JSON keyed by plugin, and `NAME.<plugin>.json` files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memimage::plugins::integrity::Verdict;
use memimage::plugins::{Row, Value};

use super::Analysis;

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => (*i).into(),
        Value::UInt(u) => (*u).into(),
        Value::Str(s) => s.clone().into(),
        Value::Null => serde_json::Value::Null,
    }
}

/// Rows as JSON objects with snake_case keys.
pub fn rows_json(rows: &[Row]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            r.fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), value_json(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect::<Vec<serde_json::Value>>()
        .into()
}

/// Each plugin's rows as JSON objects, in request order.
pub fn analysis_json_rows(a: &Analysis) -> Vec<(String, Vec<serde_json::Value>)> {
    a.results
        .iter()
        .map(|(n, rows)| match rows_json(rows) {
            serde_json::Value::Array(rows) => (n.clone(), rows),
            _ => (n.clone(), Vec::new()),
        })
        .collect()
}

/// One JSON object keyed by plugin name (and `verdict`, when triage ran).
pub fn to_json(a: &Analysis) -> serde_json::Value {
    let mut out: serde_json::Map<_, _> = a
        .results
        .iter()
        .map(|(n, rows)| (n.clone(), rows_json(rows)))
        .collect();
    if let Some(v) = a.verdict() {
        out.insert("verdict".into(), verdict_json(&v));
    }
    out.into()
}

pub fn verdict_json(v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "text": v.text(),
        "findings": v.findings,
        "high": v.high,
        "not_checked": v.not_checked,
    })
}

/// Writes `NAME.<plugin>.json` for each plugin into `dir`; returns the paths.
pub fn write_json_files(image: &Path, dir: &Path, a: &Analysis) -> Result<Vec<PathBuf>> {
    let stem = image
        .file_name()
        .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
    let mut out = Vec::new();
    for (n, rows) in &a.results {
        let p = dir.join(format!("{stem}.{n}.json"));
        let text = serde_json::to_string_pretty(&rows_json(rows))?;
        std::fs::write(&p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

/// Escapes control characters so memory contents cannot drive the terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn cell(name: &str, v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::UInt(u) if matches!(name, "offset" | "start" | "end" | "pgoff") => {
            format!("{u:#x}")
        }
        Value::UInt(u) => u.to_string(),
        Value::Str(s) => sanitize(s),
        Value::Null => "-".into(),
    }
}

/// Tree prefixes ("├─ ", "│  "…) for rows given in depth-first order.
fn tree_prefixes(depths: &[usize]) -> Vec<String> {
    let mut out = Vec::with_capacity(depths.len());
    for (i, &d) in depths.iter().enumerate() {
        let mut s = String::new();
        for level in 1..=d {
            // Is there a later sibling at `level` before the subtree ends?
            let more = depths
                .iter()
                .skip(i + 1)
                .take_while(|&&x| x >= level)
                .any(|&x| x == level);
            s.push_str(match (level == d, more) {
                (true, true) => "├─ ",
                (true, false) => "└─ ",
                (false, true) => "│  ",
                (false, false) => "   ",
            });
        }
        out.push(s);
    }
    out
}

/// Aligned columns for people; pstree draws the tree in the COMM column.
pub fn render_table(plugin: &str, rows: &[Row]) -> String {
    let Some(first) = rows.first() else {
        return "(no rows)\n".into();
    };
    let cols: Vec<&str> = first
        .fields
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != "depth")
        .collect();
    let depths: Vec<usize> = rows
        .iter()
        .map(|r| match r.get("depth") {
            Some(Value::Int(d)) => usize::try_from(*d).unwrap_or(0),
            _ => 0,
        })
        .collect();
    let prefixes = if plugin == "pstree" {
        tree_prefixes(&depths)
    } else {
        vec![String::new(); rows.len()]
    };
    let mut grid: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_uppercase()).collect()];
    for (r, prefix) in rows.iter().zip(&prefixes) {
        grid.push(
            cols.iter()
                .map(|c| {
                    let v = r.get(c).map_or_else(String::new, |v| cell(c, v));
                    if *c == "comm" {
                        format!("{prefix}{v}")
                    } else {
                        v
                    }
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| {
            grid.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric = |c: &str| {
        matches!(
            c,
            "pid"
                | "tid"
                | "ppid"
                | "uid"
                | "gid"
                | "euid"
                | "egid"
                | "size"
                | "start_boottime_ns"
                | "fd"
                | "inode"
                | "netns"
                | "local_port"
                | "remote_port"
                | "bytes"
                | "unmapped_bytes"
        )
    };
    let mut out = String::new();
    for row in &grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(&cols)
            .enumerate()
            .map(|(i, ((v, w), c))| {
                let pad = w.saturating_sub(v.chars().count());
                if numeric(c) {
                    format!("{}{v}", " ".repeat(pad))
                } else if i + 1 == cols.len() {
                    v.clone()
                } else {
                    format!("{v}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(pid: i64, comm: &str, depth: i64) -> Row {
        Row {
            fields: vec![
                ("pid", Value::Int(pid)),
                ("comm", Value::Str(comm.into())),
                ("offset", Value::UInt(0xffff_8880_0000_1000)),
                ("depth", Value::Int(depth)),
            ],
        }
    }

    #[test]
    fn pstree_table_draws_tree() {
        let rows = [
            row(1, "init", 0),
            row(5, "sh", 1),
            row(7, "ls", 2),
            row(6, "sshd", 1),
            row(2, "kthreadd", 0),
        ];
        let t = render_table("pstree", &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["PID", "COMM", "OFFSET"]
        );
        assert!(lines[2].contains("├─ sh"), "{t}");
        assert!(lines[3].contains("│  └─ ls"), "{t}");
        assert!(lines[4].contains("└─ sshd"), "{t}");
        assert!(lines[1].contains("0xffff888000001000"));
    }

    #[test]
    fn json_is_keyed_by_plugin_with_snake_case_rows() {
        let a = Analysis {
            results: vec![("pstree".into(), vec![row(1, "a\u{1b}[2J", 0)])],
        };
        let j = to_json(&a);
        assert_eq!(j["pstree"][0]["pid"], 1);
        assert_eq!(j["pstree"][0]["depth"], 0);
        // Tables escape control characters; JSON keeps the exact string.
        assert!(!render_table("pstree", &a.results[0].1).contains('\u{1b}'));
        assert_eq!(j["pstree"][0]["comm"], "a\u{1b}[2J");
    }
}
