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
