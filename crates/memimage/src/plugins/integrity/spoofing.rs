//! process_spoofing: a process' name (`comm`) against what it runs
//! (`mm->exe_file`) and how it was started (argv), and processes running an
//! executable that was deleted. Malware renames itself after a kernel
//! thread or a daemon, and runs from a file it then removes.
//!
//! `comm` is the basename of the path given to execve, cut to 15 bytes,
//! so it is a prefix of the executable's name, or of argv[0]'s when that
//! path was a symlink. Legitimate exceptions: a script's comm is the
//! script's name, which binfmt_script puts in argv[1] or argv[2]; `sh -c
//! "cmd ..."` children that run a builtin name themselves after it; and
//! multi-call binaries (busybox, toybox) name themselves after the applet.

use super::{Context, Finding, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::{processes, read_task};
use crate::plugins::util::{process_vm, ptr, soft, uint};
use crate::plugins::vfs::{file_path, task_root};
use crate::plugins::{Row, Value};

/// Volatility reads at most this much of the command line for argv[0];
/// argv[0..3] of a real process fit in it.
const MAX_ARGS: u64 = 4096;
const DELETED: &str = " (deleted)";
/// Executables that are many programs, named by how they were called.
const MULTI_CALL: &[&str] = &["busybox", "toybox"];
const PF_KTHREAD: u64 = 0x0020_0000;
/// Set once a task starts exiting: its memory and executable are being torn
/// down, so there is nothing left to compare.
const PF_EXITING: u64 = 0x0000_0004;

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The first argv strings, `None` when the command line cannot be read.
fn argv(k: &Kernel<'_, '_>, mm: u64) -> Result<Option<Vec<String>>, KernelError> {
    let Some(vm) = process_vm(k, mm)? else {
        return Ok(None);
    };
    let (Some(start), Some(end)) = (
        soft(uint(k, mm, "mm_struct", "arg_start"))?,
        soft(uint(k, mm, "mm_struct", "arg_end"))?,
    ) else {
        return Ok(None);
    };
    let len = end.saturating_sub(start).min(MAX_ARGS);
    if len == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    if vm.read(start, &mut buf).is_err() {
        return Ok(None);
    }
    Ok(Some(
        buf.split(|&b| b == 0)
            .take(3)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    ))
}

/// Whether `comm` is a name the process may legitimately carry.
pub(super) fn consistent(comm: &str, exe: &str, args: &[String]) -> bool {
    let fits = |name: &str| !comm.is_empty() && name.starts_with(comm);
    fits(exe)
        || MULTI_CALL.contains(&exe)
        || args.iter().any(|a| {
            fits(basename(a))
                || a.split_whitespace()
                    .next()
                    .is_some_and(|w| fits(basename(w)))
        })
}

/// Findings for one user process; whether its name is spoofed, `None`
/// when that cannot be told.
fn judge(
    r: &mut Report,
    owner: &str,
    comm: &str,
    path: &str,
    args: Option<&[String]>,
) -> Option<bool> {
    let name = basename(path.strip_suffix(DELETED).unwrap_or(path));
    if path.ends_with(DELETED) {
        r.findings.push(Finding {
            severity: Severity::Medium,
            check: "process_spoofing",
            what: format!("{owner} runs a deleted executable"),
            evidence: format!("exe_file {}", path.trim()),
            owner: owner.to_string(),
        });
    }
    if consistent(comm, name, args.unwrap_or_default()) {
        return Some(false);
    }
    let Some(a) = args else {
        r.not_checked.push(format!(
            "{owner}: its command line cannot be read, and its name differs from its executable {name}"
        ));
        return None;
    };
    r.findings.push(Finding {
        severity: Severity::Medium,
        check: "process_spoofing",
        what: format!("{owner} carries a name that is not its executable's"),
        evidence: format!(
            "comm {comm:?}, executable {}, argv[0] {:?}",
            path.trim(),
            a.first().map_or("", String::as_str)
        ),
        owner: owner.to_string(),
    });
    Some(true)
}

pub(crate) fn check(k: &Kernel<'_, '_>, _cx: &Context<'_>) -> Result<Report, KernelError> {
    let procs = processes(k)?;
    let mut r = Report::default();
    let mut users = 0;
    for va in procs {
        let t = read_task(k, va)?;
        let ppid = soft(ptr(k, va, "task_struct", "real_parent"))?
            .filter(|&p| p != 0)
            .and_then(|p| k.read_int(p, "task_struct", "tgid").ok())
            .and_then(|v| i64::try_from(v).ok());
        let owner = format!("process {} ({})", t.tgid, t.comm);
        // A kernel thread borrowing a process' memory (kthread_use_mm) has
        // an mm but runs no executable of its own.
        let flags = if k.profile.has_field("task_struct", "flags") {
            soft(uint(k, va, "task_struct", "flags"))?.unwrap_or(0)
        } else {
            0
        };
        let kthread = t.mm != 0 && flags & PF_KTHREAD != 0;
        if flags & PF_EXITING != 0 {
            continue;
        }
        let mut exe_path = None;
        let mut args = None;
        let mut spoofed = None;
        if t.mm != 0 && !kthread {
            users += 1;
            let exe = soft(ptr(k, t.mm, "mm_struct", "exe_file"))?.unwrap_or(0);
            if exe != 0 {
                let path = file_path(k, task_root(k, va)?, exe)?;
                exe_path = (!path.is_empty()).then_some(path);
            }
            args = argv(k, t.mm)?;
            match &exe_path {
                None => r
                    .not_checked
                    .push(format!("{owner}: its executable's path cannot be read")),
                Some(path) => spoofed = judge(&mut r, &owner, &t.comm, path, args.as_deref()),
            }
        }
        let deleted = exe_path.as_deref().is_some_and(|p| p.ends_with(DELETED));
        let opt = |v: Option<String>| v.map_or(Value::Null, Value::Str);
        r.rows.push(Row {
            fields: vec![
                ("pid", Value::Int(t.tgid)),
                ("ppid", ppid.map_or(Value::Null, Value::Int)),
                ("comm", Value::Str(t.comm.clone())),
                ("exe_path", opt(exe_path)),
                (
                    "argv0",
                    opt(args
                        .as_ref()
                        .and_then(|a| a.first())
                        .map(|a| basename(a).to_string())
                        .filter(|a| !a.is_empty())),
                ),
                ("spoofed", opt(spoofed.map(|s| s.to_string()))),
                ("exe_deleted", Value::Str(deleted.to_string())),
            ],
        });
    }
    r.examined = format!("the names and executables of {users} user processes");
    Ok(r)
}
