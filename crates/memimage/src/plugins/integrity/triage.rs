//! triage: every integrity check on one shared module inventory, as one
//! list of results. Each check gives either findings, or "ok" with what it
//! looked at, or "not checked" with the reason (a missing symbol, an
//! unreadable page, code the decoder does not know). The verdict is never
//! "clean" because something was not looked at: callers read the results.

use super::{CHECKS, Context, Finding, run_check};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::{Row, Value};

/// Result column values.
pub const FINDING: &str = "finding";
pub const NOT_CHECKED: &str = "not checked";
pub const OK: &str = "ok";
pub const NOT_APPLICABLE: &str = "does not apply";

fn result_row(check: &str, result: &str, f: Option<&Finding>, what: String) -> Row {
    let s = |v: &str| Value::Str(v.to_string());
    Row {
        fields: vec![
            ("check", s(check)),
            ("result", s(result)),
            ("severity", s(f.map_or("-", |f| f.severity.name()))),
            ("what", Value::Str(f.map_or(what, |f| f.what.clone()))),
            ("evidence", s(f.map_or("-", |f| f.evidence.as_str()))),
            ("owner", s(f.map_or("-", |f| f.owner.as_str()))),
        ],
    }
}

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let cx = Context::new(k);
    let mut rows = Vec::new();
    if let Ok(inv) = cx.inventory() {
        // The capture's own module is expected; say so rather than hide it.
        for m in inv.modules.iter().filter(|m| m.name == "lime" && m.in_list) {
            rows.push(result_row(
                "modules",
                OK,
                None,
                format!(
                    "module {} is loaded: the capture's own LiME (expected)",
                    m.name
                ),
            ));
        }
    }
    for &check in CHECKS {
        match run_check(check, k, &cx) {
            None => {}
            Some(Err(e)) => rows.push(result_row(check, NOT_CHECKED, None, e.to_string())),
            Some(Ok(report)) if report.not_applicable.is_some() => {
                let why = report.not_applicable.unwrap_or_default();
                rows.push(result_row(check, NOT_APPLICABLE, None, why));
            }
            Some(Ok(report)) => {
                let mut findings = report.findings;
                findings.sort_by_key(|f| f.severity);
                for f in &findings {
                    rows.push(result_row(check, FINDING, Some(f), String::new()));
                }
                for n in &report.not_checked {
                    rows.push(result_row(check, NOT_CHECKED, None, n.clone()));
                }
                // "ok" only when everything was looked at.
                if findings.is_empty() && report.not_checked.is_empty() {
                    rows.push(result_row(
                        check,
                        OK,
                        None,
                        format!("{}: no findings", report.examined),
                    ));
                }
            }
        }
    }
    Ok(rows)
}

/// The one-line answer of a triage run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    pub findings: usize,
    pub high: usize,
    /// Parts of checks that could not run (each a "not checked" row).
    pub not_checked: usize,
}

impl Verdict {
    /// Counts triage's rows.
    pub fn of(rows: &[Row]) -> Verdict {
        let is = |r: &Row, key: &str, v: &str| r.get(key) == Some(&Value::Str(v.into()));
        Verdict {
            findings: rows.iter().filter(|r| is(r, "result", FINDING)).count(),
            high: rows
                .iter()
                .filter(|r| is(r, "result", FINDING) && is(r, "severity", "high"))
                .count(),
            not_checked: rows.iter().filter(|r| is(r, "result", NOT_CHECKED)).count(),
        }
    }

    /// "no findings" is said only with what was not checked beside it.
    pub fn text(&self) -> String {
        let gaps = match self.not_checked {
            0 => "every check ran".to_string(),
            1 => "1 part not checked (see below)".to_string(),
            n => format!("{n} parts not checked (see below)"),
        };
        match self.findings {
            0 => format!("no findings; {gaps}"),
            n => format!(
                "{n} finding{} ({} high); {gaps}",
                if n == 1 { "" } else { "s" },
                self.high
            ),
        }
    }
}
