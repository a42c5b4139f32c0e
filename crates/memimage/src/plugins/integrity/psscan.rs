//! psscan: `task_struct`s carved from physical memory, compared with the
//! task list and the PID table. Every task's `sched_class` points at one of
//! the kernel's `*_sched_class` objects, so those 8-byte addresses at the
//! field's offset mark candidates (Volatility's needle).
//!
//! A hidden process is unlinked from the task list while the PID table
//! still holds it, or carries the marks of an unlink (`list_del` poison,
//! list pointers to itself). A live capture copies pages at different
//! moments, so a task forked or reaped while it ran can be in neither the
//! list nor the table, and one forked can be in the table alone: a task in
//! neither, or one started after every listed task, is a note, not a
//! finding.

use super::{Context, Finding, Report, Severity};
use crate::format::{FormatError, PhysicalMemory};
use crate::kernel::{Kernel, KernelError};
use crate::memory::PagingMode;
use crate::plugins::tasks::{is_live_task, processes, threads};
use crate::plugins::util::soft;
use crate::plugins::{Row, Value};
use crate::profile::{Profile, ProfileError};
use std::collections::{BTreeMap, HashSet};

/// `PID_MAX_LIMIT` on 64-bit kernels.
const PID_MAX: i128 = 4 << 20;
/// `exit_state` values: running, EXIT_DEAD, EXIT_ZOMBIE, EXIT_TRACE.
const EXIT_STATES: [(i128, &str); 4] = [
    (0, "TASK_RUNNING"),
    (0x10, "EXIT_DEAD"),
    (0x20, "EXIT_ZOMBIE"),
    (0x30, "EXIT_TRACE"),
];
/// `__state` bits (4.14+): the task is gone, or still being forked.
const TASK_DEAD: u64 = 0x80;
const TASK_NEW: u64 = 0x800;
const LIST_POISON1: u64 = 0xdead_0000_0000_0100;
const LIST_POISON2: u64 = 0xdead_0000_0000_0122;
/// Bounds: candidates kept and tasks per `struct pid`.
const MAX_HITS: usize = 1 << 20;
const MAX_PID_TASKS: usize = 64;

/// Physical addresses of the 8-byte-aligned words equal to one of
/// `needles` (a task_struct is at least pointer-aligned, so its
/// `sched_class` is too), at most `MAX_HITS`.
///
/// The `*_sched_class` objects sit next to each other, so their addresses
/// share their high bytes: a SIMD substring search for those finds the
/// few candidate words faster than comparing every word.
pub(crate) fn scan_words(
    phys: &PhysicalMemory<'_>,
    needles: &[u64],
) -> Result<Vec<u64>, FormatError> {
    let (Some(&lo), Some(&hi)) = (needles.iter().min(), needles.iter().max()) else {
        return Ok(Vec::new());
    };
    // Number of low bytes in which the needles differ (1..=8).
    let low = 8 - ((lo ^ hi).leading_zeros() / 8) as usize;
    let common = lo.to_le_bytes();
    let finder = memchr::memmem::Finder::new(common.get(low.min(7)..).unwrap_or_default());
    let mut hits = Vec::new();
    let check = |hits: &mut Vec<u64>, at: u64, word: &[u8]| {
        let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        if needles.contains(&w) && hits.len() < MAX_HITS {
            hits.push(at);
        }
    };
    let mut carry: Vec<u8> = Vec::new();
    let mut carry_end = u64::MAX;
    // A damaged compressed chunk costs its own words only; a source that
    // cannot be searched, or failed, means nothing was looked at.
    let scanned = phys.for_each_piece(|addr, bytes| {
        // Words split between this piece and the one before.
        if carry_end == addr && !carry.is_empty() {
            let from = addr - carry.len() as u64;
            carry.extend_from_slice(bytes.get(..7).unwrap_or(bytes));
            for (i, w) in carry.windows(8).enumerate() {
                let at = from + i as u64;
                if at.is_multiple_of(8) && at < addr {
                    check(&mut hits, at, w);
                }
            }
        }
        if low < 8 {
            let back = low as u64;
            for p in finder.find_iter(bytes) {
                let Some(o) = (p as u64).checked_sub(back) else {
                    continue;
                };
                let at = addr + o;
                let o = usize::try_from(o).unwrap_or(usize::MAX);
                if at.is_multiple_of(8)
                    && let Some(w) = bytes.get(o..o.saturating_add(8))
                {
                    check(&mut hits, at, w);
                }
            }
        } else {
            let skip = usize::try_from((8 - addr % 8) % 8).unwrap_or(0);
            let body = bytes.get(skip.min(bytes.len())..).unwrap_or_default();
            for (i, w) in body.chunks_exact(8).enumerate() {
                check(&mut hits, addr + (skip + 8 * i) as u64, w);
            }
        }
        let keep = bytes.len().min(7);
        carry = bytes.get(bytes.len() - keep..).unwrap_or_default().to_vec();
        carry_end = addr + bytes.len() as u64;
        hits.len() < MAX_HITS
    });
    match scanned {
        Err(e @ (FormatError::NotScannable | FormatError::Source { .. })) => Err(e),
        _ => Ok(hits),
    }
}

/// A field of a structure read from a copy of its bytes.
fn int_in(p: &Profile, buf: &[u8], st: &str, field: &str) -> Result<Option<i128>, KernelError> {
    let f = p.field(st, field)?;
    let layout = p.int_layout(&f.ty).ok_or_else(|| {
        KernelError::Profile(ProfileError::Malformed {
            expected: format!("an integer type for {st}.{field}"),
            found: format!("{:?}", f.ty),
        })
    })?;
    let start = usize::try_from(f.offset).unwrap_or(usize::MAX);
    let size = usize::try_from(layout.size.min(8)).unwrap_or(8);
    let Some(bytes) = buf.get(start..start.saturating_add(size)) else {
        return Ok(None);
    };
    let mut raw = [0u8; 8];
    raw.get_mut(..size)
        .unwrap_or_default()
        .copy_from_slice(bytes);
    Ok(Some(layout.decode(u64::from_le_bytes(raw))))
}

/// One carved task.
struct Carved {
    pa: u64,
    va: Option<u64>,
    pid: i128,
    tgid: i128,
    ppid: Option<i128>,
    comm: String,
    exit_state: &'static str,
    state: u64,
    /// `tasks.next`/`prev` hold list_del poison or point to themselves.
    unlinked: bool,
    /// Nanoseconds since boot (`start_boottime`, else `start_time`).
    start: Option<i128>,
}

/// What to add to a physical address for its direct-map (linear-map)
/// address: `page_offset_base` on x86-64 (else the default of kernels
/// without KASLR of memory regions). On AArch64, VMCOREINFO's
/// `PAGE_OFFSET - PHYS_OFFSET`, else the offset of a task the task list
/// points at (slab memory lies in the linear map).
fn page_offset(k: &Kernel<'_, '_>) -> u64 {
    if k.is_aarch64() {
        let stated = k.vmcoreinfo.as_ref().and_then(|info| {
            let phys_offset = info.number("PHYS_OFFSET")?;
            let va_bits = u32::try_from(info.number("VA_BITS")?).ok()?;
            Some((!0u64 << va_bits.min(63)).wrapping_sub(phys_offset as u64))
        });
        let from_task = || -> Option<u64> {
            let off = k.profile.offset("task_struct", "tasks").ok()?;
            let next = k
                .read_u64(k.symbol("init_task").ok()? + off, String::new)
                .ok()?;
            let task = next.wrapping_sub(off);
            Some(task.wrapping_sub(k.vm.translate(task).ok()?))
        };
        return stated.or_else(from_task).unwrap_or(0);
    }
    k.symbol("page_offset_base")
        .and_then(|s| k.read_u64(s, || "page_offset_base".into()))
        .unwrap_or(match k.mode {
            PagingMode::Level5 => 0xff11_0000_0000_0000,
            _ => 0xffff_8880_0000_0000,
        })
}

fn carve(k: &Kernel<'_, '_>, pa: u64, pob: u64) -> Result<Option<Carved>, KernelError> {
    let p = k.profile;
    let size = usize::try_from(p.struct_def("task_struct")?.size).unwrap_or(0);
    let mut buf = vec![0u8; size];
    if k.phys.read(pa, &mut buf).is_err() {
        return Ok(None);
    }
    let get = |f: &str| int_in(p, &buf, "task_struct", f);
    let (Some(exit), Some(pid), Some(tgid)) = (get("exit_state")?, get("pid")?, get("tgid")?)
    else {
        return Ok(None);
    };
    let Some(&(_, exit_state)) = EXIT_STATES.iter().find(|(v, _)| *v == exit) else {
        return Ok(None);
    };
    // Every task with a pid has a thread group; words that only look like
    // a task (Volatility prints some with tgid 0) do not.
    if !(0..=PID_MAX).contains(&pid) || !(0..=PID_MAX).contains(&tgid) || (pid > 0) != (tgid > 0) {
        return Ok(None);
    }
    let comm_off = usize::try_from(p.offset("task_struct", "comm")?).unwrap_or(usize::MAX);
    let comm = buf
        .get(comm_off..comm_off.saturating_add(16))
        .unwrap_or_default();
    let Some(end) = memchr::memchr(0, comm) else {
        return Ok(None);
    };
    // pid 0 is the per-CPU idle tasks' ("swapper/N"); zeroed words that
    // happen to follow a sched_class pointer have no name.
    if pid == 0 && end == 0 {
        return Ok(None);
    }
    let comm = String::from_utf8_lossy(comm.get(..end).unwrap_or_default()).into_owned();
    let state_field = if p.has_field("task_struct", "__state") {
        "__state"
    } else {
        "state"
    };
    let state = get(state_field)?.map_or(0, |s| u64::try_from(s).unwrap_or(u64::MAX));
    let parent = get("real_parent")?.and_then(|v| u64::try_from(v).ok());
    let ppid = parent
        .filter(|&a| a != 0)
        .and_then(|a| k.read_int(a, "task_struct", "tgid").ok());
    // The direct-map address, when it maps back to this page.
    let va = Some(pob.wrapping_add(pa)).filter(|&va| k.vm.translate(va).ok() == Some(pa));
    let tasks = usize::try_from(p.offset("task_struct", "tasks")?).unwrap_or(usize::MAX);
    let word = |at: usize| {
        buf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (next, prev) = (word(tasks), word(tasks.saturating_add(8)));
    let own = va.map(|v| v + tasks as u64);
    let unlinked = (next == Some(LIST_POISON1) && prev == Some(LIST_POISON2))
        || (own.is_some() && next.is_some() && next == own && prev == own);
    let start = match get("start_boottime")? {
        Some(s) => Some(s),
        None => get("start_time")?,
    };
    Ok(Some(Carved {
        pa,
        va,
        pid,
        tgid,
        ppid,
        comm,
        exit_state,
        state,
        unlinked,
        start,
    }))
}

/// Physical addresses of every task the PID table shows: the
/// `init_pid_ns` IDR (an xarray of `struct pid`), each pid's
/// `tasks[PIDTYPE_PID]` chain.
fn pid_table(k: &Kernel<'_, '_>) -> Result<HashSet<u64>, KernelError> {
    let p = k.profile;
    let ns = k.symbol("init_pid_ns")?;
    let head_at = ns
        .wrapping_add(p.offset("pid_namespace", "idr")?)
        .wrapping_add(p.offset("idr", "idr_rt")?)
        .wrapping_add(p.offset("xarray", "xa_head")?);
    let pids = super::xarray::entries(k, head_at, "init_pid_ns.idr")?;
    let pid_tasks = p.offset("pid", "tasks")?;
    let links = p.offset("task_struct", "pid_links")?;
    let mut out = HashSet::new();
    for (_, pid) in pids {
        let mut node = k.vm.read_u64(pid.wrapping_add(pid_tasks)).unwrap_or(0);
        let mut n = 0;
        while node != 0 && n < MAX_PID_TASKS {
            if let Ok(pa) = k.vm.translate(node.wrapping_sub(links)) {
                out.insert(pa);
            }
            node = k.vm.read_u64(node).unwrap_or(0);
            n += 1;
        }
    }
    Ok(out)
}

/// Physical addresses of the tasks the task list shows (threads and
/// `init_task` included); leaders whose threads cannot be read go to
/// `unread` (the PID table still vouches for their threads).
fn listed(k: &Kernel<'_, '_>, unread: &mut Vec<String>) -> Result<HashSet<u64>, KernelError> {
    let mut out = HashSet::new();
    let mut all = vec![k.symbol("init_task")?];
    for leader in processes(k)? {
        all.push(leader);
        match soft(threads(k, leader))? {
            Some(t) => all.extend(t),
            None => unread.push(format!(
                "the threads of the task at {leader:#x}: unreadable"
            )),
        }
    }
    for va in all {
        if let Ok(pa) = k.vm.translate(va) {
            out.insert(pa);
        }
    }
    Ok(out)
}

fn int(v: i128) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(-1))
}

pub(crate) fn check(k: &Kernel<'_, '_>, _cx: &Context<'_>) -> Result<Report, KernelError> {
    let p = k.profile;
    let sched_off = p.offset("task_struct", "sched_class")?;
    let mut needles: Vec<u64> = p
        .symbols
        .keys()
        .filter(|n| n.contains("_sched_class"))
        .filter_map(|n| k.symbol(n).ok())
        .collect();
    needles.sort_unstable();
    needles.dedup();
    if needles.is_empty() {
        return Err(KernelError::Profile(ProfileError::MissingSymbol {
            profile: p.name.clone(),
            name: "*_sched_class".into(),
        }));
    }
    let mut r = Report::default();
    let list = listed(k, &mut r.not_checked)?;
    let table = match pid_table(k) {
        Ok(t) => Some(t),
        Err(e) => {
            r.not_checked.push(format!(
                "PID table (init_pid_ns): {e}; only tasks unlinked from the task list are findings"
            ));
            None
        }
    };
    let pob = page_offset(k);
    let mut carved: BTreeMap<u64, Carved> = BTreeMap::new();
    let hits = match scan_words(k.phys, &needles) {
        Ok(hits) => hits,
        Err(source @ FormatError::Source { .. }) => {
            return Err(KernelError::Physical {
                what: "the search for task_structs".into(),
                source,
            });
        }
        Err(e) => {
            r.not_checked
                .push(format!("task_structs carved from physical memory: {e}"));
            return Ok(r);
        }
    };
    for hit in hits {
        let Some(pa) = hit.checked_sub(sched_off) else {
            continue;
        };
        if let Some(t) = carve(k, pa, pob)? {
            carved.insert(pa, t);
        }
    }
    // A live capture copies the task list and the PID table before it
    // copies later pages: a task forked meanwhile is in neither, yet
    // started after every listed task. Such tasks are noted, not findings.
    let newest_listed = carved
        .values()
        .filter(|t| list.contains(&t.pa))
        .filter_map(|t| t.start)
        .max();
    let mut forked_during_capture = 0;
    let mut in_neither = 0;
    let mut live = 0;
    for t in carved.values() {
        let in_list = list.contains(&t.pa);
        let in_table = table.as_ref().map(|s| s.contains(&t.pa));
        let is_live = t.exit_state == "TASK_RUNNING" && t.state & (TASK_DEAD | TASK_NEW) == 0;
        live += usize::from(is_live);
        // pid 0 tasks are the per-CPU idle tasks, never in the list.
        // Hidden means unlinked from the task list while the PID table
        // still holds it (so signals and /proc/PID still reach it), or its
        // own list pointers unlinked. A task in neither is what a live
        // capture makes of one forked or reaped while pages were copied.
        let suspect = is_live
            && t.pid > 0
            && !in_list
            && (in_table == Some(true) || (t.unlinked && t.pid == t.tgid))
            && t.va.is_some_and(|va| is_live_task(k, va));
        in_neither +=
            usize::from(is_live && t.pid > 0 && !in_list && in_table == Some(false) && !t.unlinked);
        let young = !t.unlinked && matches!((t.start, newest_listed), (Some(s), Some(n)) if s > n);
        forked_during_capture += usize::from(suspect && young);
        let suspect = suspect && !young;
        if suspect {
            let mut why = vec!["not in the task list".to_string()];
            match in_table {
                Some(false) => why.push("not in the PID table".into()),
                Some(true) => why.push("in the PID table".into()),
                None => {}
            }
            if t.unlinked {
                why.push("its list pointers were unlinked (list_del)".into());
            }
            r.findings.push(Finding {
                severity: Severity::High,
                check: "psscan",
                what: if t.pid == t.tgid {
                    format!(
                        "process {} ({}) is hidden from the task list",
                        t.tgid, t.comm
                    )
                } else {
                    format!(
                        "thread {} of process {} ({}) is hidden from the task list",
                        t.pid, t.tgid, t.comm
                    )
                },
                evidence: format!(
                    "task_struct at physical {:#x} (tid {}): {}",
                    t.pa,
                    t.pid,
                    why.join(", ")
                ),
                owner: format!("process {} ({})", t.tgid, t.comm),
            });
        }
        let flag = |b: Option<bool>| {
            Value::Str(
                b.map_or("unknown", |b| if b { "true" } else { "false" })
                    .into(),
            )
        };
        r.rows.push(Row {
            fields: vec![
                ("offset_p", Value::UInt(t.pa)),
                ("offset_v", t.va.map_or(Value::Null, Value::UInt)),
                ("pid", int(t.tgid)),
                ("tid", int(t.pid)),
                ("ppid", t.ppid.map_or(Value::Null, int)),
                ("comm", Value::Str(t.comm.clone())),
                ("exit_state", Value::Str(t.exit_state.into())),
                ("state", Value::UInt(t.state)),
                ("in_list", flag(Some(in_list))),
                ("in_pid_table", flag(in_table)),
            ],
        });
    }
    r.examined = format!(
        "{} task_structs carved from physical memory ({live} live), against {} listed tasks{}",
        carved.len(),
        list.len(),
        table.as_ref().map_or(String::new(), |t| format!(
            " and {} in the PID table",
            t.len()
        ))
    );
    if in_neither > 0 {
        k.note(format!(
            "psscan: {in_neither} live tasks are in neither the task list nor the PID table \
             (forked or reaped while a live capture copied its pages); not findings"
        ));
    }
    if forked_during_capture > 0 {
        k.note(format!(
            "psscan: {forked_during_capture} live tasks in neither the task list nor the PID table \
             started after every listed task (forked while the capture ran); not findings"
        ));
    }
    Ok(r)
}
