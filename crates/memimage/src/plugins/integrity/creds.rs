//! check_creds: processes of different thread groups sharing one
//! `struct cred`. A fork gives the child its own copy and threads share
//! their leader's, so a user process holding another group's cred, above
//! all the kernel's own `init_cred`, got it by a direct write: the classic
//! privilege-escalation shortcut of rootkits.

use super::{Context, Finding, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::{processes, threads};
use crate::plugins::util::ptr;
use crate::plugins::{Row, Value};
use std::collections::BTreeMap;

struct Holder {
    tgid: i64,
    comm: String,
    user: bool,
}

pub(crate) fn check(k: &Kernel<'_, '_>, _cx: &Context<'_>) -> Result<Report, KernelError> {
    let p = k.profile;
    let mut by_cred: BTreeMap<u64, Vec<Holder>> = BTreeMap::new();
    for leader in processes(k)? {
        let mut group = vec![leader];
        group.extend(threads(k, leader)?);
        for t in group {
            let Ok(cred) = ptr(k, t, "task_struct", "cred") else {
                continue;
            };
            let tgid = i64::try_from(k.read_int(t, "task_struct", "tgid")?).unwrap_or(-1);
            let mm = ptr(k, t, "task_struct", "mm").unwrap_or(0);
            let mut comm = [0u8; 16];
            let _ =
                k.vm.read(t.wrapping_add(p.offset("task_struct", "comm")?), &mut comm);
            let end = memchr::memchr(0, &comm).unwrap_or(16);
            let holders = by_cred.entry(cred).or_default();
            if !holders.iter().any(|h| h.tgid == tgid) {
                holders.push(Holder {
                    tgid,
                    comm: String::from_utf8_lossy(comm.get(..end).unwrap_or_default()).into(),
                    user: mm != 0,
                });
            }
        }
    }
    let init_cred = k.symbol("init_cred").ok();
    let mut r = Report {
        examined: format!(
            "{} credentials held by processes and threads",
            by_cred.len()
        ),
        ..Report::default()
    };
    for (cred, holders) in by_cred {
        if holders.len() < 2 {
            continue;
        }
        let pids: Vec<String> = holders.iter().map(|h| h.tgid.to_string()).collect();
        let users: Vec<&Holder> = holders.iter().filter(|h| h.user).collect();
        // Kernel threads share init_cred by design; a user process never should.
        let shared_with_kernel = Some(cred) == init_cred || holders.iter().any(|h| !h.user);
        if !users.is_empty() && (shared_with_kernel || users.len() > 1) {
            let names: Vec<String> = users
                .iter()
                .map(|h| format!("{} ({})", h.tgid, h.comm))
                .collect();
            r.findings.push(Finding {
                severity: if shared_with_kernel {
                    Severity::High
                } else {
                    Severity::Medium
                },
                check: "check_creds",
                what: format!(
                    "process {} shares its credentials with other thread groups",
                    names.join(", ")
                ),
                evidence: format!(
                    "struct cred {cred:#x}{} held by thread groups {}",
                    if Some(cred) == init_cred {
                        " (init_cred)"
                    } else {
                        ""
                    },
                    pids.join(", ")
                ),
                owner: "-".into(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("cred", Value::UInt(cred)),
                ("pids", Value::Str(pids.join(", "))),
            ],
        });
    }
    Ok(r)
}
