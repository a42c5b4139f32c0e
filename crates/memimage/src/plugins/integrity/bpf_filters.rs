//! bpf_filters: every filter a process put on a socket or on itself, with
//! its code. Socket filters (`SO_ATTACH_FILTER`, classic; `SO_ATTACH_BPF`,
//! eBPF) are how tcpdump and DHCP clients read packets, and how
//! BPFDoor-style backdoors watch for their magic packet with no listening
//! port; seccomp filters are the sandboxes of systemd services, browsers
//! and container runtimes. Rows, not findings: the filters themselves are
//! ordinary, and what they match is for the reader to judge.

use super::bpf_holders::SocketFilter;
use super::classic_bpf::disassemble;
use super::{Context, Report};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::{processes, read_task};
use crate::plugins::util::{ptr, soft, uint};
use crate::plugins::{Row, Value};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// `BPF_MAXINSNS`: a classic program is at most this long.
const MAX_INSNS: u64 = 4096;
/// Instructions shown per filter; the count says how many there are.
const SHOWN: usize = 64;
/// Seccomp layers a process may stack (each costs at least one insn of
/// the kernel's 32K-instruction path limit).
const MAX_LAYERS: usize = 512;

struct Code {
    kind: String,
    insns: u64,
    code: String,
}

/// A filter program: classic (its original instructions, when the kernel
/// kept them) or eBPF (by id and name).
fn code(k: &Kernel<'_, '_>, cx: &Context<'_>, prog: u64) -> Result<Code, KernelError> {
    if uint(k, prog, "bpf_prog", "type")? != 0 {
        let name = cx
            .bpf(k)
            .ok()
            .and_then(|b| b.describe(prog))
            .unwrap_or_else(|| format!("eBPF program at {prog:#x}"));
        return Ok(Code {
            kind: name,
            insns: uint(k, prog, "bpf_prog", "len")?,
            code: "-".into(),
        });
    }
    let orig = ptr(k, prog, "bpf_prog", "orig_prog")?;
    if orig == 0 {
        return Ok(Code {
            kind: "classic".into(),
            insns: 0,
            code: "(the kernel kept no copy of the original instructions)".into(),
        });
    }
    let len = uint(k, orig, "sock_fprog_kern", "len")?;
    let at = ptr(k, orig, "sock_fprog_kern", "filter")?;
    let mut bytes = vec![0u8; usize::try_from(len.min(MAX_INSNS) * 8).unwrap_or(0)];
    k.read(at, &mut bytes, || "classic BPF instructions".into())?;
    let mut lines = disassemble(&bytes);
    if lines.len() > SHOWN {
        let more = lines.len() - SHOWN;
        lines.truncate(SHOWN);
        lines.push(format!("... {more} more"));
    }
    Ok(Code {
        kind: "classic".into(),
        insns: len,
        code: lines.join("; "),
    })
}

fn row(pid: i64, comm: &str, attached: String, c: &Code, prog: u64) -> Row {
    Row {
        fields: vec![
            ("pid", Value::Int(pid)),
            ("comm", Value::Str(comm.to_string())),
            ("attached", Value::Str(attached)),
            ("program", Value::Str(c.kind.clone())),
            ("address", Value::UInt(prog)),
            ("instructions", Value::UInt(c.insns)),
            ("code", Value::Str(c.code.clone())),
        ],
    }
}

/// Each process's seccomp filters, the newest (which runs first) first: `(tgid, comm,
/// [program of each layer])`.
#[allow(clippy::type_complexity)]
fn seccomp(k: &Kernel<'_, '_>) -> Result<Vec<(i64, String, Vec<u64>)>, KernelError> {
    let p = k.profile;
    let at = p.offset("task_struct", "seccomp")? + p.offset("seccomp", "filter")?;
    let mut out = Vec::new();
    for task in processes(k)? {
        let Some(t) = soft(read_task(k, task))? else {
            continue;
        };
        let Some(mut f) = soft(k.read_u64(task.wrapping_add(at), || "seccomp.filter".into()))?
        else {
            continue;
        };
        let mut layers = Vec::new();
        while f != 0 && layers.len() < MAX_LAYERS {
            layers.push(ptr(k, f, "seccomp_filter", "prog")?);
            f = ptr(k, f, "seccomp_filter", "prev")?;
        }
        if !layers.is_empty() {
            out.push((t.tgid, t.comm, layers));
        }
    }
    Ok(out)
}

/// The program's code, read once however many share it; `None` when it
/// cannot be read.
fn cached<'c>(
    codes: &'c mut HashMap<u64, Code>,
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
    prog: u64,
) -> Result<Option<&'c Code>, KernelError> {
    Ok(match codes.entry(prog) {
        Entry::Occupied(e) => Some(e.into_mut()),
        Entry::Vacant(e) => soft(code(k, cx, prog))?.map(|c| &*e.insert(c)),
    })
}

pub(crate) fn check(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let mut r = Report::default();
    let mut codes: HashMap<u64, Code> = HashMap::new();
    let socket_filters = match cx.bpf(k) {
        Ok(b) => {
            r.not_checked.extend(b.sockets_unread.clone());
            b.socket_filters.as_slice()
        }
        Err(e) if e.is_source_failure() => return Err(e),
        Err(e) => {
            r.not_checked.push(format!("socket filters: {e}"));
            &[]
        }
    };
    for SocketFilter {
        prog,
        pid,
        comm,
        fd,
        socket,
    } in socket_filters
    {
        match cached(&mut codes, k, cx, *prog)? {
            Some(c) => {
                let at = format!("socket fd {fd} ({socket})");
                r.rows.push(row(*pid, comm, at, c, *prog));
            }
            None => r.not_checked.push(format!(
                "the filter of fd {fd} of process {pid} ({comm}): unreadable"
            )),
        }
    }
    let sockets = r.rows.len();
    let sandboxed = match seccomp(k) {
        Ok(v) => v,
        Err(e) if e.is_source_failure() => return Err(e),
        Err(e) => {
            r.not_checked.push(format!("seccomp filters: {e}"));
            Vec::new()
        }
    };
    for (pid, comm, layers) in &sandboxed {
        let n = layers.len();
        for (i, prog) in layers.iter().enumerate() {
            match cached(&mut codes, k, cx, *prog)? {
                Some(c) => {
                    let at = format!("seccomp, layer {} of {n}", i + 1);
                    r.rows.push(row(*pid, comm, at, c, *prog));
                }
                None => r.not_checked.push(format!(
                    "seccomp filter {} of process {pid} ({comm}): unreadable",
                    i + 1
                )),
            }
        }
    }
    r.examined = format!(
        "{sockets} socket filters, {} seccomp filters of {} processes",
        r.rows.len() - sockets,
        sandboxed.len()
    );
    Ok(r)
}
